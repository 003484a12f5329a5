"""Tests for jaxlm.data: sources, cleaning, packing and batching."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil

import numpy as np
import pytest

from jaxlm.errors import UserError
from jaxlm.data import (PackedTokens, clean_documents, eval_batches, load_corpus, pack_documents, tfds_source, tokenize_corpus, train_batches, train_tokenizer)
from jaxlm.data.stdlib_source import stdlib_files

FIELDS = ("inputs", "targets", "segment_ids", "positions", "weights")


@contextlib.contextmanager
def _raises_one_line(match: str):
  """pytest.raises(UserError) whose message must also be a single line."""
  with pytest.raises(UserError, match=match) as info:
    yield info
  assert "\n" not in str(info.value), str(info.value)


def _files(path, val_fraction=0.2, text_field="text", dedup=True):
  return load_corpus("files", str(path), text_field, val_fraction, dedup)


# --- cleaning -------------------------------------------------------------------


def test_clean_documents_normalises_and_dedups():
  docs = ["cafe\u0301\r\nx\ry", "   \n\t", "", "b", "café\nx\ny", "a", "b"]
  assert clean_documents(docs, dedup=False) == ["café\nx\ny", "b", "café\nx\ny", "a", "b"]
  assert clean_documents(docs, dedup=True) == ["café\nx\ny", "b", "a"]


# --- files source ---------------------------------------------------------------


def _write_tree(root, n=20):
  """n .txt files in nested directories; file i holds "doc i"."""
  texts = {}
  for i in range(n):
    rel = f"part{i % 3}/sub/file{i:02d}.txt" if i % 2 else f"file{i:02d}.txt"
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"doc {i}\n", encoding="utf-8")
    texts[rel] = f"doc {i}\n"
  (root / "ignored.csv").write_text("not read")
  return texts


def test_txt_directory_is_split_by_hash_of_relative_path(tmp_path):
  texts = _write_tree(tmp_path / "a")
  corpus = _files(tmp_path / "a", val_fraction=0.2)
  by_hash = sorted(texts, key=lambda rel: hashlib.sha1(rel.encode()).hexdigest())
  assert sorted(corpus.val) == sorted(texts[rel] for rel in by_hash[:4])  # round(0.2 * 20)
  assert sorted(corpus.train) == sorted(texts[rel] for rel in by_hash[4:])
  # Deterministic, and independent of where the directory lives.
  shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")
  assert _files(tmp_path / "elsewhere" / "b", val_fraction=0.2) == corpus


def test_glob_selects_files(tmp_path):
  _write_tree(tmp_path)
  corpus = _files(str(tmp_path / "part1" / "**" / "*.txt"), val_fraction=0.3)
  assert len(corpus.train) + len(corpus.val) == 4  # files 1, 7, 13, 19 (odd i with i % 3 == 1)
  assert len(corpus.val) == 1


def test_single_txt_file_is_split_like_nanogpt(tmp_path):
  text = "".join(f"line {i}: some text\n" for i in range(200))[:2004]
  n = len(text)
  assert n * 0.9 % 1 > 0.5  # so that int() and round() would differ
  (tmp_path / "input.txt").write_text(text, encoding="utf-8")
  corpus = _files(tmp_path / "input.txt", val_fraction=0.1)
  assert corpus.train == [text[: int(n * 0.9)]]
  assert corpus.val == [text[int(n * 0.9) :]]


def test_jsonl_text_field_and_single_file_tail_split(tmp_path):
  records = [{"body": f"document {i}", "id": i} for i in range(10)]
  path = tmp_path / "data.jsonl"
  path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
  corpus = _files(path, val_fraction=0.2, text_field="body")
  assert corpus.train == [f"document {i}" for i in range(8)]
  assert corpus.val == ["document 8", "document 9"]


def test_jsonl_and_txt_files_mixed_in_directory(tmp_path):
  (tmp_path / "a.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n', encoding="utf-8")
  (tmp_path / "b.txt").write_text("three", encoding="utf-8")
  corpus = _files(tmp_path, val_fraction=0.1)
  assert sorted(corpus.train + corpus.val) == ["one", "three", "two"]


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"text": "ok"}\n{"text": "ok2"}\n{"text": oops}\n', encoding="utf-8")
  with _raises_one_line(f"{path}:3: malformed JSON"):
    _files(path)


@pytest.mark.parametrize("line", ['{"other": "x"}', '{"text": 5}'])
def test_jsonl_missing_or_non_string_field(tmp_path, line):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"text": "ok"}\n' + line + "\n", encoding="utf-8")
  with _raises_one_line(f"{path}:2: record has no string field 'text'.*data.text_field"):
    _files(path)


def test_jsonl_line_that_is_not_an_object(tmp_path):
  path = tmp_path / "bad.jsonl"
  path.write_text('{"text": "ok"}\n["text"]\n', encoding="utf-8")
  with _raises_one_line(f"{path}:2: a JSON list, not an object"):
    _files(path)


def test_invalid_utf8_names_file_and_byte_offset(tmp_path):
  (tmp_path / "good.txt").write_text("fine", encoding="utf-8")
  bad = tmp_path / "bad.txt"
  bad.write_bytes(b"hello \xff world")
  with _raises_one_line(
    f"{bad} is not valid UTF-8 \\(bad byte at offset 6\\); re-encode it as UTF-8"
  ):
    _files(tmp_path)


def test_missing_path_empty_glob_and_empty_directory(tmp_path):
  with _raises_one_line("does not exist"):
    _files(tmp_path / "nope.txt")
  with _raises_one_line("matches no files"):
    _files(str(tmp_path / "*.txt"))
  with _raises_one_line("holds no .txt or .jsonl files"):
    _files(tmp_path)
  with _raises_one_line("data.path is empty"):
    _files("")


def _val_names(names, k):
  """The k names that the hash split puts in validation."""
  return sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())[:k]


def test_load_corpus_cleans_and_dedups_across_splits(tmp_path):
  names = [f"f{i}.txt" for i in range(10)]
  dup_val, unique_val = _val_names(names, 2)  # round(0.2 * 10) files
  for name in names:
    content = {dup_val: b"same\r\ntext", unique_val: b"val \r only"}.get(name, b"same\rtext")
    (tmp_path / name).write_bytes(content)
  corpus = _files(tmp_path, val_fraction=0.2, dedup=False)
  assert sorted(corpus.val) == ["same\ntext", "val \n only"]
  assert corpus.train == ["same\ntext"] * 8
  corpus = _files(tmp_path, val_fraction=0.2, dedup=True)
  # One copy of the duplicate survives in train; its copy in validation is
  # dropped so that validation measures unseen text.
  assert corpus.train.count("same\ntext") == 1
  assert corpus.val == ["val \n only"]


def test_nfc_normalisation_in_load_corpus(tmp_path):
  (tmp_path / "a.txt").write_text("".join(f"cafe\u0301 {i}\n" for i in range(50)), encoding="utf-8")
  corpus = _files(tmp_path / "a.txt", val_fraction=0.5)
  assert "e\u0301" not in corpus.train[0] and "café" in corpus.train[0]


def test_empty_corpus_and_empty_validation_errors(tmp_path):
  names = [f"f{i}.txt" for i in range(5)]
  for name in names:
    (tmp_path / name).write_text(" \n\t\n")
  with _raises_one_line("the corpus is empty after cleaning"):
    _files(tmp_path)
  (val_name,) = _val_names(names, 1)  # round(0.1 * 5) == 0 -> at least 1
  for name in names:  # only the validation file is blank now
    if name != val_name:
      (tmp_path / name).write_text(f"text of {name}")
  with _raises_one_line(
    "validation split .* is empty after cleaning; use a larger data.val_fraction or more files"
  ):
    _files(tmp_path, val_fraction=0.1)


def test_bad_source_path_and_val_fraction():
  with _raises_one_line("unknown data.source='web'; choose one of files, stdlib, tfds"):
    load_corpus("web", "", "text", 0.1, True)
  with _raises_one_line("data.path='x' is only for data.source=files or tfds"):
    load_corpus("stdlib", "x", "text", 0.1, True)
  with _raises_one_line("data.val_fraction=1.5 must be between 0 and 1"):
    load_corpus("stdlib", "", "text", 1.5, True)


# --- stdlib source --------------------------------------------------------------


def test_stdlib_corpus_loads_deterministically():
  corpus = load_corpus("stdlib", "", "text", 0.05, dedup=True)
  assert len(corpus.train) > 300 and len(corpus.val) > 10
  assert any("def " in doc for doc in corpus.val)
  assert load_corpus("stdlib", "", "text", 0.05, dedup=True) == corpus


def test_stdlib_files_exclude_tests_and_packages():
  import sysconfig

  files = stdlib_files(sysconfig.get_paths()["stdlib"])
  assert "os.py" in files and "json/decoder.py" in files
  for rel in files:
    parts = rel.split("/")
    assert not any(
      p.startswith("test") or p in ("site-packages", "dist-packages", "idle_test") for p in parts
    ), rel


# --- TFDS source ----------------------------------------------------------------


@pytest.fixture()
def mock_tfds():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=5):
    yield tfds


def test_tfds_source_with_mock_data(mock_tfds):
  # mock_data has no split metadata, so the probe finds "validation".
  corpus = load_corpus("tfds", "tiny_shakespeare", "text", 0.1, dedup=False)
  assert len(corpus.train) == 5 and len(corpus.val) == 5
  assert all(isinstance(doc, str) and doc.strip() for doc in corpus.train + corpus.val)


def test_tfds_without_validation_split_holds_out_train_tail(mock_tfds, monkeypatch):
  monkeypatch.setattr(tfds_source, "_val_split_name", lambda tfds, name: None)
  train, val = tfds_source.load_tfds("tiny_shakespeare", "text", 0.2)
  assert len(train) == 4 and len(val) == 1


def test_tfds_errors(mock_tfds):
  with _raises_one_line("has no text field 'content'.*data.text_field"):
    load_corpus("tfds", "tiny_shakespeare", "content", 0.1, dedup=False)
  with _raises_one_line("unknown TFDS dataset 'no_such_dataset_xyz'"):
    load_corpus("tfds", "no_such_dataset_xyz", "text", 0.1, dedup=False)
  with _raises_one_line("needs a dataset name in data.path"):
    load_corpus("tfds", "", "text", 0.1, dedup=False)


def test_tfds_bytes_fields_are_decoded():
  assert tfds_source._text_of({"text": "café".encode()}, "text", "ds") == "café"
  with _raises_one_line("field 'text' is not valid UTF-8 \\(byte offset 1\\)"):
    tfds_source._text_of({"text": b"a\xff"}, "text", "ds")


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
  # The partial window is not padded: [0, 9] -> [9, 10], all of document 2.
  expected_last = {"inputs": [0, 9], "targets": [9, 10], "segment_ids": [1, 1],
                   "positions": [0, 1], "weights": [1.0, 1.0]}
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
      assert (batch["segment_ids"][~real] == 1).all()
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
