"""Preparing a corpus once: read, clean, split, tokenise in worker processes, write token shards.

`prepare` reads data.source as training does (`sources.read_raw`, then `clean.iter_clean`), so the
splits and documents are the ones an in-memory run would use. It streams documents in corpus order
into chunks of about `shard_chars` characters, one shard each (shards.py); a chunk is tokenised in
pieces by worker processes (the documents go to them over a pipe, never to disk) and written by
this process, in order. A shard's
record holds the SHA-256 of its input text and the tokenizer, so a rerun after an interruption
keeps every finished shard whose input is unchanged and redoes the rest; files are written to a
temporary name and renamed. The manifest (manifest.py) is written last.
"""

from __future__ import annotations

import collections
import glob
import hashlib
import multiprocessing
import os
import queue
import sys
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tqdm

from jaxlm.data import manifest as manifest_lib
from jaxlm.data import shards
from jaxlm.data.clean import iter_clean
from jaxlm.data.dataset import TOKENIZER_FILE, DataConfig, make_tokenizer, sentinel_count
from jaxlm.data.sources import check_nonempty, read_raw
from jaxlm.data.tokenizer import Tokenizer, load_tokenizer, save_tokenizer, tokenizer_from_json
from jaxlm.errors import UserError

SPLITS = ("train", "val")

# Documents go to the workers in pieces of about this many characters, so that even one shard is
# tokenised by every worker.
PIECE_CHARS = 1_000_000

_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_json: dict, cores=None) -> None:
  """Loads the tokenizer; with `cores` (a queue of core ids) pins this worker to the next one, so
  that a tokenizer that spreads a batch over every core it may use (SentencePiece's threads,
  Hugging Face tokenizers' Rayon pool) runs one thread per worker instead of one per core each."""
  global _worker_tokenizer  # noqa: PLW0603  (one tokenizer per worker process)
  if cores is not None:
    try:
      os.sched_setaffinity(0, {cores.get(timeout=5)})
    except queue.Empty:  # a replacement worker finds the queue used up: it is left unpinned
      pass
  _worker_tokenizer = tokenizer_from_json(tokenizer_json)


def _tokenize(docs: list[str], dtype: str) -> tuple[np.ndarray, np.ndarray]:
  """A worker's job: the documents' tokens, flat, and their lengths (see shards.flatten)."""
  return shards.flatten(_worker_tokenizer.encode_batch(docs), np.dtype(dtype))


def check_preparable(c: DataConfig) -> None:
  if c.source in ("prepared", "task"):
    raise UserError(f"data.source={c.source} cannot be prepared; prepare raw text: "
                    "data.source=stdlib, files or tfds")
  if c.resolved_format != "text":
    raise UserError(f"prepare writes text documents, not {c.resolved_format} records; train "
                    "records from data.source=files directly")


def clean_splits(c: DataConfig) -> dict[str, Callable[[], Iterator[str]]]:
  """Each split's cleaned documents, as functions that stream them afresh (train's pass first:
  with data.dedup, val drops documents that train holds, as `load_corpus` does)."""
  raw = dict(zip(SPLITS, read_raw(c.source, c.path, c.text_field, c.val_fraction)))
  seen: dict[str, set[bytes]] = {}

  def stream(split: str) -> Iterator[str]:
    digests = set() if split == "train" else set(seen.get("train", set()))
    yield from iter_clean(raw[split], c.dedup, digests)
    seen[split] = digests
  return {split: (lambda split=split: stream(split)) for split in SPLITS}


def chunks(docs: Iterable[str], shard_chars: int) -> Iterator[list[str]]:
  """Consecutive documents in groups of at least `shard_chars` characters (the last one less)."""
  chunk, size = [], 0
  for doc in docs:
    chunk.append(doc)
    size += len(doc)
    if size >= shard_chars:
      yield chunk
      chunk, size = [], 0
  if chunk:
    yield chunk


def input_digest(docs: list[str], tokenizer_sha256: str) -> str:
  digest = hashlib.sha256(tokenizer_sha256.encode())
  for doc in docs:
    data = doc.encode("utf-8", "surrogatepass")
    digest.update(len(data).to_bytes(8, "little") + data)
  return digest.hexdigest()


def finished(prefix: str, digest: str, dtype) -> dict | None:
  """The record of shard `prefix` if a previous run finished it from the same input."""
  record = shards.read_record(prefix)
  if record is None or record.get("input_sha256") != digest:
    return None
  sizes = {".tokens": record["tokens"] * dtype.itemsize,
           ".docs": record["docs"] * shards.DOC_DTYPE.itemsize}
  ok = all(os.path.isfile(prefix + s) and os.path.getsize(prefix + s) == n
           for s, n in sizes.items())
  return record if ok else None


