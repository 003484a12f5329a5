"""Tests for labelled data: reading classification / tagging JSONL, label vocabularies, and packing
examples into rows, checked against the Hugging Face tokenizer of the same vocabulary."""

from __future__ import annotations

import json

import numpy as np
import pytest
import transformers
from test_data import FIELDS, _raises_one_line
from test_wordpiece import _stdlib_texts

from jaxlm.data import train_tokenizer
from jaxlm.data.labelled import (
  ClassificationRecord,
  TaggingRecord,
  check_labels,
  detect_format,
  label_vocabulary,
  pack_classification,
  pack_labelled,
  pack_tagging,
  read_labelled,
  split_labelled,
)
from jaxlm.data.wordpiece_tokenizer import WordPieceTokenizer

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dogs", "while", "seven",
         "wizards", "quietly", "hex", "every", "jovial", "boxer", "return", "lambda", "yield",
         "import"]


@pytest.fixture(scope="module")
def wp() -> WordPieceTokenizer:
  return WordPieceTokenizer.train(_stdlib_texts(), 400)


@pytest.fixture(scope="module")
def hf(wp, tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("hf_wordpiece"))
  wp.save_hf_files(directory, max_len=512)
  return transformers.AutoTokenizer.from_pretrained(directory)


def _jsonl(path, records) -> str:
  path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
  return str(path)


def _sentence(rng, low, high) -> str:
  return " ".join(rng.choice(WORDS, size=int(rng.integers(low, high))))


# --- reading ---------------------------------------------------------------------


def test_read_classification_and_tagging(tmp_path):
  path = _jsonl(tmp_path / "c.jsonl", [{"text": "cafe\u0301", "label": 3},
                                      {"text": "b", "label": "neg", "text_pair": "c\r\nd"}])
  assert read_labelled(path, "classification") == [
    ClassificationRecord("café", "3"), ClassificationRecord("b", "neg", "c\nd")]
  assert detect_format(path) == "classification"
  tags = _jsonl(tmp_path / "t.jsonl", [{"tokens": ["in", "Paris"], "tags": ["O", "B-LOC"]}])
  assert read_labelled(tags, "tagging") == [TaggingRecord(("in", "Paris"), ("O", "B-LOC"))]
  assert detect_format(tags) == "tagging"
  other = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "completion": "b"}])
  (tmp_path / "x.txt").write_text("text", encoding="utf-8")
  assert detect_format(other) is None and detect_format(str(tmp_path / "x.txt")) is None
  assert detect_format(str(tmp_path / "missing.jsonl")) is None


@pytest.mark.parametrize("record, match", [
  ({"text": "a"}, "the record has no 'label'"),
  ({"text": "a", "label": 1.5}, "label 1.5 is a number; a label must be a string or an integer"),
  ({"text": "a", "label": True}, "label True is a boolean"),
  ({"text": "a", "label": None}, "label None is a null"),
  ({"text": "a", "label": ["x"]}, r"label \['x'\] is a list"),
  ({"text": 5, "label": "x"}, "'text' is a number; a classification record needs a string 'text'"),
  ({"label": "x"}, "'text' is missing"),
  ({"text": "a", "label": "x", "text_pair": 3}, "'text_pair' is a number"),
])
def test_classification_record_errors(tmp_path, record, match):
  path = _jsonl(tmp_path / "c.jsonl", [{"text": "ok", "label": "y"}, record])
  with _raises_one_line(f"{path}:2: {match}"):
    read_labelled(path, "classification")


@pytest.mark.parametrize("record, match", [
  ({"tokens": ["a", "b"], "tags": ["O"]}, "2 tokens but 1 tags"),
  ({"tokens": [], "tags": []}, "'tokens' is empty"),
  ({"tokens": "a b", "tags": ["O", "O"]}, "a tagging record needs 'tokens' and 'tags'"),
  ({"tokens": ["a"], "tags": [1]}, "a tagging record needs 'tokens' and 'tags'"),
  ({"tokens": ["a"]}, "a tagging record needs 'tokens' and 'tags'"),
  ({"tokens": ["a"], "tags": ["PER"]}, "tag 'PER' is not BIO"),
  ({"tokens": ["a"], "tags": ["B-"]}, "tag 'B-' is not BIO"),
  ({"tokens": ["a"], "tags": ["b-PER"]}, "tag 'b-PER' is not BIO"),
  ({"tokens": ["a"], "tags": ["I_PER"]}, "tag 'I_PER' is not BIO"),
])
def test_tagging_record_errors(tmp_path, record, match):
  path = _jsonl(tmp_path / "t.jsonl", [{"tokens": ["x"], "tags": ["B-X"]}, record])
  with _raises_one_line(f"{path}:2: {match}"):
    read_labelled(path, "tagging")


