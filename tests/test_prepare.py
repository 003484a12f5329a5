"""Prepared data: token shards equal the in-memory packing, prepare is byte-identical and resumes,
and training from shards equals training in memory, resume included."""

import hashlib
import json
import os
import shutil

import jax
import numpy as np
import pytest
from test_cli import TINY, jaxlm, last_json
from test_train import corpus_dir, read_metrics, tiny_config  # noqa: F401  (a fixture)

from jaxlm.data import pack_documents, train_batches
from jaxlm.data.dataset import DataConfig, read_corpus
from jaxlm.data.manifest import open_prepared
from jaxlm.data import prepare as prepare_lib
from jaxlm.data.prepare import prepare
from jaxlm.data.tokenizer_sample import sample_documents
from jaxlm.inference import trained
from jaxlm.training import checkpoint
from jaxlm.training.loop import train

SHARD_CHARS = 1500  # several shards from a tiny corpus, so windows cross shard boundaries


def prepare_tiny(corpus_dir, out, workers=1, **data):
  c = tiny_config(corpus_dir)
  for key, value in data.items():
    c.data[key] = value
  logs = []
  manifest = prepare(DataConfig.from_config(c.data), str(out), workers, SHARD_CHARS, logs.append)
  return manifest, logs


def prepared_config(corpus_dir, path, steps=40):
  c = tiny_config(corpus_dir, steps)
  c.data.source, c.data.path = "prepared", str(path)
  return c


