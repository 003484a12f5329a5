"""GPT-2's byte-level BPE, through the Hugging Face `tokenizers` library.

Text is mapped to UTF-8 bytes before BPE, so any text round-trips exactly and nothing is unknown.
EOS is the `<|endoftext|>` token (id 50256 in GPT-2's own vocabulary). A literal "<|endoftext|>" inside
a document is encoded as ordinary text, so documents never contain a stray EOS.

The tokenizer comes either from a Hugging Face model directory (`tokenizer.json`, or GPT-2's
`vocab.json` + `merges.txt`), imported by `python -m jaxlm.convert from-hf`, or is trained on the
training split (data.tokenizer="gpt2_bpe"). Its JSON form embeds the whole `tokenizers` definition as
text, so a checkpoint needs no file beside it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from jaxlm.data.hf_tokenizer import TokenizersText
from jaxlm.errors import UserError

EOS_TOKEN = "<|endoftext|>"


def _byte_level(model: models.Model) -> tokenizers.Tokenizer:
  """GPT-2's pipeline around a BPE model: no normaliser, byte-level pre-tokenizer and decoder."""
  tok = tokenizers.Tokenizer(model)
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([tokenizers.AddedToken(EOS_TOKEN, special=True)])
  return tok


class Gpt2BpeTokenizer(TokenizersText):
  """A byte-level BPE `tokenizers.Tokenizer` whose EOS is `<|endoftext|>`."""

  kind = "gpt2_bpe"

  def __init__(self, definition: str, vocab_size: int | None = None):
    """`definition`: a `tokenizers` JSON definition (the text of a tokenizer.json).
    `vocab_size`: the model's vocabulary when it is padded beyond the tokenizer's ids."""
    try:
      self._tok = tokenizers.Tokenizer.from_str(definition)
    except Exception as e:  # noqa: BLE001 (tokenizers raises a plain Exception)
      raise UserError(
        f"not a valid tokenizers definition ({str(e).splitlines()[0]}); "
        "use the tokenizer.json of a Hugging Face GPT-2 model"
      ) from None
    self.definition = definition
    eos_id = self._tok.token_to_id(EOS_TOKEN)
    if eos_id is None:
      raise UserError(
        f"the tokenizer has no {EOS_TOKEN} token, which jaxlm uses as EOS; use a "
        "GPT-2 byte-level BPE tokenizer"
      )
    self.eos_id = eos_id
    own_size = self._tok.get_vocab_size(with_added_tokens=True)
    self.vocab_size = own_size if vocab_size is None else vocab_size
    if self.vocab_size < own_size:
      raise UserError(f"vocab_size={vocab_size} is smaller than the tokenizer's {own_size} ids")
    # Documents are text: "<|endoftext|>" written in them stays text rather than becoming EOS.
    self._tok.encode_special_tokens = True

  @classmethod
  def train(cls, texts: Sequence[str], vocab_size: int) -> Gpt2BpeTokenizer:
    """A new byte-level BPE of `vocab_size` ids (EOS and the 256 byte symbols included)."""
    min_size = len(pre_tokenizers.ByteLevel.alphabet()) + 1
    if vocab_size < min_size:
      raise UserError(
        f"data.vocab_size={vocab_size} is too small for byte-level BPE (min "
        f"{min_size}: the 256 bytes and EOS); raise --config.data.vocab_size"
      )
    tok = _byte_level(models.BPE())
    trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=[EOS_TOKEN],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return cls(tok.to_str())

  @classmethod
  def from_hf_dir(cls, directory: str, vocab_size: int | None = None) -> Gpt2BpeTokenizer:
    """From a Hugging Face model directory: tokenizer.json, else vocab.json + merges.txt."""
    tokenizer_json = os.path.join(directory, "tokenizer.json")
    vocab, merges = os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")
    if os.path.exists(tokenizer_json):
      with open(tokenizer_json, encoding="utf-8") as f:
        return cls(f.read(), vocab_size)
    if os.path.exists(vocab) and os.path.exists(merges):
      return cls(_byte_level(models.BPE.from_file(vocab, merges)).to_str(), vocab_size)
    raise UserError(
      f"{directory} has no tokenizer.json nor vocab.json + merges.txt; copy the "
      "model's tokenizer files there"
    )

  def to_json(self) -> dict:
    return {"kind": self.kind, "definition": self.definition, "vocab_size": self.vocab_size}

  @classmethod
  def from_json(cls, state: dict) -> Gpt2BpeTokenizer:
    return cls(state["definition"], state["vocab_size"])

  def save_hf_files(self, directory: str, max_len: int) -> None:
    """Writes tokenizer.json, vocab.json, merges.txt and tokenizer_config.json, which
    `transformers.AutoTokenizer.from_pretrained(directory)` loads."""
    with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
      f.write(self.definition)
    self._tok.model.save(directory)  # vocab.json + merges.txt, for GPT-2's slow tokenizer
    config = {
      "tokenizer_class": "GPT2Tokenizer",
      "bos_token": EOS_TOKEN,
      "eos_token": EOS_TOKEN,
      "unk_token": EOS_TOKEN,
      "add_prefix_space": False,
      "model_max_length": max_len,
    }
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2)
