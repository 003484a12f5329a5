"""Packing tokenized documents into fixed-length training windows.

Each document becomes `[eos_id] + tokens` (EOS marks a document start, acting
as both separator and BOS) and all documents are concatenated into one stream.
Window k is stream[k * seq_len : k * seq_len + seq_len + 1]: consecutive
windows overlap by one token, so every stream token except the first is a
target exactly once. The last window is partial (fewer than seq_len targets)
unless seq_len divides the targets: evaluation scores it (padded, see
pipeline.eval_batches) while training draws only from the full windows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from jaxlm.errors import UserError


def segment_positions(segment_ids: np.ndarray) -> np.ndarray:
  """Index of each token within its run of equal segment ids, along the last axis."""
  length = segment_ids.shape[-1]
  index = np.broadcast_to(np.arange(length, dtype=np.int32), segment_ids.shape)  # [..., seq_len]
  is_start = np.ones(segment_ids.shape, dtype=bool)  # [..., seq_len]
  is_start[..., 1:] = segment_ids[..., 1:] != segment_ids[..., :-1]
  segment_start = np.maximum.accumulate(np.where(is_start, index, 0), axis=-1)  # [..., seq_len]
  return index - segment_start


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous
class PackedTokens:
  """A token stream cut into windows; examples are computed on access so
  that only the stream is held in memory."""

  stream: np.ndarray  # [num_tokens] int32
  doc_ids: np.ndarray  # [num_tokens] int32, document index of each stream token
  seq_len: int

  @property
  def num_targets(self) -> int:
    """Tokens predicted over all windows: every stream token but the first."""
    return max(0, len(self.stream) - 1)

  @property
  def num_full_windows(self) -> int:
    """Windows of seq_len targets: the ones training draws from."""
    return self.num_targets // self.seq_len

  def __len__(self) -> int:
    """Windows covering every target once: the full ones, then a partial one if any is left."""
    return (self.num_targets + self.seq_len - 1) // self.seq_len  # ceil

  def __getitem__(self, k: int) -> dict[str, np.ndarray]:
    """Window k: inputs, targets, segment_ids, positions, weights and token_types (all 0: one
    sentence), each [seq_len], or shorter for the partial last window (never padded here: padding
    is the batcher's business)."""
    k = int(k)
    if not 0 <= k < len(self):
      raise IndexError(f"window {k} out of range for {len(self)} windows")
    if k < self.num_full_windows:
      return {name: field[0] for name, field in self.rows(np.array([k])).items()}
    start = k * self.seq_len
    return {name: field[0] for name, field in
            self._fields(self.stream[None, start:], self.doc_ids[None, start:-1]).items()}

  def rows(self, ks: np.ndarray) -> dict[str, np.ndarray]:
    """Full windows `ks  # [n]` at once (a batch in one gather), each field [n, seq_len]."""
    starts = np.asarray(ks, dtype=np.int64)[:, None] * self.seq_len  # [n, 1]
    window = self.stream[starts + np.arange(self.seq_len + 1)]  # [n, seq_len + 1]
    docs = self.doc_ids[starts + np.arange(self.seq_len)]  # [n, seq_len], of the inputs
    return self._fields(window, docs)

  @staticmethod
  def _fields(window: np.ndarray, docs: np.ndarray) -> dict[str, np.ndarray]:
    """Example fields of token windows `[n, length + 1]` whose inputs' documents are `docs`."""
    # Document ids increase by one at each document start (every document
    # has at least its EOS), so an offset renumbers them 1, 2, 3, ...
    segment_ids = (docs - docs[:, :1] + 1).astype(np.int32)  # [n, length]
    return {
      "inputs": window[:, :-1],
      "targets": window[:, 1:],
      "segment_ids": segment_ids,
      "positions": segment_positions(segment_ids),
      "weights": np.ones(segment_ids.shape, dtype=np.float32),
      "token_types": np.zeros(segment_ids.shape, dtype=np.int32),  # text is all sentence A
    }


def pack_documents(
  token_docs: Iterable[Sequence[int]], eos_id: int, seq_len: int, *, split_name: str = "data"
) -> PackedTokens:
  """Concatenates `[eos_id] + doc` for each document; `split_name` only names
  the split in the error raised when there is not a single full window."""
  if seq_len < 1:
    raise UserError(f"data.seq_len={seq_len} must be at least 1")
  pieces, lengths = [], []
  for doc in token_docs:
    tokens = np.asarray(doc, dtype=np.int32)  # [doc_len]
    pieces += [np.array([eos_id], dtype=np.int32), tokens]
    lengths.append(len(tokens) + 1)
  stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)  # [num_tokens]
  doc_ids = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)  # [num_tokens]
  packed = PackedTokens(stream=stream, doc_ids=doc_ids, seq_len=seq_len)
  if packed.num_full_windows == 0:
    raise UserError(
      f"{split_name} split has {len(stream)} tokens, fewer than seq_len+1={seq_len + 1}; "
      "use a smaller data.seq_len or more data"
    )
  return packed