def test_no_records_and_unknown_format(tmp_path):
  empty = tmp_path / "e.jsonl"
  empty.write_text("\n\n", encoding="utf-8")
  with _raises_one_line("holds no tagging records"):
    read_labelled(str(empty), "tagging")
  with _raises_one_line("not a labelled format"):
    read_labelled(str(empty), "text")


def test_split_labelled_is_a_stable_partition():
  records = [ClassificationRecord(f"text {i}", str(i % 3)) for i in range(50)]
  train, val = split_labelled(records, 0.2)
  assert len(val) == 10 and sorted(map(repr, train + val)) == sorted(map(repr, records))
  assert split_labelled(list(reversed(records)), 0.2)[1] == list(reversed(val))


# --- labels ----------------------------------------------------------------------


def test_label_vocabulary_and_check():
  records = [ClassificationRecord("a", "pos"), ClassificationRecord("b", "neg"),
             ClassificationRecord("c", "10"), ClassificationRecord("d", "pos")]
  assert label_vocabulary(records, ()) == ("10", "neg", "pos")
  assert label_vocabulary(records, (2, "x", 1)) == ("2", "x", "1")
  tagged = [TaggingRecord(("a", "b"), ("B-PER", "O")), TaggingRecord(("c",), ("I-LOC",))]
  assert label_vocabulary(tagged, ()) == ("B-LOC", "B-PER", "I-LOC", "I-PER", "O")
  with _raises_one_line("data.labels names a more than once"):
    label_vocabulary(records, ("a", "b", "a"))
  check_labels(records, ("10", "neg", "pos"), "val")
  with _raises_one_line(r"the val split has label 'pos', not among the run's labels \(10, neg\)"):
    check_labels(records, ("10", "neg"), "val")
  with _raises_one_line("the test split has label 'I-LOC'"):
    check_labels(tagged, ("B-PER", "O"), "test")


# --- packing ---------------------------------------------------------------------


def _examples_of_rows(packed) -> list[dict[str, np.ndarray]]:
  """Each example's slice of its row (by segment), in row order: what packing placed."""
  out = []
  for r in range(len(packed)):
    row = packed[r]
    for segment in range(1, row["segment_ids"].max() + 1):
      where = row["segment_ids"] == segment
      out.append({name: values[where] for name, values in row.items()}
                 | {"example": packed.example_of_target[r][where],
                    "word": packed.word_of_target[r][where]})
  return out


def _check_rows(packed, seq_len: int):
  """Fields, dtypes and the row layout: examples consecutive from the start, padding after."""
  rows = packed.rows(np.arange(len(packed)))
  assert {name: (v.shape, v.dtype) for name, v in rows.items()} == {
    name: ((len(packed), seq_len), np.float32 if name == "weights" else np.int32) for name in FIELDS
  }
  for r in range(len(packed)):
    segments = rows["segment_ids"][r]
    real = segments > 0
    assert real[:real.sum()].all()  # no gap before the padding
    assert set(np.diff(segments[real])) <= {0, 1} and segments[0] == 1
    assert (rows["weights"][r][~real] == 0).all() and (rows["inputs"][r][~real] == 0).all()
  np.testing.assert_array_equal(rows["weights"], packed.example_of_target >= 0)


@pytest.mark.parametrize("seq_len", [8, 16, 40])
def test_classification_packing_matches_hf_longest_first(wp, hf, seq_len):
  rng = np.random.default_rng(seq_len)
  labels = ("a", "b", "c")
  records = []
  for i in range(60):
    pair = _sentence(rng, 0, 12) if i % 2 else None
    records.append(ClassificationRecord(_sentence(rng, 0, 14), labels[i % 3], pair))
  records.append(ClassificationRecord("x", "b", "y"))  # short pair, and the equal-length tie
  records.append(ClassificationRecord(" ".join(WORDS[:8]), "c", " ".join(WORDS[8:16])))
  packed = pack_classification(records, wp, seq_len, labels)
  _check_rows(packed, seq_len)
  examples = _examples_of_rows(packed)
  assert len(examples) == packed.num_examples == len(records)
  truncated = 0
  for i, (record, example) in enumerate(zip(records, examples)):
    expected = hf(record.text, record.text_pair, truncation="longest_first", max_length=seq_len)
    np.testing.assert_array_equal(example["inputs"], expected["input_ids"])
    np.testing.assert_array_equal(example["token_types"], expected["token_type_ids"])
    np.testing.assert_array_equal(example["positions"], np.arange(len(example["inputs"])))
    # The label is the target at [CLS] and nowhere else.
    assert example["weights"].tolist() == [1.0] + [0.0] * (len(example["inputs"]) - 1)
    assert example["targets"][0] == labels.index(record.label)
    assert example["example"].tolist() == [i] + [-1] * (len(example["inputs"]) - 1)
    full = hf(record.text, record.text_pair)["input_ids"]
    truncated += len(full) > seq_len
  assert packed.truncated == truncated and truncated > 0


