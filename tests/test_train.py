"""End to end on a tiny corpus: loss falls, resume is exact, evaluate's numbers are right."""

import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

from jaxlm.config import base_config
from jaxlm.data.dataset import DataConfig, pack_split, read_corpus
from jaxlm.evaluate import evaluate
from jaxlm.inference import trained
from jaxlm.models import GPT
from jaxlm.training import checkpoint
from jaxlm.training.loop import train

WORDS = "the a cat dog sat ran on under mat log and then quickly slowly".split()


def write_corpus(directory, words=tuple(WORDS), seed=0, docs=12, name="doc") -> str:
  """Twelve small documents of a toy grammar: learnable structure, no download."""
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  for doc in range(docs):
    sentences = [" ".join(rng.choice(words, size=rng.integers(3, 7))) + "." for _ in range(30)]
    with open(os.path.join(directory, f"{name}{doc:02d}.txt"), "w") as f:
      f.write("\n".join(sentences))
  return str(directory)


def tiny_config(data_dir: str, steps: int = 40):
  c = base_config()
  c.data.source, c.data.path, c.data.tokenizer = "files", data_dir, "char"
  c.data.seq_len = c.model.max_len = 32
  c.data.val_fraction = 0.2
  c.model.d_model, c.model.num_layers, c.model.num_heads, c.model.mlp_dim = 32, 2, 2, 64
  c.train.batch_size, c.train.steps, c.train.lr, c.train.warmup_steps = 16, steps, 3e-3, 5
  c.train.log_every, c.eval.every, c.eval.batch_size, c.eval.max_batches = 10, 20, 16, 0
  c.eval.sample_tokens, c.checkpoint.every, c.checkpoint.keep = 8, 20, 3
  return c


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def trained_run(corpus_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  final = train(tiny_config(corpus_dir), workdir)
  return workdir, final


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_training_lowers_the_loss_and_logs_every_metric(trained_run):
  workdir, final = trained_run
  records = read_metrics(workdir)
  train_records = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train_records] == [10, 20, 30, 40]
  for key in ("loss", "lr", "grad_norm", "tokens_per_sec", "mfu"):
    assert all(math.isfinite(r[key]) for r in train_records), key
  assert train_records[-1]["loss"] < train_records[0]["loss"] - 0.5
  uniform = math.log(trained.load(workdir).tokenizer.vocab_size)
  assert final["loss"] < uniform - 1.0
  assert sorted(checkpoint.latest_steps(workdir)) == [20, 40]


def test_evaluate_perplexity_is_exp_of_an_independently_computed_nll(trained_run):
  workdir, _ = trained_run
  result = evaluate(workdir, None, {})
  run = trained.load(workdir)
  data_cfg = DataConfig.from_config(run.config.data)
  val, bytes_per_token = pack_split(read_corpus(data_cfg).val, run.tokenizer, data_cfg.seq_len)
  params = jax.device_get(run.params)
  model = GPT(run.model_cfg)
  nll_sum, count = 0.0, 0
  for k in range(len(val)):  # one window at a time, no batching or padding
    ex = val[k]
    logits = np.asarray(model.apply({"params": params}, ex["inputs"][None], ex["positions"][None],
                                    ex["segment_ids"][None])[0], np.float64)
    log_probs = logits - logits.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    nll_sum -= log_probs[np.arange(len(ex["targets"])), ex["targets"]].sum()
    count += len(ex["targets"])
  assert result["tokens"] == count
  assert result["loss"] == pytest.approx(nll_sum / count, rel=1e-5)
  assert result["perplexity"] == pytest.approx(math.exp(nll_sum / count), rel=1e-5)
  assert result["bits_per_byte"] == pytest.approx(nll_sum / count / math.log(2) / bytes_per_token,
                                                  rel=1e-5)


def test_resume_after_losing_the_last_checkpoint_reproduces_the_run_exactly(trained_run, corpus_dir,
                                                                           tmp_path):
  workdir, _ = trained_run
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(resumed), "40"))  # "killed" after step 20
  train(tiny_config(corpus_dir), resumed)
  original = trained.load(workdir).params
  again = trained.load(resumed).params
  for a, b in zip(jax.tree.leaves(original), jax.tree.leaves(again)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  before = [r for r in read_metrics(workdir) if r["split"] == "train"]
  after = [r for r in read_metrics(resumed) if r["split"] == "train"][len(before):]  # appended
  assert [r["step"] for r in after] == [30, 40]
  assert [r["loss"] for r in after] == [r["loss"] for r in before if r["step"] > 20]


def test_resume_under_another_mesh_continues_the_same_run(trained_run, corpus_dir, tmp_path):
  workdir, _ = trained_run  # trained data-parallel on 8 devices
  resumed = str(tmp_path / "resharded")
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(resumed), "40"))
  c = tiny_config(corpus_dir)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 4, 2  # step 20's checkpoint is resharded onto fsdp x tensor
  train(c, resumed)
  run = trained.load(resumed)
  assert run.step == 40
  for a, b in zip(jax.tree.leaves(trained.load(workdir).params), jax.tree.leaves(run.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)
  before = [r for r in read_metrics(workdir) if r["split"] == "train"]
  after = [r for r in read_metrics(resumed) if r["split"] == "train"][len(before):]
  assert [r["step"] for r in after] == [30, 40]
  np.testing.assert_allclose([r["loss"] for r in after],
                             [r["loss"] for r in before if r["step"] > 20], rtol=1e-5)


def test_fsdp_run_follows_the_data_parallel_loss_curve(corpus_dir, tmp_path):
  curves = {}
  for name, (data, fsdp) in {"data": (8, 1), "fsdp": (1, 8)}.items():
    c = tiny_config(corpus_dir, steps=20)
    c.mesh.data, c.mesh.fsdp = data, fsdp
    c.eval.sample_tokens = 0
    train(c, str(tmp_path / name))
    curves[name] = [r["loss"] for r in read_metrics(str(tmp_path / name))]
  np.testing.assert_allclose(curves["fsdp"], curves["data"], rtol=1e-5)


def test_resuming_with_a_different_architecture_is_refused(trained_run, corpus_dir, tmp_path):
  workdir, _ = trained_run
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  c = tiny_config(corpus_dir, steps=60)
  c.model.d_model = 64
  with pytest.raises(ValueError, match="model.d_model: 32 -> 64"):
    train(c, copy)