class Workers:
  """Tokenises shards in pieces over `count` processes (inline when 1) and writes them in order;
  at most two shards' pieces in flight, so memory stays bounded by about two shards of text."""

  def __init__(self, count: int, tokenizer: Tokenizer):
    self.pool = None
    if count > 1:
      context = multiprocessing.get_context("spawn")  # no fork of a process that started JAX
      cores = context.Queue()
      allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
      for worker in range(count):  # more workers than cores share them in turn
        cores.put(allowed[worker % len(allowed)] if allowed else None)
      self.pool = context.Pool(count, _init_worker, (tokenizer.to_json(), cores if allowed
                                                     else None))
    else:
      _init_worker(tokenizer.to_json())
    self.eos_id, self.dtype = tokenizer.eos_id, shards.token_dtype(tokenizer.vocab_size)
    self.pending: collections.deque = collections.deque()

  def submit(self, prefix: str, docs: list[str] | None, extra: dict,
             done: dict | None) -> Iterator[dict]:
    """Queues one shard (`done`: its record, if already finished); yields the records of the
    shards now written."""
    if done is not None:
      self.pending.append(done)
    else:
      pieces = [(piece, self.dtype.str) for piece in chunks(docs, PIECE_CHARS)]
      jobs = ([_tokenize(*args) for args in pieces] if self.pool is None else
              [self.pool.apply_async(_tokenize, args) for args in pieces])
      self.pending.append((prefix, jobs, extra))
    while len(self.pending) > 2:
      yield self._pop()

  def drain(self) -> Iterator[dict]:
    while self.pending:
      yield self._pop()

  def _pop(self) -> dict:
    item = self.pending.popleft()
    if isinstance(item, dict):
      return item
    prefix, jobs, extra = item
    pieces = [job if isinstance(job, tuple) else job.get() for job in jobs]
    return shards.write_shard(prefix, pieces, self.eos_id, self.dtype, extra)

  def close(self) -> None:
    if self.pool is not None:
      self.pool.terminate()
      self.pool.join()


def write_split(out: str, split: str, docs: Iterable[str], tokenizer: Tokenizer,
                tokenizer_sha256: str, workers: Workers, shard_chars: int, progress) -> dict:
  """Writes (or keeps) the shards of one split; returns its manifest entry."""
  os.makedirs(os.path.join(out, split), exist_ok=True)
  dtype = shards.token_dtype(tokenizer.vocab_size)
  records, text_digest, num_bytes, kept = [], hashlib.sha256(), 0, 0

  def collect(new: Iterable[dict]) -> None:
    for record in new:
      records.append(record)
      progress.update(record["chars"])

  for index, chunk in enumerate(chunks(docs, shard_chars)):
    name = f"{split}/{index:05d}"
    prefix = os.path.join(out, name)
    digest = input_digest(chunk, tokenizer_sha256)
    for doc in chunk:
      data = doc.encode("utf-8", "surrogatepass")
      text_digest.update(len(data).to_bytes(8, "little") + data)
      num_bytes += len(data)
    extra = {"name": name, "input_sha256": digest, "chars": sum(len(d) for d in chunk)}
    done = finished(prefix, digest, dtype)
    kept += done is not None
    collect(workers.submit(prefix, chunk, extra, done))
  collect(workers.drain())
  return {"docs": sum(r["docs"] for r in records), "tokens": sum(r["tokens"] for r in records),
          "bytes": num_bytes, "text_sha256": text_digest.hexdigest(), "kept_shards": kept,
          "shards": [{k: r[k] for k in ("name", "docs", "tokens", "tokens_sha256", "docs_sha256")}
                     for r in records]}


def prepared_tokenizer(c: DataConfig, out: str, train_docs: Callable[[], Iterator[str]],
                       encdec: bool):
  """OUT/tokenizer.json if an interrupted run left one, else data.tokenizer_file's or one trained
  on the bounded sample of the training documents (with sentinels for an `encdec` config, as
  its training run would train it); saved."""
  path = os.path.join(out, TOKENIZER_FILE)
  if os.path.exists(path):
    return load_tokenizer(path)
  tokenizer = make_tokenizer(c, train_docs(), encdec)
  save_tokenizer(tokenizer, path)
  return tokenizer


def prepare(c: DataConfig, out: str, workers: int, shard_chars: int,
            log: Callable[[str], None], encdec: bool = False) -> dict:
  """Prepares the corpus of `c` into `out` (resuming what a previous run there left); returns the
  manifest. `encdec`: for an encoder-decoder (model.family=encdec), whose tokenizer has sentinels."""
  check_preparable(c)
  if shard_chars < 1:
    raise UserError(f"--shard_mb must be positive (got {shard_chars} characters per shard)")
  settings = {**manifest_lib.settings_of(c, sentinel_count(c, encdec)),
              "shard_chars": shard_chars}
  manifest_lib.claim(out, settings)
  for stale in glob.glob(os.path.join(glob.escape(out), "*", "*.tmp*")):
    os.remove(stale)  # a write that an interruption cut short
  splits = clean_splits(c)
  tokenizer = prepared_tokenizer(c, out, splits["train"], encdec)
  tokenizer_sha256 = shards.sha256_file(os.path.join(out, TOKENIZER_FILE))
  log(f"prepare: {tokenizer.kind} tokenizer of {tokenizer.vocab_size} ids "
      f"({manifest_lib.sentinels_of(tokenizer)} sentinels); tokenising in "
      f"{workers} worker process{'es' if workers > 1 else ''}")
  pool = Workers(workers, tokenizer)
  entries = {}
  try:
    for split in SPLITS:
      with tqdm.tqdm(desc=f"prepare {split}", unit="char", unit_scale=True, file=sys.stderr,
                     dynamic_ncols=True) as progress:
        entries[split] = write_split(out, split, splits[split](), tokenizer, tokenizer_sha256,
                                     pool, shard_chars, progress)
  finally:
    pool.close()
  check_nonempty(c.source, c.path, entries["train"]["docs"], entries["val"]["docs"])
  for split, entry in entries.items():
    log(f"prepare: {split} {entry['docs']:,} documents, {entry['tokens']:,} tokens in "
        f"{len(entry['shards'])} shards ({entry.pop('kept_shards')} kept from an earlier run)")
  return manifest_lib.write(out, settings, tokenizer, tokenizer_sha256, entries)
