"""Deterministic train/validation splits.

All splits depend only on names and positions, never on a random state, so
the same data gives the same split on every machine and every run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

from jaxlm.errors import UserError

T = TypeVar("T")


def check_val_fraction(val_fraction: float) -> None:
  if not 0.0 < val_fraction < 1.0:
    raise UserError(
      f"data.val_fraction={val_fraction} must be between 0 and 1 (exclusive); e.g. --config.data.val_fraction=0.1"
    )


def num_val_items(n: int, val_fraction: float) -> int:
  """How many of `n` items go to validation: round(val_fraction * n), at
  least 1, and (when n > 1) at most n - 1 so that train is never empty."""
  k = max(1, round(val_fraction * n))
  return min(k, n - 1) if n > 1 else k


def stable_hash(key: str) -> str:
  """A hash that is the same in every process (unlike the builtin hash)."""
  return hashlib.sha1(key.encode("utf-8")).hexdigest()


def hash_fraction(key: str) -> float:
  """Where `key` falls in hash space, uniformly in [0, 1): a share of all possible keys below a
  fixed threshold picks a fixed set, whatever other keys exist."""
  return int(stable_hash(key), 16) / 16**40  # sha1: 40 hex digits


def split_by_hash(keys: Sequence[str], val_fraction: float) -> tuple[list[int], list[int]]:
  """Splits items named by `keys` (e.g. relative file paths): the items with
  the smallest hashes go to validation. Returns (train, val) index lists, each
  in the original order. Unlike a seeded shuffle, adding one file moves at
  most one existing file to the other side."""
  by_hash = sorted(range(len(keys)), key=lambda i: (stable_hash(keys[i]), keys[i]))
  val = set(by_hash[: num_val_items(len(keys), val_fraction)])
  train_idx = [i for i in range(len(keys)) if i not in val]
  val_idx = [i for i in range(len(keys)) if i in val]
  return train_idx, val_idx


def split_tail(items: Sequence[T], val_fraction: float) -> tuple[list[T], list[T]]:
  """The last val_fraction of `items` (at least one) is validation."""
  k = num_val_items(len(items), val_fraction)
  return list(items[: len(items) - k]), list(items[len(items) - k :])


def split_text(text: str, val_fraction: float) -> tuple[str, str]:
  """Splits one text by characters exactly as nanoGPT does: the first
  int(n * (1 - val_fraction)) characters are train, the rest validation."""
  cut = int(len(text) * (1 - val_fraction))
  return text[:cut], text[cut:]
