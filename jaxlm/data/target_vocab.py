"""Separate source and target vocabularies of an encoder-decoder (data.separate_vocab).

Two SentencePiece models: the source one, trained on the sources, feeds the encoder's embedding;
the target one, trained on the targets, the decoder's embedding and the output head. Both get the
span-corruption sentinels, as a shared one does. The source one is WORKDIR/tokenizer.json as
always, the target one WORKDIR/target_tokenizer.json; a checkpoint's `tokenizer` item holds the
target one under the key "target_tokenizer" (so a checkpoint stays four items, and an older,
shared-vocabulary one reads unchanged). Only (source, target) pairs have two sides: span
corruption draws a text's encoder inputs and its targets from one token stream, so it is refused.
"""

from __future__ import annotations

from jaxlm.data.tokenizer import Tokenizer, tokenizer_from_json
from jaxlm.errors import UserError

TARGET_TOKENIZER_FILE = "target_tokenizer.json"
STATE_KEY = "target_tokenizer"


def check_options(separate: bool, target_vocab_size: int, family: str, data_format: str,
                  tokenizer_kind: str) -> None:
  """One-line errors for data.separate_vocab / data.target_vocab_size that cannot work."""
  if target_vocab_size < 0 or (target_vocab_size and not separate):
    raise UserError(f"data.target_vocab_size={target_vocab_size} sizes a separate target "
                    "vocabulary; set data.separate_vocab=True with a size > 0, or "
                    "data.target_vocab_size=0 (= data.vocab_size)")
  if not separate:
    return
  if family != "encdec":
    raise UserError(f"data.separate_vocab=True gives an encoder-decoder's sources and targets "
                    f"their own vocabularies, and this is a {family} run; set "
                    "model.family=encdec or data.separate_vocab=False")
  if data_format != "seq2seq":
    raise UserError(f"data.separate_vocab=True needs (source, target) pairs, not {data_format} "
                    "data: span corruption takes a text's inputs and targets from one token "
                    "stream; set data.separate_vocab=False or give data.format=seq2seq data")
  if tokenizer_kind != "sentencepiece":
    raise UserError(f"data.separate_vocab=True trains two SentencePiece models, not "
                    f"{tokenizer_kind} tokenizers; set data.tokenizer=sentencepiece")


def side_texts(docs, side: str) -> list[str]:
  """The `side` ("source" or "target") of each seq2seq pair in `docs`."""
  return [getattr(doc, side) for doc in docs]


def vocab_size_of(target: Tokenizer | None) -> int:
  """ModelConfig.target_vocab_size of a run: its target tokenizer's size, 0 when shared."""
  return 0 if target is None else target.vocab_size


def with_target(state: dict, target: Tokenizer | None) -> dict:
  """A checkpoint's tokenizer JSON `state` with the target tokenizer, if separate, inside."""
  return state if target is None else {**state, STATE_KEY: target.to_json()}


def target_of(state: dict) -> Tokenizer | None:
  """The separate target tokenizer of a checkpoint's tokenizer JSON; None when shared."""
  target = state.get(STATE_KEY)
  return None if target is None else tokenizer_from_json(target)
