"""Labelled records for BERT's heads: sequence classification and BIO tagging, and their packing.

Classification JSONL: {"text": str, "label": str | int, "text_pair": str (optional)}.
Tagging JSONL: {"tokens": [word, ...], "tags": [tag, ...]}, one BIO tag per word (O, B-X, I-X).

An example is [CLS] text [SEP] (+ text_pair [SEP], token type 1), or [CLS] the pieces of each word
[SEP]. The model reads the tokens themselves (no shift): a classification example's label id is the
target at its [CLS], a tagging example's tag ids are the targets at the first piece of each word,
with weight 1; every other target has weight 0. Examples are packed greedily, in order, several to a
row of seq_len tokens, each its own segment (1, 2, ...; 0 is padding) with positions from 0, so
attention stays inside it. `PackedLabels.example_of_target` maps each target back to its example.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from jaxlm.data.clean import normalize_text
from jaxlm.data.file_source import first_jsonl_record, iter_jsonl, resolve_files
from jaxlm.data.splits import split_by_hash
from jaxlm.errors import UserError

FORMATS = ("classification", "tagging")
_TAG = re.compile(r"(?:O|[BI]-\S+)")
_JSON_TYPES = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string",
               list: "list", dict: "object"}


@dataclasses.dataclass(frozen=True)
class ClassificationRecord:
  text: str
  label: str  # an integer label of the file is kept as its decimal string
  text_pair: str | None = None


@dataclasses.dataclass(frozen=True)
class TaggingRecord:
  tokens: tuple[str, ...]  # the words
  tags: tuple[str, ...]  # one BIO tag per word


LabelledRecord = ClassificationRecord | TaggingRecord


def detect_format(path: str) -> str | None:
  """"classification" or "tagging" from the fields of the first JSONL record at `path`; None when
  it is neither (or not JSONL)."""
  record = first_jsonl_record(path) or {}
  if "tokens" in record and "tags" in record:
    return "tagging"
  if "text" in record and "label" in record:
    return "classification"
  return None


def _type_name(value) -> str:
  return _JSON_TYPES.get(type(value), type(value).__name__)


def _classification(record: dict, where: str) -> ClassificationRecord:
  if "label" not in record:
    raise UserError(f"{where}: the record has no 'label'; give each record a string or integer "
                    "label")
  label = record["label"]
  if isinstance(label, bool) or not isinstance(label, (str, int)):
    raise UserError(f"{where}: label {label!r} is a {_type_name(label)}; a label must be a string "
                    "or an integer")
  text, pair = record.get("text"), record.get("text_pair")
  if not isinstance(text, str):
    raise UserError(f"{where}: 'text' is {'missing' if text is None else 'a ' + _type_name(text)}"
                    "; a classification record needs a string 'text'")
  if pair is not None and not isinstance(pair, str):
    raise UserError(f"{where}: 'text_pair' is a {_type_name(pair)}; make it a string or leave it "
                    "out")
  return ClassificationRecord(normalize_text(text), str(label),
                              None if pair is None else normalize_text(pair))


def _strings(value) -> bool:
  return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _tagging(record: dict, where: str) -> TaggingRecord:
  tokens, tags = record.get("tokens"), record.get("tags")
  if not _strings(tokens) or not _strings(tags):
    raise UserError(f"{where}: a tagging record needs 'tokens' and 'tags', each a list of strings")
  if not tokens:
    raise UserError(f"{where}: 'tokens' is empty; drop the record or give it words")
  if len(tokens) != len(tags):
    raise UserError(f"{where}: {len(tokens)} tokens but {len(tags)} tags; give one tag per token")
  for tag in tags:
    if not _TAG.fullmatch(tag):
      raise UserError(f"{where}: tag {tag!r} is not BIO; write O, B-TYPE or I-TYPE")
  return TaggingRecord(tuple(normalize_text(t) for t in tokens), tuple(tags))


def read_labelled(path: str, fmt: str) -> list[LabelledRecord]:
  """Every record of the .jsonl file(s) at `path`, in format `fmt` ("classification"/"tagging")."""
  if fmt not in FORMATS:
    raise UserError(f"data.format={fmt!r} is not a labelled format; use one of {FORMATS}")
  parse = _classification if fmt == "classification" else _tagging
  files, _ = resolve_files(path)
  records = [parse(record, f"{file}:{lineno}")
             for file in files for lineno, record in iter_jsonl(file)]
  if not records:
    raise UserError(f"{path} holds no {fmt} records; check data.path")
  return records


def split_labelled(records: Sequence[LabelledRecord],
                   val_fraction: float) -> tuple[list[LabelledRecord], list[LabelledRecord]]:
  """A held-out subset chosen by a hash of each record (identical records stay together)."""
  train_idx, val_idx = split_by_hash([repr(r) for r in records], val_fraction)
  return [records[i] for i in train_idx], [records[i] for i in val_idx]


def labels_of(record: LabelledRecord) -> tuple[str, ...]:
  return record.tags if isinstance(record, TaggingRecord) else (record.label,)


def label_vocabulary(records: Sequence[LabelledRecord], given: Sequence) -> tuple[str, ...]:
  """The label names in id order: `given` (data.labels; integers become their strings), else the
  sorted labels of the training `records`. For tagging, each entity type seen brings both its
  B- and I- tag, and O is always there, so a validation split may hold a tag training lacked."""
  if given:
    labels = tuple(str(label) for label in given)
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
      raise UserError(f"data.labels names {', '.join(repeated)} more than once; list each label "
                      "once")
    return labels
  seen = {label for record in records for label in labels_of(record)}
  if records and isinstance(records[0], TaggingRecord):
    seen |= {"O"} | {f"{bi}-{tag[2:]}" for tag in seen if tag != "O" for bi in "BI"}
  return tuple(sorted(seen))


def check_labels(records: Sequence[LabelledRecord], labels: Sequence[str], split: str) -> None:
  """A label of `records` not among `labels` is an error naming it and the known ones."""
  known = set(labels)
  for record in records:
    for label in labels_of(record):
      if label not in known:
        raise UserError(f"the {split} split has label {label!r}, not among the run's labels "
                        f"({', '.join(labels)}); fix the data or set data.labels")


@dataclasses.dataclass(frozen=True)
class Example:
  """One example's tokens, with the label id (-1: none) and word index (-1: none) of each."""
  tokens: list[int]
  token_types: list[int]
  targets: list[int]
  words: list[int]


