"""The tokenizer interface, training by kind, and JSON persistence (no pickle)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from typing import Protocol

from jaxlm.data.gpt2_tokenizer import Gpt2BpeTokenizer
from jaxlm.data.hf_tokenizer import HfTokenizer
from jaxlm.data.simple_tokenizers import ByteTokenizer, CharTokenizer
from jaxlm.data.sp_tokenizer import SentencePieceTokenizer
from jaxlm.data.wordpiece_tokenizer import WordPieceTokenizer
from jaxlm.errors import UserError

KINDS = ("sentencepiece", "char", "byte", "gpt2_bpe", "wordpiece", "hf")


class Tokenizer(Protocol):
  kind: str  # "sentencepiece" | "char" | "byte" | "gpt2_bpe" | "wordpiece"
  vocab_size: int  # includes EOS (and <unk> for char)
  eos_id: int  # starts every packed document; [CLS] for wordpiece
  # sentencepiece only: `sentinel_ids`, the ids of <extra_id_0>, ... (span corruption's; () when
  # trained without them).

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`; no EOS is added."""

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """encode() of each text, possibly faster."""

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`; EOS ids are dropped."""

  def to_json(self) -> dict:
    """A JSON-serialisable dict that fully describes the tokenizer."""


def train_tokenizer(
  kind: str, texts: Sequence[str], vocab_size: int, sp_model_type: str = "bpe",
  num_sentinels: int = 0
) -> Tokenizer:
  """Builds a tokenizer of `kind` from training `texts`. `vocab_size` is only
  used by sentencepiece, gpt2_bpe and wordpiece: byte and char vocabularies are fixed by their
  data. `num_sentinels` (an encdec run's span-corruption sentinels) is for sentencepiece only;
  the other kinds have none (span corruption then refuses them: `span_corruption_for`)."""
  if kind == "byte":
    return ByteTokenizer()
  if kind == "char":
    return CharTokenizer.train(texts)
  if kind == "sentencepiece":
    return SentencePieceTokenizer.train(texts, vocab_size, sp_model_type, num_sentinels)
  if kind == "gpt2_bpe":
    return Gpt2BpeTokenizer.train(texts, vocab_size)
  if kind == "wordpiece":
    return WordPieceTokenizer.train(texts, vocab_size)
  if kind == "hf":
    raise UserError("data.tokenizer='hf' is a Hugging Face model's own tokenizer, which comes "
                    "with the model from `python -m jaxlm.convert from-hf`; finetune that run "
                    "with --config.init_from, or choose another data.tokenizer")
  raise UserError(f"unknown data.tokenizer={kind!r}; choose one of {', '.join(KINDS)}")


def tokenizer_from_json(state: dict) -> Tokenizer:
  """Inverse of `Tokenizer.to_json`."""
  kind = state.get("kind") if isinstance(state, dict) else None
  if kind == "byte":
    return ByteTokenizer()
  if kind == "char":
    return CharTokenizer(list(state["chars"]))
  if kind == "sentencepiece":
    return SentencePieceTokenizer.from_json(state)
  if kind == "gpt2_bpe":
    return Gpt2BpeTokenizer.from_json(state)
  if kind == "wordpiece":
    return WordPieceTokenizer.from_json(state)
  if kind == "hf":  # a Hugging Face model's tokenizer.json, imported with it (never trained here)
    return HfTokenizer.from_json(state)
  raise UserError(
    f"unknown tokenizer kind {kind!r} in saved tokenizer; expected one of {', '.join(KINDS)}"
  )


def save_tokenizer(tok: Tokenizer, path: str) -> None:
  """Writes `tok` as JSON, atomically: a crash never leaves a partial file."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tokenizer-", suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(tok.to_json(), f)
    os.replace(tmp_path, path)
  except BaseException:
    os.unlink(tmp_path)
    raise


def load_tokenizer(path: str) -> Tokenizer:
  """Reads a tokenizer written by `save_tokenizer`."""
  try:
    with open(path, encoding="utf-8") as f:
      state = json.load(f)
  except FileNotFoundError:
    raise UserError(
      f"tokenizer file {path} does not exist; train one first or fix the path"
    ) from None
  except json.JSONDecodeError as e:
    raise UserError(
      f"tokenizer file {path} is not valid JSON ({e.msg}); delete it and retrain"
    ) from None
  return tokenizer_from_json(state)
