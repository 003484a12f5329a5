"""Seq2seq records: packing against a plain-Python reference, truncation and its counts, the JSONL
round trip through `read_corpus` / `build_dataset`, training batches through `BatchFeed` on 8
devices (resumable), and padded evaluation batches."""

import json

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from jaxlm.config import base_config
from jaxlm.data import eval_batches, train_batches
from jaxlm.data.dataset import DataConfig, build_dataset, read_corpus
from jaxlm.data.seq2seq import PackedSeq2Seq, pack_seq2seq, read_pairs
from jaxlm.data.simple_tokenizers import ByteTokenizer
from jaxlm.errors import UserError
from jaxlm.parallel.sharding import BatchFeed

EOS = 1
DECODER = ("inputs", "targets", "positions", "segment_ids", "weights")
ENCODER = ("encoder_inputs", "encoder_positions", "encoder_segment_ids")


def reference_rows(pairs, seq_len, target_len):
  """Greedy rows of (source + EOS, target + EOS) examples, written out as Python lists."""
  rows, row = [], None
  for source, target in pairs:
    enc, dec = [*source, EOS], [*target, EOS]
    if row is None or len(row["enc"]) + len(enc) > seq_len or len(row["dec"]) + len(dec) > \
        target_len:
      row = {"enc": [], "enc_seg": [], "dec": [], "dec_seg": []}
      rows.append(row)
    k = row["enc_seg"][-1] + 1 if row["enc_seg"] else 1
    row["enc"] += enc
    row["enc_seg"] += [k] * len(enc)
    row["dec"] += dec
    row["dec_seg"] += [k] * len(dec)
  return rows


def padded(values, length):
  return list(values) + [0] * (length - len(values))


def random_pairs(seed, n=60, max_len=9):
  rng = np.random.default_rng(seed)
  return [(rng.integers(2, 50, rng.integers(0, max_len)).tolist(),
           rng.integers(2, 50, rng.integers(0, max_len)).tolist()) for _ in range(n)]


@pytest.mark.parametrize("seq_len, target_len", [(16, 12), (10, 24)])
def test_packing_matches_a_reference(seq_len, target_len):
  pairs = random_pairs(0)
  packed = pack_seq2seq(pairs, EOS, seq_len, target_len, "drop")
  expected = reference_rows(pairs, seq_len, target_len)
  assert len(packed) == len(expected) and (packed.truncated, packed.dropped) == (0, 0)
  rows = packed.rows(np.arange(len(packed)))
  for r, row in enumerate(expected):
    dec, seg = row["dec"], row["dec_seg"]
    np.testing.assert_array_equal(rows["encoder_inputs"][r], padded(row["enc"], seq_len))
    np.testing.assert_array_equal(rows["encoder_segment_ids"][r], padded(row["enc_seg"], seq_len))
    np.testing.assert_array_equal(rows["targets"][r], padded(dec, target_len))
    np.testing.assert_array_equal(rows["segment_ids"][r], padded(seg, target_len))
    shifted = [0 if i == 0 or seg[i - 1] != seg[i] else dec[i - 1] for i in range(len(dec))]
    np.testing.assert_array_equal(rows["inputs"][r], padded(shifted, target_len))
    np.testing.assert_array_equal(rows["weights"][r], padded([1.0] * len(dec), target_len))
    for side, segs in (("encoder_positions", row["enc_seg"]), ("positions", seg)):
      positions = [segs[:i].count(s) for i, s in enumerate(segs)]
      np.testing.assert_array_equal(rows[side][r], padded(positions, rows[side].shape[1]))
  for name in (*ENCODER, *DECODER):
    assert rows[name].dtype == (np.float32 if name == "weights" else np.int32)


def test_truncation_modes_cut_and_count():
  long_source, long_target = list(range(10, 30)), list(range(40, 60))
  pairs = [([2, 3], [4]), (long_source, [5]), ([6], long_target)]
  left = pack_seq2seq(pairs, EOS, 8, 6, "left")
  right = pack_seq2seq(pairs, EOS, 8, 6, "right")
  drop = pack_seq2seq(pairs, EOS, 8, 6, "drop")
  assert (left.truncated, left.dropped, drop.truncated, drop.dropped) == (2, 0, 0, 2)
  enc = lambda p, r: p.rows(np.array([r]))["encoder_inputs"][0].tolist()  # noqa: E731
  tgt = lambda p, r: p.rows(np.array([r]))["targets"][0].tolist()  # noqa: E731
  assert enc(left, 1) == [*long_source[-7:], EOS]  # its end kept
  assert enc(right, 1) == [*long_source[:7], EOS]  # its start kept
  assert tgt(left, 2) == tgt(right, 2) == [*long_target[:5], EOS]
  assert len(drop) == 1 and drop.num_examples == 1
  with pytest.raises(UserError, match="no data record fits data.seq_len=2"):
    pack_seq2seq([(long_source, [5])], EOS, 2, 6, "drop")
  with pytest.raises(UserError, match="data.truncate='middle' does not apply to seq2seq data"):
    pack_seq2seq(pairs, EOS, 8, 6, "middle")


