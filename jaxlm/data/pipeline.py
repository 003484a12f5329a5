"""From documents to batches: tokenization, shuffled training batches (grain)
and ordered, padded evaluation batches."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import grain
import numpy as np

from jaxlm.data.packing import PackedTokens
from jaxlm.data.shards import ShardedTokens
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.errors import UserError

# Batches are cheap to build (slices of one array), so a few threads and a
# short buffer suffice; grain's defaults (16 threads, 500 elements) would hold
# hundreds of batches in memory.
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)


def tokenize_corpus(corpus_docs: Sequence[str], tok: Tokenizer) -> list[list[int]]:
  """Token ids of each document (no EOS; packing adds it)."""
  return tok.encode_batch(list(corpus_docs))


def _check_processes(process_index: int, process_count: int) -> None:
  if not 0 <= process_index < process_count:
    raise UserError(f"process_index={process_index} must be in [0, process_count={process_count})")


def check_batch_split(global_batch: int, seed: int, process_index: int,
                      process_count: int) -> None:
  """The global batch must split evenly over the processes, the seed fit grain's shuffle."""
  _check_processes(process_index, process_count)
  if global_batch < 1 or global_batch % process_count:
    raise UserError(
      f"global batch size {global_batch} must be a positive multiple of the process count "
      f"{process_count}; "
      "change the batch size"
    )
  if not 0 <= seed < 2**32:
    raise UserError(f"seed={seed} must be in [0, 2**32) for shuffling")


def train_batches(
  packed: PackedTokens | ShardedTokens, global_batch: int, seed: int, process_index: int,
  process_count: int
) -> grain.IterDataset:
  """Endless batches of this process's rows, each field
  [global_batch // process_count, seq_len]. The global order is one seeded
  shuffle of all windows, a new permutation every epoch (grain reseeds the
  shuffle per epoch), cut into global batches that run across epoch
  boundaries; process p gets rows [p * local, (p + 1) * local) of each global
  batch and reads only those windows. So the global batches do not depend on
  the process count, and all processes share one iterator position.
  `iter(ds)` has get_state()/set_state() for checkpoints."""
  check_batch_split(global_batch, seed, process_index, process_count)
  num_windows = packed.num_full_windows  # a partial last window is for evaluation only
  if num_windows < global_batch:
    raise UserError(
      f"the training split has {num_windows} windows, fewer than one batch of {global_batch}; "
      "use a smaller batch size or data.seq_len, or more data"
    )
  local_batch = global_batch // process_count
  # Global batch b is local batches b * process_count ... b * process_count + process_count - 1
  # in order; map-style batching reads only the windows of the local batches this process takes.
  # Grain shuffles and batches window *indices*; each batch is then one vectorised gather, several
  # times cheaper than stacking per-window examples (host time competes with a CPU step).
  windows = grain.MapDataset.range(num_windows)
  local_batches = windows.shuffle(seed=seed).repeat(None).batch(local_batch)
  mine = local_batches[process_index::process_count].map(packed.rows)
  return mine.to_iter_dataset(_READ_OPTIONS)


def _padding_example(seq_len: int) -> dict[str, np.ndarray]:
  """A row that contributes nothing: zero tokens, one segment, weight 0."""
  return {
    "inputs": np.zeros(seq_len, dtype=np.int32),
    "targets": np.zeros(seq_len, dtype=np.int32),
    "segment_ids": np.ones(seq_len, dtype=np.int32),
    "positions": np.arange(seq_len, dtype=np.int32),
    "weights": np.zeros(seq_len, dtype=np.float32),
    "token_types": np.zeros(seq_len, dtype=np.int32),
  }


def _padded(example: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
  """`example` (the partial last window: fewer than seq_len targets) padded to seq_len with weight
  0. The padding is a segment of its own after the last real one; real tokens never see it anyway,
  since attention is causal."""
  length = len(example["targets"])
  if length == seq_len:
    return example
  padding = _padding_example(seq_len - length)
  padding["segment_ids"] += example["segment_ids"][-1]
  return {name: np.concatenate([example[name], padding[name]]) for name in padding}


def eval_batches(
  packed: PackedTokens,
  batch_size: int,
  process_index: int,
  process_count: int,
  max_batches: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Batches (each field [batch_size, seq_len]) of this process's share of
  windows in order, each window exactly once, so that every target is scored
  once: a PackedTokens' partial last window is padded with weight 0. Rows past
  the end are padding with weight 0. Every process yields the same number of
  batches (that of the largest share), so multi-host evaluation steps stay in
  lockstep. "window" [batch_size] int32 numbers each row's window (-1 for
  padding): evaluation keys its masked-LM masks by it, so a window is masked
  alike whichever batch, row or process it lands in."""
  _check_processes(process_index, process_count)
  if batch_size < 1:
    raise UserError(f"eval batch size {batch_size} must be at least 1")
  share = range(process_index, len(packed), process_count)
  num_batches = math.ceil(math.ceil(len(packed) / process_count) / batch_size)
  if max_batches is not None:
    num_batches = min(num_batches, max_batches)
  # Seq2seq rows (encoder and decoder fields of two lengths) bring their own padding row.
  padding = packed.padding_row() if hasattr(packed, "padding_row") else _padding_example(
    packed.seq_len)
  for b in range(num_batches):
    ks = share[b * batch_size : (b + 1) * batch_size]
    rows = [packed[k] if k < packed.num_full_windows else _padded(packed[k], packed.seq_len)
            for k in ks]
    windows = np.full(batch_size, -1, np.int32)  # [batch_size]
    windows[: len(rows)] = ks
    rows += [padding] * (batch_size - len(rows))
    yield {**{name: np.stack([row[name] for row in rows]) for name in padding}, "window": windows}
