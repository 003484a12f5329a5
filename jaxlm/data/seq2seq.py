"""Seq2seq records for an encoder-decoder model, and their packing into encoder / decoder rows.

JSONL `{"source": str, "target": str}`; prompt/completion records are read as source/target.
An example is `source + [EOS]` on the encoder side (T5 ends its inputs with EOS) and
`target + [EOS]` on the decoder side, where the decoder inputs are the targets shifted right with
the start id 0 first. Examples are packed greedily, in order: a row takes the next example while
both its encoder row (`seq_len`) and its decoder row (`target_len`) have room. Example k of a row is
segment k + 1 on both sides with positions from 0; the rest is padding (segment 0, weight 0).

Too long for its side (data.truncate): "left" cuts the source from the left (its end is kept, as
for prompts), "right" cuts it on the right (its start is kept: T5's and Hugging Face's default);
both cut a target on the right; "drop" skips the example. Cut and dropped examples are counted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxlm.data.clean import normalize_text
from jaxlm.data.file_source import first_jsonl_record, iter_jsonl, resolve_files
from jaxlm.data.records import COMPLETION, PROMPT
from jaxlm.data.splits import split_by_hash
from jaxlm.errors import UserError

SOURCE, TARGET = "source", "target"
TRUNCATE_MODES = ("left", "right", "drop")
DECODER_START_ID = 0  # T5's: the pad id


@dataclasses.dataclass(frozen=True)
class Pair:
  source: str
  target: str


def is_seq2seq_file(path: str) -> bool:
  """True when data.path names JSONL whose first record has source and target fields."""
  record = first_jsonl_record(path) or {}
  return SOURCE in record and TARGET in record


def _fields(record: dict) -> tuple[str, str]:
  """The (source, target) field names of a record: its own, or prompt/completion."""
  if PROMPT in record and COMPLETION in record and SOURCE not in record:
    return PROMPT, COMPLETION
  return SOURCE, TARGET


def read_pairs(path: str) -> list[Pair]:
  """Every record of the .jsonl file(s) at `path`, NFC/newline-normalised."""
  files, _ = resolve_files(path)
  pairs = []
  for file in files:
    for lineno, record in iter_jsonl(file):
      names = _fields(record)
      values = [record.get(name) for name in names]
      if not all(isinstance(v, str) for v in values):
        raise UserError(f"{file}:{lineno}: a seq2seq record needs string fields {SOURCE!r} and "
                        f"{TARGET!r} (or {PROMPT!r} and {COMPLETION!r}); fix the record or drop "
                        "the line")
      pairs.append(Pair(normalize_text(values[0]), normalize_text(values[1])))
  if not pairs:
    raise UserError(f"{path} holds no seq2seq records; give one JSON object per line with "
                    "string fields \"source\" and \"target\"")
  return pairs


def split_pairs(pairs: Sequence[Pair], val_fraction: float) -> tuple[list[Pair], list[Pair]]:
  """A held-out subset chosen by a hash of each pair (identical pairs stay together)."""
  train_idx, val_idx = split_by_hash([p.source + "\0" + p.target for p in pairs], val_fraction)
  return [pairs[i] for i in train_idx], [pairs[i] for i in val_idx]


def fit_example(source: list[int], target: list[int], eos_id: int, seq_len: int,
                target_len: int, truncate: str) -> tuple[list[int], list[int]] | None:
  """(`source + [EOS]`, `target + [EOS]`) cut to seq_len / target_len tokens by `truncate`; None
  when it is "drop" and either is too long."""
  source_room, target_room = seq_len - 1, target_len - 1
  if len(source) > source_room or len(target) > target_room:
    if truncate == "drop":
      return None
    if len(source) > source_room:
      source = source[len(source) - source_room:] if truncate == "left" else source[:source_room]
    target = target[:target_room]
  return [*source, eos_id], [*target, eos_id]


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous
class PackedSeq2Seq:
  """Rows of whole examples: the encoder side [num_rows, seq_len], the decoder [num_rows,
  target_len]; `rows` gives the batch fields of an encdec model (see encdec_contract)."""

  encoder_tokens: np.ndarray  # [num_rows, seq_len] int32, 0 in padding
  encoder_segment_ids: np.ndarray  # [num_rows, seq_len] int32, example k of a row is k + 1
  encoder_positions: np.ndarray  # [num_rows, seq_len] int32, from 0 in each example
  targets: np.ndarray  # [num_rows, target_len] int32: target + EOS of each example
  segment_ids: np.ndarray  # [num_rows, target_len] int32
  positions: np.ndarray  # [num_rows, target_len] int32
  num_examples: int
  truncated: int  # examples with a side cut
  dropped: int  # examples skipped (data.truncate=drop)

  def __len__(self) -> int:
    return len(self.targets)

  @property
  def num_full_windows(self) -> int:
    """Rows training draws from: all of them (each is whole examples, padded)."""
    return len(self.targets)

  @property
  def seq_len(self) -> int:
    return self.encoder_tokens.shape[1]

  @property
  def target_len(self) -> int:
    return self.targets.shape[1]

  def __getitem__(self, k: int) -> dict[str, np.ndarray]:
    return {name: field[0] for name, field in self.rows(np.array([k])).items()}

  def rows(self, ks: np.ndarray) -> dict[str, np.ndarray]:
    """Rows `ks  # [n]` at once: encoder fields [n, seq_len], decoder fields [n, target_len]."""
    targets, segments = self.targets[ks], self.segment_ids[ks]
    first = np.ones(segments.shape, bool)  # [n, target_len]: an example's first target
    first[:, 1:] = segments[:, 1:] != segments[:, :-1]
    shifted = np.zeros_like(targets)
    shifted[:, 1:] = targets[:, :-1]
    return {
      "encoder_inputs": self.encoder_tokens[ks],
      "encoder_positions": self.encoder_positions[ks],
      "encoder_segment_ids": self.encoder_segment_ids[ks],
      "inputs": np.where(first, DECODER_START_ID, shifted).astype(np.int32),
      "targets": targets,
      "positions": self.positions[ks],
      "segment_ids": segments,
      "weights": (segments > 0).astype(np.float32),
    }

  def padding_row(self) -> dict[str, np.ndarray]:
    """A row that contributes nothing: zero tokens, weight 0. All one segment (not 0), so that
    no query of it has nothing to attend to."""
    row = {name: np.zeros_like(value) for name, value in self[0].items()}
    for side, length in (("encoder_", self.seq_len), ("", self.target_len)):
      row[side + "segment_ids"] = np.ones(length, np.int32)
      row[side + "positions"] = np.arange(length, dtype=np.int32)
    return row


def _rows_of(examples: Sequence[tuple[list[int], list[int]]], seq_len: int,
             target_len: int) -> list[list[int]]:
  """Example indices of each row: greedy, in order, while both sides have room."""
  rows: list[list[int]] = []
  used = (seq_len, target_len)  # a full row: the first example opens one
  for i, (source, target) in enumerate(examples):
    if used[0] + len(source) > seq_len or used[1] + len(target) > target_len:
      rows.append([])
      used = (0, 0)
    rows[-1].append(i)
    used = (used[0] + len(source), used[1] + len(target))
  return rows


def _side(pieces: list[list[list[int]]], length: int) -> tuple[np.ndarray, ...]:
  """Tokens, segment ids and positions [num_rows, length] of each row's pieces, left to right."""
  tokens = np.zeros((len(pieces), length), np.int32)
  segments, positions = np.zeros_like(tokens), np.zeros_like(tokens)
  for r, row in enumerate(pieces):
    start = 0
    for segment, piece in enumerate(row, start=1):
      end = start + len(piece)
      tokens[r, start:end] = piece
      segments[r, start:end] = segment
      positions[r, start:end] = np.arange(len(piece))
      start = end
  return tokens, segments, positions


