"""Tests for jaxlm.data: packing documents into windows, and training / evaluation batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_data import FIELDS, _files, _raises_one_line

from jaxlm.data import (
  PackedTokens,
  eval_batches,
  pack_documents,
  tokenize_corpus,
  train_batches,
  train_tokenizer,
)

# --- packing --------------------------------------------------------------------


def test_packing_hand_built_example():
  packed = pack_documents([[5, 6, 7], [8], [9, 10]], eos_id=0, seq_len=3)
  np.testing.assert_array_equal(packed.stream, [0, 5, 6, 7, 0, 8, 0, 9, 10])
  np.testing.assert_array_equal(packed.doc_ids, [0, 0, 0, 0, 1, 1, 2, 2, 2])
  # 8 targets: two full windows of 3, then a partial one of 2 that only evaluation reads.
  assert (len(packed), packed.num_full_windows, packed.num_targets) == (3, 2, 8)
  first, second, last = packed[0], packed[1], packed[2]
  expected_first = {
    "inputs": [0, 5, 6],
    "targets": [5, 6, 7],
    "segment_ids": [1, 1, 1],
    "positions": [0, 1, 2],
  }
  # Window 1 starts inside document 0: it is segment 1 at position 0.
  expected_second = {
    "inputs": [7, 0, 8],
    "targets": [0, 8, 0],
    "segment_ids": [1, 2, 2],
    "positions": [0, 0, 1],
  }
  for example, expected in [(first, expected_first), (second, expected_second)]:
    for name, values in expected.items():
      np.testing.assert_array_equal(example[name], values, err_msg=name)
      assert example[name].dtype == np.int32
    np.testing.assert_array_equal(example["weights"], [1.0, 1.0, 1.0])
    assert example["weights"].dtype == np.float32
    np.testing.assert_array_equal(example["token_types"], [0, 0, 0])  # text: all sentence A
    assert example["token_types"].dtype == np.int32
  # The partial window is not padded: [0, 9] -> [9, 10], all of document 2.
  expected_last = {"inputs": [0, 9], "targets": [9, 10], "segment_ids": [1, 1],
                   "positions": [0, 1], "weights": [1.0, 1.0], "token_types": [0, 0]}
  for name, values in expected_last.items():
    np.testing.assert_array_equal(last[name], values, err_msg=name)
  with pytest.raises(IndexError):
    packed[3]


def _random_docs(num_docs=40, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(1, 50, size=rng.integers(0, 30)).tolist() for _ in range(num_docs)]


@pytest.mark.parametrize("seq_len", [1, 2, 7, 16])
def test_packing_invariants(seq_len):
  docs = _random_docs()
  packed = pack_documents(docs, eos_id=0, seq_len=seq_len)
  expected_stream = [t for doc in docs for t in [0] + doc]
  np.testing.assert_array_equal(packed.stream, expected_stream)
  assert packed.num_full_windows == (len(expected_stream) - 1) // seq_len
  assert len(packed) == -(-(len(expected_stream) - 1) // seq_len)
  examples = [packed[k] for k in range(len(packed))]
  inputs = np.concatenate([e["inputs"] for e in examples])  # [num_tokens - 1]
  targets = np.concatenate([e["targets"] for e in examples])
  # Every token but the first is a target exactly once, the partial last window included.
  np.testing.assert_array_equal(inputs, expected_stream[:-1])
  np.testing.assert_array_equal(targets, expected_stream[1:])
  for k, e in enumerate(examples):
    length = seq_len if k < packed.num_full_windows else len(expected_stream) - 1 - k * seq_len
    assert all(e[name].shape == (length,) for name in FIELDS)
    np.testing.assert_array_equal(e["targets"][:-1], e["inputs"][1:])
    seg, pos = e["segment_ids"], e["positions"]
    assert seg[0] == 1 and pos[0] == 0
    changes = np.flatnonzero(np.diff(seg)) + 1
    np.testing.assert_array_equal(
      changes, np.flatnonzero(e["inputs"][1:] == 0) + 1
    )  # exactly at EOS
    assert set(np.diff(seg)) <= {0, 1}
    starts = np.r_[0, changes]
    for i in range(1, length):
      assert pos[i] == (0 if i in starts else pos[i - 1] + 1)
    assert (pos < seq_len).all() and (e["weights"] == 1).all()


def test_packing_too_little_data_is_a_data_error():
  with _raises_one_line(
    r"validation split has 5 tokens, fewer than seq_len\+1=9; use a smaller data.seq_len"
  ):
    pack_documents([[1, 2], [3]], eos_id=0, seq_len=8, split_name="validation")
  with _raises_one_line("data.seq_len=0"):
    pack_documents([[1, 2]], eos_id=0, seq_len=0)


# --- batches --------------------------------------------------------------------


def _unique_packed(num_windows: int, seq_len: int = 4):
  """At least num_windows windows whose inputs are all distinct, so that
  rows identify windows."""
  tokens = list(range(1, num_windows * seq_len + 1))
  docs = [tokens[i : i + 5] for i in range(0, len(tokens), 5)]
  packed = pack_documents(docs, eos_id=0, seq_len=seq_len)
  assert len(packed) >= num_windows
  return packed


def _window_ids(packed, batches):
  index = {packed[k]["inputs"].tobytes(): k for k in range(len(packed))}
  return [index[row.tobytes()] for batch in batches for row in batch["inputs"]]


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_train_batches_shapes_and_seed_determinism():
  packed = _unique_packed(24)
  batches = _take(iter(train_batches(packed, 4, seed=1, process_index=0, process_count=1)), 5)
  again = _take(iter(train_batches(packed, 4, seed=1, process_index=0, process_count=1)), 5)
  other = _take(iter(train_batches(packed, 4, seed=2, process_index=0, process_count=1)), 5)
  for batch in batches:
    assert {name: (v.shape, v.dtype) for name, v in batch.items()} == {
      name: ((4, 4), np.float32 if name == "weights" else np.int32) for name in FIELDS
    }
  assert _window_ids(packed, batches) == _window_ids(packed, again)
  assert _window_ids(packed, batches) != _window_ids(packed, other)


@pytest.mark.parametrize("num_windows", [24, 26])
def test_each_epoch_is_a_new_permutation(num_windows):
  packed = _unique_packed(num_windows)
  n = packed.num_full_windows  # the partial last window (of the 24 case) is never trained on
  assert len(packed) == n + (num_windows == 24)
  it = iter(train_batches(packed, 4, seed=0, process_index=0, process_count=1))
  ids = _window_ids(packed, _take(it, (3 * n) // 4 + 1))  # batches run across epoch ends
  epochs = [ids[0:n], ids[n : 2 * n], ids[2 * n : 3 * n]]
  for epoch in epochs:
    assert sorted(epoch) == list(range(n))
  assert epochs[0] != epochs[1] and epochs[0] != list(range(n))


def test_training_batches_ignore_the_partial_last_window():
  packed = _unique_packed(24)
  assert packed.num_targets % 4  # has a partial window
  # The same stream cut right after the last full window: no partial window at all.
  cut = packed.num_full_windows * 4 + 1
  whole = PackedTokens(stream=packed.stream[:cut], doc_ids=packed.doc_ids[:cut], seq_len=4)
  assert len(whole) == whole.num_full_windows == packed.num_full_windows
  for process in range(2):
    ours = _take(iter(train_batches(packed, 4, 5, process, 2)), 2 * len(whole))  # 4 epochs
    theirs = _take(iter(train_batches(whole, 4, 5, process, 2)), 2 * len(whole))
    for a, b in zip(ours, theirs):
      for name in FIELDS:
        np.testing.assert_array_equal(a[name], b[name])


class _CountingWindows:
  """A PackedTokens stand-in that records which windows are read."""

  def __init__(self, packed):
    self.packed, self.read = packed, set()

  def __len__(self):
    return len(self.packed)

  @property
  def num_full_windows(self):
    return self.packed.num_full_windows

  def rows(self, ks):
    self.read.update(int(k) for k in ks)
    return self.packed.rows(ks)


@pytest.mark.parametrize("process_count", [2, 4])
def test_processes_rows_form_the_single_process_global_batches(process_count):
  packed = _unique_packed(30)
  steps = (2 * len(packed)) // 8 + 1  # crosses an epoch boundary
  single = _take(iter(train_batches(packed, 8, seed=0, process_index=0, process_count=1)), steps)
  per_process = [
    _take(
      iter(train_batches(packed, 8, seed=0, process_index=p, process_count=process_count)), steps
    )
    for p in range(process_count)
  ]
  assert per_process[0][0]["inputs"].shape == (8 // process_count, 4)
  for step in range(steps):
    for name in FIELDS:
      together = np.concatenate([batches[step][name] for batches in per_process])
      np.testing.assert_array_equal(together, single[step][name])


def test_a_process_reads_only_the_windows_of_its_rows():
  packed = _unique_packed(400)  # one epoch outlasts the batches taken plus read-ahead
  global_order = _window_ids(
    packed, _take(iter(train_batches(packed, 8, 0, 0, 1)), len(packed) // 8)
  )
  counting = _CountingWindows(packed)
  taken = _take(iter(train_batches(counting, 8, seed=0, process_index=1, process_count=2)), 5)
  others_rows = {k for i, k in enumerate(global_order) if (i % 8) // 4 != 1}
  assert set(_window_ids(packed, taken)) <= counting.read
  assert counting.read and not counting.read & others_rows


def test_train_iterator_state_resumes_exactly():
  packed = _unique_packed(26)
  ds = train_batches(packed, 4, seed=3, process_index=0, process_count=1)
  it = iter(ds)
  _take(it, 5)
  state = json.loads(json.dumps(it.get_state()))  # the checkpoint stores it as JSON
  expected = _take(it, 9)  # crosses an epoch boundary
  resumed = iter(ds)
  resumed.set_state(state)
  assert _window_ids(packed, _take(resumed, 9)) == _window_ids(packed, expected)


def test_train_batches_errors():
  packed = _unique_packed(6)
  with _raises_one_line("global batch size 6 must be a positive multiple of the process count 4"):
    train_batches(packed, 6, 0, 0, 4)
  with _raises_one_line("fewer than one batch of 8"):
    train_batches(packed, 8, 0, 0, 1)
  with _raises_one_line(r"seed=-1 must be in \[0, 2\*\*32\)"):
    train_batches(packed, 2, -1, 0, 1)


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_batches_cover_each_window_once_with_padding(process_count):
  packed = _unique_packed(11)
  n = len(packed)
  seen = []
  num_batches = set()
  for process in range(process_count):
    batches = list(eval_batches(packed, 3, process, process_count))
    num_batches.add(len(batches))
    for batch in batches:
      assert all(batch[name].shape == (3, 4) for name in FIELDS)
      real = batch["weights"][:, 0] > 0  # [batch]
      assert (batch["weights"][real] == 1).all() and (batch["weights"][~real] == 0).all()
      assert (batch["inputs"][~real] == 0).all() and (batch["targets"][~real] == 0).all()
      assert (batch["segment_ids"][~real] == 1).all() and (batch["token_types"] == 0).all()
      seen += _window_ids(packed, [{"inputs": batch["inputs"][real]}])
    share = list(range(process, n, process_count))
    assert seen[-len(share) :] == share  # in order
  assert sorted(seen) == list(range(n))
  assert len(num_batches) == 1  # processes stay in lockstep


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_batches_score_every_target_once_padding_the_partial_window(process_count):
  packed = pack_documents(_random_docs(), eos_id=0, seq_len=7)
  assert packed.num_targets % 7  # a partial last window
  targets = {}  # window -> its weighted targets
  for process in range(process_count):
    rows = [
      {name: batch[name][r] for name in FIELDS}
      for batch in eval_batches(packed, 2, process, process_count)
      for r in range(2)
    ]
    real = [row for row in rows if row["weights"].any()]
    assert all((row["weights"] == 0).all() for row in rows[len(real) :])  # padding rows last
    for k, row in zip(range(process, len(packed), process_count), real, strict=True):
      scored = row["weights"] > 0
      assert scored.sum() == min(7, packed.num_targets - 7 * k) and scored[: scored.sum()].all()
      targets[k] = row["targets"][scored]
      if not scored.all():  # the padded partial window: padding is a segment of its own
        assert row["segment_ids"][~scored].min() > row["segment_ids"][scored].max()
        np.testing.assert_array_equal(row["inputs"][scored], packed.stream[7 * k : -1])
  everything = np.concatenate([targets[k] for k in range(len(packed))])
  np.testing.assert_array_equal(everything, packed.stream[1:])  # each target once, in order


def test_eval_batches_max_batches():
  packed = _unique_packed(11)
  assert len(list(eval_batches(packed, 2, 0, 1, max_batches=3))) == 3
  assert len(list(eval_batches(packed, 2, 0, 1, max_batches=None))) == -(-len(packed) // 2)


# --- end to end -----------------------------------------------------------------


def test_files_to_batches_end_to_end(tmp_path):
  for i in range(6):
    (tmp_path / f"m{i}.txt").write_text(f"def f{i}(x):\n\treturn x * {i}\n" * 5, encoding="utf-8")
  corpus = _files(tmp_path, val_fraction=0.2)
  tok = train_tokenizer("char", corpus.train, vocab_size=0)
  train_ids = tokenize_corpus(corpus.train, tok)
  assert train_ids == [tok.encode(doc) for doc in corpus.train]
  packed = pack_documents(train_ids, tok.eos_id, seq_len=16)
  batch = next(iter(train_batches(packed, 2, seed=0, process_index=0, process_count=1)))
  text = tok.decode(batch["inputs"][0].tolist())
  assert text and text in "".join(corpus.train)
  val = pack_documents(
    tokenize_corpus(corpus.val, tok), tok.eos_id, seq_len=16, split_name="validation"
  )
  assert sum(1 for _ in eval_batches(val, 4, 0, 1)) == -(-len(val) // 4)


def test_batch_gather_restarts_positions_per_document_in_every_row():
  from jaxlm.data.packing import segment_positions
  segments = np.array([[1, 1, 2, 2, 2], [1, 2, 2, 3, 3]])
  np.testing.assert_array_equal(segment_positions(segments), [[0, 1, 0, 1, 2], [0, 0, 1, 0, 1]])
  packed = pack_documents([[5, 6, 7], [8, 9], [3, 4, 5, 6]], eos_id=1, seq_len=4)
  batch = packed.rows(np.array([1, 0]))
  for row, k in enumerate([1, 0]):  # stream: 1 5 6 7 | 1 8 9 | 1 3 4 5 6
    start = 4 * k
    np.testing.assert_array_equal(batch["inputs"][row], packed.stream[start:start + 4])
    np.testing.assert_array_equal(batch["targets"][row], packed.stream[start + 1:start + 5])
  np.testing.assert_array_equal(batch["segment_ids"], [[1, 1, 1, 2], [1, 1, 1, 1]])
  np.testing.assert_array_equal(batch["positions"], [[0, 1, 2, 0], [0, 1, 2, 3]])


def test_record_rows_have_every_field_and_token_types_zero():
  from jaxlm.data.records import pack_records
  packed = pack_records([([5, 6], [7]), ([8], [9, 10])], eos_id=1, seq_len=6, truncate="left")
  rows = packed.rows(np.array([0, 0]))
  assert {name: (v.shape, v.dtype) for name, v in rows.items()} == {
    name: ((2, 6), np.float32 if name == "weights" else np.int32) for name in FIELDS
  }
  assert (rows["token_types"] == 0).all()
  # tokens: 1 5 6 7 1 | 1 8 9 10 1 does not fit 7 with the first; the second record has its row.
  np.testing.assert_array_equal(packed[1]["inputs"], [1, 8, 9, 10, 1, 0])
  np.testing.assert_array_equal(packed[1]["token_types"], np.zeros(6))
