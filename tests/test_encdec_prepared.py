"""Span-corruption pretraining from prepared data: `python -m jaxlm.prepare` with an encdec config
trains the tokenizer with its sentinels (as a run on the raw text does), training from the shards
(one directory or a mixture) corrupts real spans of the corpus's documents and equals training on
the raw text, a SIGTERM stops the run with a checkpoint from which it resumes to the same losses,
and data prepared without sentinels is refused in one line."""

import os
import shutil
import signal

import jax
import numpy as np
import pytest
from test_cli import jaxlm
from test_encdec_cli import GERMAN, WORDS, tiny_t5_config
from test_errors import documented
from test_prepare import SHARD_CHARS, assert_same_losses
from test_span_corruption import documents, parse, reconstruct
from test_train import read_metrics, write_corpus

from jaxlm.data.dataset import DataConfig, read_corpus
from jaxlm.data.prepare import prepare
from jaxlm.errors import UserError
from jaxlm.inference import trained
from jaxlm.training import loop
from jaxlm.training.prefetch import Prefetch
from jaxlm.training.setup import set_up

SENTINELS, STEPS, STOP_AT = 16, 6, 3


def run_config(corpus: str, prepared: str = ""):
  c = tiny_t5_config(corpus)
  c.data.num_sentinels = SENTINELS
  c.train.steps, c.train.log_every, c.eval.every, c.checkpoint.every = STEPS, 1, STEPS, STEPS
  if prepared:
    c.data.source, c.data.path = "prepared", prepared
  return c