def pack_seq2seq(token_pairs: Sequence[tuple[list[int], list[int]]], eos_id: int, seq_len: int,
                 target_len: int, truncate: str, split_name: str = "data") -> PackedSeq2Seq:
  """Packs tokenized (source, target) pairs into encoder / decoder rows (see the module doc)."""
  if truncate not in TRUNCATE_MODES:
    raise UserError(f"data.truncate={truncate!r} does not apply to seq2seq data; set it to one "
                    f"of {', '.join(TRUNCATE_MODES)}")
  if seq_len < 2 or target_len < 2:
    raise UserError(f"data.seq_len={seq_len} / data.target_len={target_len} leave no room for "
                    "a token and its EOS; set both to at least 2")
  examples, truncated, dropped = [], 0, 0
  for source, target in token_pairs:
    fitted = fit_example(source, target, eos_id, seq_len, target_len, truncate)
    if fitted is None:
      dropped += 1
      continue
    truncated += len(fitted[0]) <= len(source) or len(fitted[1]) <= len(target)
    examples.append(fitted)
  if not examples:
    raise UserError(f"no {split_name} record fits data.seq_len={seq_len} / data.target_len="
                    f"{target_len} ({dropped} dropped); raise them or use data.truncate=right")
  rows = _rows_of(examples, seq_len, target_len)
  encoder = _side([[examples[i][0] for i in row] for row in rows], seq_len)
  decoder = _side([[examples[i][1] for i in row] for row in rows], target_len)
  return PackedSeq2Seq(*encoder, *decoder, num_examples=len(examples), truncated=truncated,
                       dropped=dropped)


def pack_pair_split(pairs: Sequence[Pair], tokenizer, seq_len: int, target_len: int,
                    truncate: str, name: str, target_tokenizer=None) -> tuple[PackedSeq2Seq, float]:
  """Packed rows of `pairs` and the UTF-8 bytes of their targets per scored token; the targets
  are encoded with `target_tokenizer` (a separate vocabulary's; None: `tokenizer`), whose EOS is
  the same id (both are SentencePiece models, EOS 1)."""
  sources = tokenizer.encode_batch([p.source for p in pairs])
  targets = (target_tokenizer or tokenizer).encode_batch([p.target for p in pairs])
  packed = pack_seq2seq(list(zip(sources, targets)), tokenizer.eos_id, seq_len, target_len,
                        truncate, name)
  kept = [fit_example(s, t, tokenizer.eos_id, seq_len, target_len, truncate)
          for s, t in zip(sources, targets)]
  num_bytes = sum(len(p.target.encode("utf-8")) for p, fitted in zip(pairs, kept) if fitted)
  return packed, num_bytes / max(float((packed.segment_ids > 0).sum()), 1.0)
