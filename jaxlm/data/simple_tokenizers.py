"""Tokenizers that need no trained model: UTF-8 bytes and characters."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class _EncodeEach:
  """encode_batch for tokenizers with no faster batch path."""

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [self.encode(t) for t in texts]  # type: ignore[attr-defined]


class ByteTokenizer(_EncodeEach):
  """Ids 0..255 are UTF-8 bytes; 256 is EOS. Any text round-trips."""

  kind = "byte"
  eos_id = 256
  vocab_size = 257

  def encode(self, text: str) -> list[int]:
    return list(text.encode("utf-8"))

  def decode(self, ids: Sequence[int]) -> str:
    # A model can emit a byte sequence that is not valid UTF-8.
    return bytes(i for i in ids if i != self.eos_id).decode("utf-8", errors="replace")

  def to_json(self) -> dict:
    return {"kind": self.kind}


class CharTokenizer(_EncodeEach):
  """One id per character seen in training (sorted by code point), then EOS,
  then <unk> for characters never seen (decoded as U+FFFD)."""

  kind = "char"

  def __init__(self, chars: Sequence[str]):
    if sorted(set(chars)) != list(chars) or any(len(c) != 1 for c in chars):
      raise ValueError("chars must be distinct single characters in sorted order")
    self.chars = list(chars)
    self.eos_id = len(self.chars)
    self.unk_id = len(self.chars) + 1
    self.vocab_size = len(self.chars) + 2
    # Sorted code points plus a sentinel above every code point, so that
    # searchsorted always lands on a valid index.
    self._codes = np.array(
      [ord(c) for c in self.chars] + [0xFFFFFFFF], dtype=np.uint32
    )  # [num_chars + 1]

  @classmethod
  def train(cls, texts: Sequence[str]) -> CharTokenizer:
    seen: set[str] = set()
    for text in texts:
      seen.update(text)
    return cls(sorted(seen))

  def encode(self, text: str) -> list[int]:
    # Vectorised lookup: a Python dict lookup per character is several
    # times slower on a corpus of millions of characters.
    codes = np.frombuffer(
      text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32
    )  # [len(text)]
    pos = np.searchsorted(self._codes, codes)  # [len(text)]
    return np.where(self._codes[pos] == codes, pos, self.unk_id).tolist()

  def decode(self, ids: Sequence[int]) -> str:
    return "".join(self.chars[i] if i < self.eos_id else "\ufffd" for i in ids if i != self.eos_id)

  def to_json(self) -> dict:
    return {"kind": self.kind, "chars": "".join(self.chars)}