def _special(tokenizer, name: str) -> int:
  value = getattr(tokenizer, name, None)
  if value is None:
    raise UserError(f"labelled data needs [CLS] and [SEP]: the {tokenizer.kind} tokenizer has "
                    "none; set --config.data.tokenizer=wordpiece")
  return value


def _fit_pair(first: list[int], second: list[int], budget: int) -> tuple[list[int], list[int]]:
  """Both cut on the right to `budget` tokens together, the longer first: Hugging Face's
  "longest_first" (the longer keeps the odd token; the second one on a tie)."""
  if len(first) + len(second) <= budget:
    return first, second
  short = min(len(first), len(second))
  keep_short, keep_long = short, max(short, budget - short)
  if keep_short + keep_long > budget:
    keep_short, keep_long = budget // 2, budget // 2 + budget % 2
  if len(first) > len(second):
    return first[:keep_long], second[:keep_short]
  return first[:keep_short], second[:keep_long]


def _check_seq_len(seq_len: int) -> None:
  if seq_len < 3:
    raise UserError(f"data.seq_len={seq_len} cannot hold a labelled example ([CLS] text [SEP]); "
                    "use data.seq_len >= 3")


def classification_examples(records: Sequence[ClassificationRecord], tokenizer, seq_len: int,
                            labels: Sequence[str]) -> tuple[list[Example], int]:
  """The examples of `records`, each cut to seq_len tokens, and how many were cut."""
  cls_id, sep_id = _special(tokenizer, "cls_id"), _special(tokenizer, "sep_id")
  label_id = {label: i for i, label in enumerate(labels)}
  texts = tokenizer.encode_batch([r.text for r in records])
  paired = [i for i, r in enumerate(records) if r.text_pair]  # "" is no pair, as in transformers
  pairs = dict(zip(paired, tokenizer.encode_batch([records[i].text_pair for i in paired])))
  examples, truncated = [], 0
  for i, record in enumerate(records):
    if i in pairs:
      first, second = _fit_pair(texts[i], pairs[i], seq_len - 3)
      tokens = [cls_id, *first, sep_id, *second, sep_id]
      token_types = [0] * (len(first) + 2) + [1] * (len(second) + 1)
      truncated += len(first) + len(second) < len(texts[i]) + len(pairs[i])
    else:
      first = texts[i][:seq_len - 2]
      tokens, token_types = [cls_id, *first, sep_id], [0] * (len(first) + 2)
      truncated += len(first) < len(texts[i])
    none = [-1] * (len(tokens) - 1)
    examples.append(Example(tokens, token_types, [label_id[record.label], *none], [0, *none]))
  return examples, truncated


