"""The bounded, seeded sample of training text a tokenizer learns from (tokenizer_sample_chars).

Each document gets a key from a stable hash of (seed, its index); the sample is the documents of the
smallest keys that fit the budget, kept in corpus order. One pass, memory bounded by the budget,
the same sample on every machine; a corpus within the budget is taken whole, in order, so small
corpora train the same tokenizer as before the option existed.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Iterable


def _key(seed: int, index: int) -> int:
  return int.from_bytes(hashlib.sha1(f"{seed}:{index}".encode()).digest()[:8], "big")


def sample_documents(docs: Iterable[str], max_chars: int, seed: int) -> list[str]:
  """The documents of `docs` a tokenizer trains on: all of them if `max_chars` is 0 or they fit
  in it, else a seeded sample of at most `max_chars` characters (a document longer than the
  whole budget contributes its first `max_chars`)."""
  heap: list[tuple[int, int, str]] = []  # (-key, index, text): the largest key on top
  total = 0
  for index, doc in enumerate(docs):
    if max_chars:
      doc = doc[:max_chars]
    heapq.heappush(heap, (-_key(seed, index), index, doc))
    total += len(doc)
    while max_chars and total > max_chars and len(heap) > 1:
      total -= len(heapq.heappop(heap)[2])
  return [doc for _, _, doc in sorted(heap, key=lambda item: item[1])]