def write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
  return str(path)


def data_config(**overrides) -> DataConfig:
  c = base_config().data
  c.update(overrides)
  return DataConfig.from_config(c)


def test_jsonl_round_trip_and_prompt_completion_as_source_target(tmp_path):
  records = [{"source": f"Hallo {i}", "target": f"Hello {i}!"} for i in range(40)]
  path = write_jsonl(tmp_path / "pairs.jsonl", records)
  c = data_config(source="files", path=path, seq_len=24, target_len=16, tokenizer="byte")
  assert c.resolved_format == "seq2seq"
  corpus = read_corpus(c)
  assert len(corpus.train) + len(corpus.val) == 40
  dataset = build_dataset(c, corpus, ByteTokenizer())
  assert isinstance(dataset.train, PackedSeq2Seq)
  tok = ByteTokenizer()
  rows = dataset.train.rows(np.arange(len(dataset.train)))
  got = set()
  for r in range(len(dataset.train)):
    for s in range(1, rows["encoder_segment_ids"][r].max() + 1):
      source = rows["encoder_inputs"][r][rows["encoder_segment_ids"][r] == s]
      target = rows["targets"][r][rows["segment_ids"][r] == s]
      assert source[-1] == target[-1] == tok.eos_id
      got.add((tok.decode(source[:-1]), tok.decode(target[:-1])))
  assert got == {(p.source, p.target) for p in corpus.train}
  old_style = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "a b", "completion": "c"}])
  assert [(p.source, p.target) for p in read_pairs(old_style)] == [("a b", "c")]
  assert data_config(source="files", path=old_style).resolved_format == "prompt_completion"


def test_bad_record_is_one_line_error(tmp_path):
  path = write_jsonl(tmp_path / "bad.jsonl", [{"source": "a", "target": "b"}, {"source": 3}])
  with pytest.raises(UserError, match=r"bad.jsonl:2: a seq2seq record needs string fields"):
    read_pairs(path)


@pytest.fixture(scope="module")
def packed():
  return pack_seq2seq(random_pairs(1, n=200), EOS, 16, 12, "drop")


def test_train_batches_through_the_feed_on_8_devices(packed):
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  feed = BatchFeed.create(mesh, ("data",), 16, accum=2)
  iterator = iter(train_batches(packed, 16, 0, feed.block, feed.blocks))
  first = next(iterator)
  state = iterator.get_state()
  second = next(iterator)
  batch = feed.assemble(first)
  assert batch["encoder_inputs"].shape == (2, 8, 16) and batch["targets"].shape == (2, 8, 12)
  assert len(batch["targets"].sharding.device_set) == 8
  np.testing.assert_array_equal(np.asarray(batch["targets"]).reshape(16, 12), first["targets"])
  resumed = iter(train_batches(packed, 16, 0, feed.block, feed.blocks))
  resumed.set_state(state)
  again = next(resumed)
  for name in (*ENCODER, *DECODER):
    np.testing.assert_array_equal(again[name], second[name])


def test_eval_batches_cover_every_row_once_and_pad(packed):
  n = len(packed)
  batches = list(eval_batches(packed, 8, 0, 1))
  assert len(batches) == -(-n // 8)
  windows = np.concatenate([b["window"] for b in batches])
  np.testing.assert_array_equal(windows[:n], np.arange(n))
  assert (windows[n:] == -1).all() and n % 8  # the last batch has padding rows
  last = batches[-1]
  pad = windows[-8:] == -1
  assert (last["weights"][pad] == 0).all() and (last["encoder_inputs"][pad] == 0).all()
  # A padding row is one segment on each side: no query of it has nothing to attend to.
  assert (last["encoder_segment_ids"][pad] == 1).all() and (last["segment_ids"][pad] == 1).all()
  scored = sum(b["weights"].sum() for b in batches)
  assert scored == (packed.segment_ids > 0).sum()
  assert last["encoder_inputs"].shape == (8, 16) and last["targets"].shape == (8, 12)