def tagging_examples(records: Sequence[TaggingRecord], tokenizer, seq_len: int,
                     labels: Sequence[str]) -> tuple[list[Example], int, int]:
  """The examples of `records`, the words that do not fit cut off; also (examples cut, words cut).
  A word the tokenizer turns into nothing (say, a control character) is read as [UNK], so that
  every word keeps a labelled piece and words map to targets in order."""
  cls_id, sep_id = _special(tokenizer, "cls_id"), _special(tokenizer, "sep_id")
  unk_id = _special(tokenizer, "unk_id")
  label_id = {label: i for i, label in enumerate(labels)}
  pieces = iter(tokenizer.encode_batch([word for r in records for word in r.tokens]))
  examples, truncated, cut_words = [], 0, 0
  for record in records:
    tokens, targets, words = [cls_id], [-1], [-1]
    word_pieces = [next(pieces) or [unk_id] for _ in record.tokens]
    for w, (piece_ids, tag) in enumerate(zip(word_pieces, record.tags)):
      if len(tokens) + len(piece_ids) + 1 > seq_len:  # + 1: room for [SEP]
        truncated += 1
        cut_words += len(record.tokens) - w
        break
      tokens += piece_ids
      targets += [label_id[tag]] + [-1] * (len(piece_ids) - 1)
      words += [w] + [-1] * (len(piece_ids) - 1)
    examples.append(Example([*tokens, sep_id], [0] * (len(tokens) + 1), [*targets, -1],
                            [*words, -1]))
  return examples, truncated, cut_words


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous
class PackedLabels:
  """Rows of whole labelled examples; the example fields of `PackedRecords`."""

  tokens: np.ndarray  # [num_rows, seq_len] int32, the inputs (0 in padding)
  token_types: np.ndarray  # [num_rows, seq_len] int32, 1 for text_pair's tokens
  segment_ids: np.ndarray  # [num_rows, seq_len] int32, example k of a row is k + 1; 0 = padding
  positions: np.ndarray  # [num_rows, seq_len] int32, from 0 in each example
  targets: np.ndarray  # [num_rows, seq_len] int32, label ids (0 where not labelled)
  weights: np.ndarray  # [num_rows, seq_len] float32, 1 where labelled
  example_of_target: np.ndarray  # [num_rows, seq_len] int32, example index; -1 where unlabelled
  word_of_target: np.ndarray  # [num_rows, seq_len] int32, word index in its example (tagging)
  num_examples: int
  truncated: int  # examples that lost tokens (classification) or words (tagging)
  cut_words: int  # tagging: words cut off with their tags

  def __len__(self) -> int:
    return len(self.tokens)

  @property
  def num_full_windows(self) -> int:
    """Rows training draws from: all of them (each is whole examples, padded)."""
    return len(self.tokens)

  @property
  def seq_len(self) -> int:
    return self.tokens.shape[1]

  def __getitem__(self, k: int) -> dict[str, np.ndarray]:
    return {name: field[0] for name, field in self.rows(np.array([k])).items()}

  def rows(self, ks: np.ndarray) -> dict[str, np.ndarray]:
    """Rows `ks  # [n]` at once, each field [n, seq_len]."""
    return {
      "inputs": self.tokens[ks],
      "targets": self.targets[ks],
      "segment_ids": self.segment_ids[ks],
      "positions": self.positions[ks],
      "weights": self.weights[ks],
      "token_types": self.token_types[ks],
    }


