"""Token shards on disk: flat token arrays that `np.memmap` maps, with an index of document starts.

A split (train or val) is a sequence of shards; its token stream is their concatenation, in order,
exactly the stream `packing.pack_documents` builds in memory: `[eos_id] + tokens` per document.
Each shard NAME is three files:
  NAME.tokens  the shard's stream, little-endian uint16 (vocabularies up to 65,536) or uint32
  NAME.docs    little-endian int64 [num_docs]: where each document starts in NAME.tokens
  NAME.json    its counts and SHA-256s, written last: a shard without it is unfinished
Windows are read straight from the mapped files (and the pages a read mapped are unmapped again),
so memory and start-up do not grow with the corpus: only the O(shards) table of where each shard
starts is held.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import mmap
import os
from collections.abc import Sequence

import numpy as np

from jaxlm.data.packing import PackedTokens
from jaxlm.errors import UserError

DOC_DTYPE = np.dtype("<i8")


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def sha256_file(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def write_atomic(path: str, data: bytes) -> None:
  """Writes `data` to a temporary file beside `path`, then renames it: never a partial file."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def flatten(token_docs: Sequence[Sequence[int]],
            dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
  """Token lists as one flat array [total] of `dtype` and their lengths [num_docs] int64."""
  lengths = np.array([len(doc) for doc in token_docs], dtype=np.int64)
  flat = np.fromiter(itertools.chain.from_iterable(token_docs), dtype=np.int64,
                     count=int(lengths.sum()))
  return flat.astype(dtype), lengths


def write_shard(prefix: str, pieces: Sequence[tuple[np.ndarray, np.ndarray]], eos_id: int,
                dtype: np.dtype, extra: dict) -> dict:
  """Writes the shard `prefix`.{tokens,docs,json} of the documents in `pieces` (`flatten`'s
  (tokens, lengths), in order), each packed as [EOS] + tokens; returns its record (also the
  content of the .json, with `extra` merged in)."""
  lengths = np.concatenate([piece_lengths for _, piece_lengths in pieces]) + 1  # [num_docs]
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(DOC_DTYPE)  # [num_docs]
  stream = np.empty(int(lengths.sum()), dtype=dtype)  # [num_tokens]
  is_eos = np.zeros(len(stream), dtype=bool)
  is_eos[starts] = True
  stream[is_eos] = eos_id
  stream[~is_eos] = np.concatenate([tokens for tokens, _ in pieces])
  write_atomic(prefix + ".tokens", stream.tobytes())
  write_atomic(prefix + ".docs", starts.tobytes())
  record = {"docs": len(lengths), "tokens": int(lengths.sum()),
            "tokens_sha256": hashlib.sha256(stream.tobytes()).hexdigest(),
            "docs_sha256": hashlib.sha256(starts.tobytes()).hexdigest(), **extra}
  write_atomic(prefix + ".json", json.dumps(record, sort_keys=True).encode())
  return record


