"""Tests for jaxlm.data: sources and cleaning (packing and batches: test_batches.py)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil

import pytest

from jaxlm.data import clean_documents, load_corpus, tfds_source
from jaxlm.data.stdlib_source import stdlib_files
from jaxlm.errors import UserError

FIELDS = ("inputs", "targets", "segment_ids", "positions", "weights", "token_types")


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
  with _raises_one_line("holds no .txt, .jsonl, .jsonl.gz or .parquet files"):
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
  with _raises_one_line("unknown data.source='web'; choose one of files, hf, stdlib, tfds"):
    load_corpus("web", "", "text", 0.1, True)
  with _raises_one_line("data.path='x' is only for data.source=files, tfds or hf"):
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