# run_config's data settings and model family, for the prepare verb.
ENCDEC_DATA = """
from jaxlm.config import base_config

def get_config():
  c = base_config()
  c.data.source, c.data.path, c.data.tokenizer = "files", {path!r}, "sentencepiece"
  c.data.vocab_size, c.data.num_sentinels, c.data.seq_len, c.data.val_fraction = 320, {n}, 32, 0.2
  c.model.family = "encdec"
  return c
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  """DIR/corpus; DIR/prepared, by the prepare verb with an encdec config, and DIR/copy of it;
  DIR/plain, prepared (in this process) as for a gpt: without sentinels."""
  root = tmp_path_factory.mktemp("encdec_prepared")
  corpus = write_corpus(root / "corpus", words=tuple(WORDS) + tuple(GERMAN.values()))
  (root / "t5.py").write_text(ENCDEC_DATA.format(path=corpus, n=SENTINELS))
  result = jaxlm("prepare", f"--config={root / 't5.py'}", f"--out={root / 'prepared'}",
                 "--workers=1", f"--shard_mb={SHARD_CHARS / 1e6}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"({SENTINELS} sentinels)" in result.stderr
  prepare(DataConfig.from_config(run_config(corpus).data), str(root / "plain"), 1, SHARD_CHARS,
          lambda _: None)
  shutil.copytree(root / "prepared", root / "copy")
  return root


@pytest.fixture(scope="module")
def runs(root):
  """The same span-corruption run on the raw text and from the shards."""
  corpus = str(root / "corpus")
  loop.train(run_config(corpus), str(root / "raw"))
  loop.train(run_config(corpus, str(root / "prepared")), str(root / "from_shards"))
  return root / "raw", root / "from_shards"


def test_prepare_trains_the_raw_runs_tokenizer_with_its_sentinels(root, runs):
  manifest = (root / "prepared" / "manifest.json").read_text()
  assert f'"num_sentinels": {SENTINELS}' in manifest  # in the settings and the tokenizer entry
  tokenizer = trained.load(str(runs[0])).tokenizer  # the raw-text run's, trained by train
  assert len(tokenizer.sentinel_ids) == SENTINELS
  assert (root / "prepared" / "tokenizer.json").read_text() == \
      (runs[0] / "tokenizer.json").read_text() == (runs[1] / "tokenizer.json").read_text()
  assert '"num_sentinels": 0' in (root / "plain" / "manifest.json").read_text()


def test_training_from_the_shards_equals_training_on_the_raw_text(runs):
  assert_same_losses(*runs)


def mixture_config(root):
  """Span corruption on a mixture of two prepared sources (DIR/prepared and a copy of it)."""
  config = run_config(str(root / "corpus"), "")
  config.data.source, config.data.path = "prepared", ""
  config.data.mixture = (("a", str(root / "prepared"), 0.5), ("b", str(root / "copy"), 0.5))
  return config


def test_prepared_batches_are_span_corrupted_documents_of_the_corpus(root, runs):
  corpus = read_corpus(DataConfig.from_config(run_config(str(root / "corpus")).data))
  corrupt = None
  for config in (run_config(str(root / "corpus"), str(root / "prepared")), mixture_config(root)):
    run = set_up(config, str(root / "batches"), {}, lambda _: None)
    tokenizer, objective = run.dataset.tokenizer, run.engine.objective
    sentinels, eos = tuple(tokenizer.sentinel_ids), tokenizer.eos_id
    assert objective.sentinel_ids == sentinels and objective.eos_id == eos
    corrupt = corrupt or jax.jit(objective.prepare)  # one compilation for both runs
    # Every document of the corpus, encoded apart: the rows must hold slices of these.
    encoded = [f",{','.join(map(str, tokenizer.encode(doc)))}," for doc in corpus.train]
    rows = next(run.iterator)
    out = jax.device_get(corrupt(rows, jax.random.key(0)))
    spans = 0
    for r in range(len(rows["inputs"])):
      docs = documents(rows["inputs"][r], rows["segment_ids"][r], rows["weights"][r], eos)
      pieces = parse(out, r)
      assert len(pieces) == len(docs) > 0
      for doc, (enc, tgt) in zip(docs, pieces):
        assert tgt[0] == sentinels[0] and sentinels[0] in enc  # a span out, its sentinel in
        got, lengths = reconstruct(enc, tgt, sentinels, eos)
        assert got == doc and any(f",{','.join(map(str, got))}," in e for e in encoded)
        spans += len(lengths)
    assert spans >= len(rows["inputs"])


def stop_after(batches: int):
  """A Prefetch that sends this process a SIGTERM as it hands out batch `batches`."""
  class Stopping(Prefetch):
    handed = 0

    def __next__(self):
      batch = super().__next__()
      self.handed += 1
      if self.handed == batches:
        os.kill(os.getpid(), signal.SIGTERM)
      return batch
  return Stopping


def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes_to_the_same_losses(root, runs,
                                                                             monkeypatch, capfd):
  config = run_config(str(root / "corpus"), str(root / "prepared"))
  workdir = str(root / "preempted")
  with monkeypatch.context() as patch:
    patch.setattr(loop, "Prefetch", stop_after(STOP_AT))
    assert loop.train(config, workdir) == {"stopped_at": STOP_AT}
  assert "SIGTERM: saving a checkpoint after this step" in capfd.readouterr().err
  assert trained.load(workdir).step == STOP_AT
  loop.train(run_config(str(root / "corpus"), str(root / "prepared")), workdir)
  assert f"resumed from step {STOP_AT}" in capfd.readouterr().err
  straight, resumed = read_metrics(str(runs[1])), read_metrics(workdir)
  assert [(r["split"], r["step"]) for r in resumed] == [(r["split"], r["step"]) for r in straight]
  assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
  for a, b in zip(jax.tree.leaves(trained.load(str(runs[1])).params),
                  jax.tree.leaves(trained.load(workdir).params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_data_prepared_without_sentinels_is_refused_in_one_line(root):
  workdir = root / "run"
  with pytest.raises(UserError) as refused:
    loop.train(run_config(str(root / "corpus"), str(root / "plain")), str(workdir))
  line = f"error: {refused.value}"
  assert "\n" not in line and "prepare it again" in line and "model.family=encdec" in line
  documented("Span corruption on data prepared without sentinels",
             line.replace(str(root), "DIR"))
  assert not (workdir / "tokenizer.json").exists()  # refused before anything is written