@pytest.fixture(scope="module")
def prepared(corpus_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp("prepared") / "p"
  manifest, _ = prepare_tiny(corpus_dir, out)
  return out, manifest


def file_bytes(directory) -> dict[str, bytes]:
  found = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        found[os.path.relpath(path, directory)] = f.read()
  return found


def test_shards_hold_each_document_as_eos_then_its_tokens_in_corpus_order(corpus_dir, prepared):
  out, manifest = prepared
  c = DataConfig.from_config(tiny_config(corpus_dir).data)
  corpus = read_corpus(c)
  opened = open_prepared(str(out), c.seq_len)
  for split, docs in (("train", corpus.train), ("val", corpus.val)):
    expected = [t for doc in docs for t in [opened.tokenizer.eos_id, *opened.tokenizer.encode(doc)]]
    stream = np.concatenate([np.fromfile(out / f"{s['name']}.tokens", dtype="<u2")
                             for s in manifest["splits"][split]["shards"]])
    np.testing.assert_array_equal(stream, expected)
    assert manifest["splits"][split]["docs"] == len(docs)
    assert manifest["splits"][split]["bytes"] == sum(len(d.encode()) for d in docs)
  assert len(manifest["splits"]["train"]["shards"]) >= 3


@pytest.mark.parametrize("seq_len", [7, 32])
def test_prepared_windows_equal_the_in_memory_packing(corpus_dir, prepared, seq_len):
  out, _ = prepared
  c = DataConfig.from_config(tiny_config(corpus_dir).data)
  corpus = read_corpus(c)
  opened = open_prepared(str(out), seq_len)
  tok = opened.tokenizer
  for split, docs, sharded in (("train", corpus.train, opened.train),
                               ("val", corpus.val, opened.val)):
    packed = pack_documents(tok.encode_batch(docs), tok.eos_id, seq_len)
    assert (len(sharded), sharded.num_full_windows) == (len(packed), packed.num_full_windows)
    ks = np.arange(packed.num_full_windows)
    for name, values in packed.rows(ks).items():
      np.testing.assert_array_equal(sharded.rows(ks)[name], values, err_msg=f"{split} {name}")
    for k in (0, len(packed) - 1):  # the partial last window too
      for name, values in packed[k].items():
        np.testing.assert_array_equal(sharded[k][name], values, err_msg=f"{split} {k} {name}")
  # bits per byte: the same bytes per scored token as pack_split's
  num_bytes = sum(len(d.encode()) for d in corpus.val)
  assert opened.val_bytes_per_token == num_bytes / (opened.val.num_tokens - 1)


def test_training_batches_from_shards_equal_those_in_memory_on_any_process_count(corpus_dir,
                                                                                  prepared):
  out, _ = prepared
  c = DataConfig.from_config(tiny_config(corpus_dir).data)
  opened = open_prepared(str(out), c.seq_len)
  tok = opened.tokenizer
  packed = pack_documents(tok.encode_batch(read_corpus(c).train), tok.eos_id, c.seq_len)
  memory = iter(train_batches(packed, 8, 3, 0, 1))
  halves = [iter(train_batches(opened.train, 8, 3, p, 2)) for p in range(2)]
  for _ in range(30):  # several epochs of this tiny split
    expected = next(memory)
    rows = [next(h) for h in halves]
    for name, values in expected.items():
      np.testing.assert_array_equal(np.concatenate([r[name] for r in rows]), values)


def test_prepare_twice_gives_byte_identical_files_whatever_the_worker_count(corpus_dir, prepared,
                                                                             tmp_path,
                                                                             monkeypatch):
  out, _ = prepared
  # Worker processes this time, each shard tokenised in several pieces spread over both.
  monkeypatch.setattr(prepare_lib, "PIECE_CHARS", 400)
  prepare_tiny(corpus_dir, tmp_path / "again", workers=2)
  assert file_bytes(tmp_path / "again") == file_bytes(out)


def test_interrupted_prepare_keeps_finished_shards_and_redoes_the_rest(corpus_dir, prepared,
                                                                       tmp_path):
  out, manifest = prepared
  partial = tmp_path / "partial"
  shutil.copytree(out, partial)
  os.remove(partial / "manifest.json")  # killed before the end
  second = manifest["splits"]["train"]["shards"][1]["name"]
  os.remove(partial / f"{second}.json")  # ... while writing the second shard
  with open(partial / f"{second}.tokens", "r+b") as f:
    f.truncate(10)
  (partial / "train" / "00002.tokens.tmp123").write_bytes(b"half")
  _, logs = prepare_tiny(corpus_dir, partial)
  shards = len(manifest["splits"]["train"]["shards"])
  assert f"in {shards} shards ({shards - 1} kept from an earlier run)" in "\n".join(logs)
  assert file_bytes(partial) == file_bytes(out)


def test_tokenizer_sample_is_bounded_seeded_and_whole_when_the_corpus_fits():
  docs = [f"document {i} " * (i % 7 + 1) for i in range(200)]
  assert sample_documents(iter(docs), 0, 0) == docs
  assert sample_documents(iter(docs), 10**9, 0) == docs
  sample = sample_documents(iter(docs), 5000, 0)
  assert sum(map(len, sample)) <= 5000 and len(sample) > 5
  assert sample == sample_documents(iter(docs), 5000, 0)  # seeded: the same every time
  assert sample != sample_documents(iter(docs), 5000, 1)
  positions = [docs.index(d) for d in sample]
  assert positions == sorted(positions)  # in corpus order
  assert sample_documents(["x" * 100], 30, 0) == ["x" * 30]  # a document beyond the budget: cut


@pytest.fixture(scope="module")
def runs(corpus_dir, prepared, tmp_path_factory):
  """The tiny run in memory and from the shards, 40 steps each."""
  root = tmp_path_factory.mktemp("runs")
  train(tiny_config(corpus_dir), str(root / "memory"))
  train(prepared_config(corpus_dir, prepared[0]), str(root / "prepared"))
  return root / "memory", root / "prepared"


def assert_same_losses(workdir, other) -> None:
  """Two runs logged the same train and validation losses, bit for bit."""
  a_records, b_records = read_metrics(str(workdir)), read_metrics(str(other))
  for split in ("train", "val"):
    a = [r["loss"] for r in a_records if r["split"] == split]
    b = [r["loss"] for r in b_records if r["split"] == split]
    assert len(a) == len(b) > 0 and a == b, split


def test_training_from_shards_equals_training_in_memory(runs):
  assert_same_losses(*runs)
  with open(os.path.join(runs[1], "tokenizer.json")) as f:  # the prepared tokenizer, copied
    assert f.read() == open(os.path.join(runs[0], "tokenizer.json")).read()


def test_a_run_from_shards_resumes_bit_identically(runs, corpus_dir, prepared, tmp_path):
  workdir = str(runs[1])
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(resumed), "40"))  # "killed" after step 20
  train(prepared_config(corpus_dir, prepared[0]), resumed)
  for a, b in zip(jax.tree.leaves(trained.load(workdir).params),
                  jax.tree.leaves(trained.load(resumed).params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  before = [r for r in read_metrics(workdir) if r["split"] == "train"]
  after = [r for r in read_metrics(resumed) if r["split"] == "train"][len(before):]
  assert [r["loss"] for r in after] == [r["loss"] for r in before if r["step"] > 20]


def test_the_manifest_records_settings_and_checksums(prepared):
  out, manifest = prepared
  with open(out / "manifest.json") as f:
    assert json.load(f) == manifest
  assert manifest["settings"]["val_fraction"] == 0.2 and manifest["settings"]["dedup"] is False
  assert manifest["tokenizer"]["kind"] == "char"
  for shard in manifest["splits"]["train"]["shards"]:
    assert hashlib.sha256((out / f"{shard['name']}.tokens").read_bytes()).hexdigest() == \
        shard["tokens_sha256"]


def test_the_prepare_verb_writes_the_same_directory_and_prints_a_summary(corpus_dir, prepared,
                                                                         tmp_path):
  out, manifest = prepared
  config = tmp_path / "tiny.py"
  config.write_text(TINY.format(path=corpus_dir))  # the same data settings as tiny_config's
  result = jaxlm("prepare", f"--config={config}", f"--out={tmp_path / 'p'}", "--workers=1",
                 f"--shard_mb={SHARD_CHARS / 1e6}")
  assert result.returncode == 0, result.stderr[-2000:]
  summary = last_json(result.stdout)
  assert summary["train_tokens"] == manifest["splits"]["train"]["tokens"]
  assert summary["shards"] == sum(len(e["shards"]) for e in manifest["splits"].values())
  assert "prepare train" in result.stderr  # the progress bar
  assert file_bytes(tmp_path / "p") == file_bytes(out)