def test_rows_are_filled_greedily_in_order(wp):
  records = [ClassificationRecord(" ".join(WORDS[:n]), "a") for n in (1, 5, 2, 1, 6, 3)]
  lengths = [len(wp.encode(r.text)) + 2 for r in records]
  packed = pack_classification(records, wp, 12, ("a",))
  expected_rows, used = [[]], 0
  for i, length in enumerate(lengths):  # the greedy rule, spelled out
    if used + length > 12:
      expected_rows.append([])
      used = 0
    expected_rows[-1].append(i)
    used += length
  rows = [sorted(set(packed.example_of_target[r][packed.example_of_target[r] >= 0]))
          for r in range(len(packed))]
  assert rows == expected_rows


def test_tagging_packing_matches_hf_word_ids(wp, hf):
  rng = np.random.default_rng(0)
  tag_names = ("B-KW", "B-X", "I-KW", "I-X", "O")
  records = []
  for _ in range(40):
    words = list(rng.choice(WORDS, size=int(rng.integers(1, 6))))
    records.append(TaggingRecord(tuple(words), tuple(rng.choice(tag_names, size=len(words)))))
  seq_len = 48
  packed = pack_tagging(records, wp, seq_len, tag_names)
  _check_rows(packed, seq_len)
  examples = _examples_of_rows(packed)
  assert len(examples) == len(records) and packed.cut_words == packed.truncated == 0
  for i, (record, example) in enumerate(zip(records, examples)):
    expected = hf(list(record.tokens), is_split_into_words=True)
    np.testing.assert_array_equal(example["inputs"], expected["input_ids"])
    word_ids = expected.word_ids()
    first_piece = [w is not None and (p == 0 or word_ids[p - 1] != w)
                   for p, w in enumerate(word_ids)]
    np.testing.assert_array_equal(example["weights"], first_piece)
    labelled = example["weights"] > 0
    assert [tag_names[t] for t in example["targets"][labelled]] == list(record.tags)
    assert example["word"][labelled].tolist() == list(range(len(record.tokens)))
    assert (example["example"][labelled] == i).all() and (example["token_types"] == 0).all()


def test_tagging_cuts_words_that_do_not_fit(wp):
  words = ("quietly", "wizards", "x", "boxer", "jovial", "fox")
  pieces = [len(wp.encode(w)) for w in words]
  seq_len = 2 + sum(pieces[:3]) + pieces[3] - 1  # the 4th word misses by one token
  record = TaggingRecord(words, ("B-X", "I-X", "O", "B-X", "O", "O"))
  short = TaggingRecord(("fox",), ("O",))
  packed = pack_tagging([record, short], wp, seq_len, ("B-X", "I-X", "O"))
  assert (packed.truncated, packed.cut_words) == (1, 3)
  first = _examples_of_rows(packed)[0]
  assert len(first["inputs"]) == 2 + sum(pieces[:3])
  assert first["word"][first["weights"] > 0].tolist() == [0, 1, 2]
  tiny = pack_tagging([record], wp, 3, ("B-X", "I-X", "O"))  # no word fits: [CLS] [SEP] alone
  assert tiny.cut_words == 6 and tiny.weights.sum() == 0 and tiny[0]["inputs"][:2].tolist() == [
    wp.cls_id, wp.sep_id]


def test_word_without_pieces_is_unk(wp):
  packed = pack_tagging([TaggingRecord(("fox", "\x00", "dogs"), ("O", "B-X", "O"))], wp, 16,
                        ("B-X", "O"))
  example = _examples_of_rows(packed)[0]
  labelled = example["weights"] > 0
  assert example["targets"][labelled].tolist() == [1, 0, 1]
  assert example["inputs"][labelled][1] == wp.unk_id


def test_packing_errors(wp):
  records = [ClassificationRecord("a", "x")]
  with _raises_one_line("data.seq_len=2 cannot hold a labelled example"):
    pack_classification(records, wp, 2, ("x",))
  with _raises_one_line("the train split has label 'x'"):
    pack_labelled(records, wp, 8, ("y",), "train")
  with _raises_one_line("the byte tokenizer has none; set --config.data.tokenizer=wordpiece"):
    pack_classification(records, train_tokenizer("byte", [], 0), 8, ("x",))
  with _raises_one_line("the val split has no labelled records"):
    pack_labelled([], wp, 8, ("x",), "val")