def read_record(prefix: str) -> dict | None:
  """A finished shard's record, or None if it is unfinished (no readable .json)."""
  try:
    with open(prefix + ".json", encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


@dataclasses.dataclass(frozen=True, eq=False)
class ShardedTokens:
  """A split's stream in shards, cut into windows as `PackedTokens` cuts its stream (the same
  fields, segment ids and positions), read from the mapped files on access."""

  tokens: tuple[np.ndarray, ...]  # per shard: memmap [shard_tokens]
  doc_starts: tuple[np.ndarray, ...]  # per shard: memmap [shard_docs] int64
  token_base: np.ndarray  # [num_shards + 1] int64: where each shard starts in the stream
  doc_base: np.ndarray  # [num_shards] int64: the split's index of each shard's first document
  seq_len: int

  @classmethod
  def open(cls, directory: str, shards: Sequence[dict], dtype: np.dtype, seq_len: int,
           where: str) -> "ShardedTokens":
    """Maps the shards listed in a manifest (records with name, docs, tokens), checking that every
    file is there with the size the manifest gives; `where` names the split in errors."""
    tokens, starts = [], []
    for shard in shards:
      prefix = os.path.join(directory, shard["name"])
      for suffix, size in ((".tokens", shard["tokens"] * dtype.itemsize),
                           (".docs", shard["docs"] * DOC_DTYPE.itemsize)):
        path = prefix + suffix
        if not os.path.isfile(path):
          raise UserError(f"shard {path} of {where} is missing; rerun `python -m jaxlm.prepare` "
                          "with the same --out to rebuild it")
        if os.path.getsize(path) != size:
          raise UserError(f"shard {path} of {where} has {os.path.getsize(path)} bytes, not the "
                          f"{size} its manifest gives (truncated or replaced); rerun "
                          "`python -m jaxlm.prepare` with the same --out to rebuild it")
      tokens.append(np.memmap(prefix + ".tokens", dtype=dtype, mode="r"))
      starts.append(np.memmap(prefix + ".docs", dtype=DOC_DTYPE, mode="r"))
    counts = np.array([s["tokens"] for s in shards], dtype=np.int64)
    docs = np.array([s["docs"] for s in shards], dtype=np.int64)
    token_base = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    doc_base = np.concatenate([[0], np.cumsum(docs)[:-1]]).astype(np.int64)
    return cls(tuple(tokens), tuple(starts), token_base, doc_base, seq_len)

  @property
  def num_tokens(self) -> int:
    return int(self.token_base[-1])

  @property
  def num_targets(self) -> int:
    return max(0, self.num_tokens - 1)

  # The window arithmetic is PackedTokens' (from num_targets and seq_len): only reading differs.
  num_full_windows = PackedTokens.num_full_windows
  __len__ = PackedTokens.__len__

  def span(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Stream tokens [start, start + length) as int32 and the split index of each one's
    document, read from every shard the span crosses."""
    tokens, docs = [], []
    shard = int(np.searchsorted(self.token_base, start, side="right")) - 1
    end = start + length
    while start < end:
      base, stop = self.token_base[shard], min(end, self.token_base[shard + 1])
      local = np.arange(start - base, stop - base)  # [piece]
      tokens.append(np.asarray(self.tokens[shard][start - base : stop - base], dtype=np.int32))
      docs.append(np.searchsorted(self.doc_starts[shard], local, side="right") - 1 +
                  self.doc_base[shard])
      start, shard = int(stop), shard + 1
    return np.concatenate(tokens), np.concatenate(docs)

  def rows(self, ks: np.ndarray) -> dict[str, np.ndarray]:
    """Full windows `ks  # [n]`, each field [n, seq_len], as PackedTokens.rows: one gather per
    shard for the windows inside it, `span` for the few that cross a shard boundary."""
    length = self.seq_len + 1
    starts = np.asarray(ks, dtype=np.int64) * self.seq_len  # [n]
    first = np.searchsorted(self.token_base, starts, side="right") - 1  # [n] shard of each start
    last = np.searchsorted(self.token_base, starts + length - 1, side="right") - 1  # [n]
    window = np.empty((len(starts), length), np.int32)  # [n, seq_len + 1]
    docs = np.empty((len(starts), length), np.int64)  # [n, seq_len + 1]
    for shard in np.unique(first[first == last]):
      at = np.flatnonzero((first == shard) & (last == shard))
      local = starts[at, None] - self.token_base[shard] + np.arange(length)  # [m, seq_len + 1]
      window[at] = self.tokens[shard][local]
      docs[at] = (np.searchsorted(self.doc_starts[shard], local, side="right") - 1 +
                  self.doc_base[shard])
    for i in np.flatnonzero(first != last):
      window[i], docs[i] = self.span(int(starts[i]), length)
    self.release(np.unique(np.concatenate([first, last])))
    return PackedTokens._fields(window, docs[:, :-1])  # noqa: SLF001  (the fields' one definition)

  def release(self, shards: np.ndarray) -> None:
    """Unmaps the pages that reads of `shards` mapped (they stay in the page cache). The kernel
    maps about 100 KB around each random read, all counted in this process's RSS: without this,
    RSS would creep towards the size of the shards over a run."""
    for shard in shards:
      for array in (self.tokens[shard], self.doc_starts[shard]):
        mapping = getattr(array, "_mmap", None)
        if mapping is not None:
          mapping.madvise(mmap.MADV_DONTNEED)

  def __getitem__(self, k: int) -> dict[str, np.ndarray]:
    """Window k, the partial last one shorter, as PackedTokens[k]."""
    k = int(k)
    if not 0 <= k < len(self):
      raise IndexError(f"window {k} out of range for {len(self)} windows")
    start = k * self.seq_len
    tokens, docs = self.span(start, min(self.seq_len + 1, self.num_tokens - start))
    self.release(np.unique(np.searchsorted(self.token_base, [start, start + len(tokens) - 1],
                                           side="right") - 1))
    fields = PackedTokens._fields(tokens[None], docs[None, :-1])  # noqa: SLF001
    return {name: field[0] for name, field in fields.items()}