def pack_examples(examples: Sequence[Example], seq_len: int, truncated: int = 0,
                  cut_words: int = 0) -> PackedLabels:
  """Packs `examples` (each at most seq_len tokens) greedily, in order, into rows."""
  rows: list[list[int]] = [[]]  # example indices of each row
  used = 0
  for i, example in enumerate(examples):
    if used + len(example.tokens) > seq_len:
      rows.append([])
      used = 0
    rows[-1].append(i)
    used += len(example.tokens)
  shape = (len(rows), seq_len)
  fields = {name: np.zeros(shape, np.int32) for name in
            ("tokens", "token_types", "segment_ids", "positions", "targets")}
  example_of = np.full(shape, -1, np.int32)  # [num_rows, seq_len]
  word_of = np.full(shape, -1, np.int32)  # [num_rows, seq_len]
  for r, row in enumerate(rows):
    start = 0
    for segment, i in enumerate(row, start=1):
      example = examples[i]
      span = slice(start, start + len(example.tokens))
      targets = np.asarray(example.targets, np.int32)  # [example_len], -1 where unlabelled
      fields["tokens"][r, span] = example.tokens
      fields["token_types"][r, span] = example.token_types
      fields["segment_ids"][r, span] = segment
      fields["positions"][r, span] = np.arange(len(example.tokens))
      fields["targets"][r, span] = np.maximum(targets, 0)
      example_of[r, span] = np.where(targets >= 0, i, -1)
      word_of[r, span] = example.words
      start = span.stop
  weights = (example_of >= 0).astype(np.float32)  # [num_rows, seq_len]
  return PackedLabels(**fields, weights=weights, example_of_target=example_of,
                      word_of_target=word_of, num_examples=len(examples), truncated=truncated,
                      cut_words=cut_words)


def pack_classification(records: Sequence[ClassificationRecord], tokenizer, seq_len: int,
                        labels: Sequence[str], split_name: str = "data") -> PackedLabels:
  """Classification records packed into rows; their labels must be among `labels`."""
  _check_seq_len(seq_len)
  check_labels(records, labels, split_name)
  examples, truncated = classification_examples(records, tokenizer, seq_len, labels)
  return pack_examples(examples, seq_len, truncated)


def pack_tagging(records: Sequence[TaggingRecord], tokenizer, seq_len: int,
                 labels: Sequence[str], split_name: str = "data") -> PackedLabels:
  """Tagging records packed into rows; their tags must be among `labels`."""
  _check_seq_len(seq_len)
  check_labels(records, labels, split_name)
  examples, truncated, cut_words = tagging_examples(records, tokenizer, seq_len, labels)
  return pack_examples(examples, seq_len, truncated, cut_words)


def pack_labelled(records: Sequence[LabelledRecord], tokenizer, seq_len: int,
                  labels: Sequence[str], split_name: str = "data") -> PackedLabels:
  """pack_classification or pack_tagging, by the records' type."""
  if not records:
    raise UserError(f"the {split_name} split has no labelled records; add some")
  pack = pack_tagging if isinstance(records[0], TaggingRecord) else pack_classification
  return pack(records, tokenizer, seq_len, labels, split_name)
