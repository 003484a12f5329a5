"""Labelled prompt/completion records for finetuning, and their packing into rows.

A record becomes `[EOS] + prompt + completion + [EOS]`. The loss is taken only on the completion and
its closing EOS: the targets that are prompt tokens get weight 0. Records are packed whole, in order,
into rows of `seq_len + 1` tokens; a record never spans two rows, each has its own segment id so
attention stays inside it, and the rest of a row is padding (segment 0, weight 0).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxlm.data.clean import normalize_text
from jaxlm.data.file_source import first_jsonl_record, iter_jsonl, resolve_files
from jaxlm.data.splits import split_by_hash
from jaxlm.errors import UserError

PROMPT, COMPLETION = "prompt", "completion"
TRUNCATE_MODES = ("left", "drop")


@dataclasses.dataclass(frozen=True)
class Record:
  prompt: str
  completion: str


def is_record_file(path: str) -> bool:
  """True when data.path names JSONL whose first record has prompt and completion fields."""
  record = first_jsonl_record(path) or {}
  return PROMPT in record and COMPLETION in record


def read_records(path: str) -> list[Record]:
  """Every record of the .jsonl file(s) at `path`, NFC/newline-normalised."""
  files, _ = resolve_files(path)
  records = []
  for file in files:
    for lineno, record in iter_jsonl(file):
      values = [record.get(PROMPT), record.get(COMPLETION)]
      if not all(isinstance(v, str) for v in values):
        raise UserError(
          f"{file}:{lineno}: a finetuning record needs string fields "
          f"{PROMPT!r} and {COMPLETION!r}; fix the record or drop the line"
        )
      records.append(Record(normalize_text(values[0]), normalize_text(values[1])))
  if not records:
    raise UserError(f"{path} holds no prompt/completion records")
  return records


def split_records(
  records: Sequence[Record], val_fraction: float
) -> tuple[list[Record], list[Record]]:
  """A held-out subset chosen by a hash of each record's text (identical records stay together)."""
  train_idx, val_idx = split_by_hash(
    [r.prompt + "\0" + r.completion for r in records], val_fraction
  )
  return [records[i] for i in train_idx], [records[i] for i in val_idx]


def fit_record(
  prompt: list[int], completion: list[int], eos_id: int, seq_len: int, truncate: str
) -> tuple[list[int], int] | None:
  """Token row piece `[EOS] + prompt + completion + [EOS]` and its prompt length (incl. the first
  EOS), cut from the left of the prompt to fit `seq_len + 1` tokens; None if it cannot fit."""
  overflow = len(prompt) + len(completion) + 2 - (seq_len + 1)
  if overflow > 0:
    if truncate == "drop" or overflow > len(prompt):
      return None
    prompt = prompt[overflow:]
  return [eos_id, *prompt, *completion, eos_id], len(prompt) + 1


@dataclasses.dataclass(frozen=True, eq=False)
class PackedRecords:
  """Rows of whole records; the same example fields as `PackedTokens`."""

  tokens: np.ndarray  # [num_rows, seq_len + 1] int32
  segment_ids: np.ndarray  # [num_rows, seq_len + 1] int32, 0 = padding
  positions: np.ndarray  # [num_rows, seq_len + 1] int32
  weights: np.ndarray  # [num_rows, seq_len] float32, weight of each target
  truncated: int  # records whose prompt lost tokens on the left
  dropped: int  # records that could not fit a row

  def __len__(self) -> int:
    return len(self.tokens)

  @property
  def num_full_windows(self) -> int:
    """Rows training draws from: all of them (each is whole records, padded)."""
    return len(self.tokens)

  def __getitem__(self, k: int) -> dict[str, np.ndarray]:
    return {name: field[0] for name, field in self.rows(np.array([k])).items()}

  def rows(self, ks: np.ndarray) -> dict[str, np.ndarray]:
    """Rows `ks  # [n]` at once, each field [n, seq_len]."""
    return {
      "inputs": self.tokens[ks, :-1],
      "targets": self.tokens[ks, 1:],
      "segment_ids": self.segment_ids[ks, :-1],
      "positions": self.positions[ks, :-1],
      "weights": self.weights[ks],
      # Prompt and completion are one sequence to the model: all sentence A.
      "token_types": np.zeros((len(ks), self.seq_len), dtype=np.int32),
    }

  @property
  def seq_len(self) -> int:
    return self.tokens.shape[1] - 1


def pack_records(
  token_records: Sequence[tuple[list[int], list[int]]],
  eos_id: int,
  seq_len: int,
  truncate: str,
  split_name: str = "data",
) -> PackedRecords:
  """Packs tokenized (prompt, completion) pairs greedily, in order, into rows."""
  if truncate not in TRUNCATE_MODES:
    raise UserError(f"data.truncate={truncate!r} is not one of {TRUNCATE_MODES}")
  pieces, truncated, dropped = [], 0, 0
  for prompt, completion in token_records:
    fitted = fit_record(prompt, completion, eos_id, seq_len, truncate)
    if fitted is None:
      dropped += 1
      continue
    truncated += fitted[1] - 1 < len(prompt)
    piece, prompt_len = fitted
    pieces.append((piece, [False] * prompt_len + [True] * (len(piece) - prompt_len)))
  return pack_pieces(pieces, seq_len, truncated, dropped, split_name)


def pack_pieces(pieces: Sequence[tuple[list[int], list[bool]]], seq_len: int, truncated: int = 0,
                dropped: int = 0, split_name: str = "data") -> PackedRecords:
  """Packs whole records, each (tokens, which tokens are targets) of at most seq_len + 1 tokens,
  greedily and in order into rows; the loss covers the target tokens (as predictions of the
  record's tokens before them)."""
  width = seq_len + 1
  rows: list[list[tuple[list[int], list[bool]]]] = [[]]
  used = 0
  for piece in pieces:
    if used + len(piece[0]) > width:
      rows.append([])
      used = 0
    rows[-1].append(piece)
    used += len(piece[0])
  rows = [row for row in rows if row]
  if not rows:
    raise UserError(
      f"no {split_name} record fits data.seq_len={seq_len} ({dropped} dropped); "
      "raise data.seq_len or use data.truncate=left"
    )
  tokens = np.zeros((len(rows), width), np.int32)
  segments = np.zeros_like(tokens)
  positions = np.zeros_like(tokens)
  is_target = np.zeros((len(rows), width), bool)  # tokens that the loss should predict
  for r, row in enumerate(rows):
    start = 0
    for segment, (piece, targets) in enumerate(row, start=1):
      end = start + len(piece)
      tokens[r, start:end] = piece
      segments[r, start:end] = segment
      positions[r, start:end] = np.arange(len(piece))
      is_target[r, start:end] = targets
      start = end
  # A target is weighted when it is a target token of the same record as its input.
  same_record = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)
  weights = (is_target[:, 1:] & same_record).astype(np.float32)
  return PackedRecords(tokens, segments, positions, weights, int(truncated), dropped)
