"""A Hugging Face model's own tokenizer (`tokenizer.json`, through the `tokenizers` library), as
imported with a Llama-family model: its ids, special tokens and chat template unchanged.

EOS is the model's end-of-text token (config.json's `eos_token_id`, else tokenizer_config.json's
`eos_token`); text is encoded without the tokenizer's post-processing (no BOS is added), as jaxlm
packs documents itself. The chat template of tokenizer_config.json is kept, and written back by
`convert to-hf`. The JSON form embeds the whole definition, so a checkpoint needs no file beside it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import tokenizers

from jaxlm.errors import UserError

CONFIG = "tokenizer_config.json"
# tokenizer_config.json entries kept and written back (the rest is transformers' bookkeeping).
KEPT = ("chat_template", "bos_token", "eos_token", "pad_token", "unk_token", "add_bos_token",
        "add_eos_token", "clean_up_tokenization_spaces", "model_max_length")


class TokenizersText:
  """encode / decode through a `tokenizers.Tokenizer` (`self._tok`), without its post-processing
  (no BOS / EOS added); EOS ids are dropped when decoding."""

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    # One call encodes all texts on all cores.
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids if i != self.eos_id], skip_special_tokens=False)


class HfTokenizer(TokenizersText):
  """A `tokenizers.Tokenizer` definition with the model's EOS id and tokenizer_config settings."""

  kind = "hf"

  def __init__(self, definition: str, eos_id: int, settings: dict | None = None,
               vocab_size: int | None = None):
    try:
      self._tok = tokenizers.Tokenizer.from_str(definition)
    except Exception as e:  # noqa: BLE001 (tokenizers raises a plain Exception)
      raise UserError(f"tokenizer.json is not a valid tokenizers definition "
                      f"({str(e).splitlines()[0]}); download it again") from None
    self.definition, self.eos_id, self.settings = definition, int(eos_id), dict(settings or {})
    own_size = self._tok.get_vocab_size(with_added_tokens=True)
    self.vocab_size = own_size if vocab_size is None else vocab_size
    if self.vocab_size < own_size:
      raise UserError(f"vocab_size={vocab_size} is smaller than the tokenizer's {own_size} ids")

  @property
  def chat_template(self) -> str | None:
    return self.settings.get("chat_template")

  @property
  def sentinel_ids(self) -> tuple[int, ...]:
    """The ids of T5's `<extra_id_0>`, `<extra_id_1>`, ... (span corruption's), as many as the
    tokenizer holds in a row from 0; () for a tokenizer without them."""
    ids = []
    while (token_id := self._tok.token_to_id(f"<extra_id_{len(ids)}>")) is not None:
      ids.append(token_id)
    return tuple(ids)

  @classmethod
  def from_hf_dir(cls, directory: str, hf_settings: dict) -> HfTokenizer:
    """From tokenizer.json (+ tokenizer_config.json) in a model directory."""
    path = os.path.join(directory, "tokenizer.json")
    if not os.path.exists(path):
      raise UserError(f"{directory} has no tokenizer.json; copy the model's tokenizer.json (and "
                      "tokenizer_config.json) there")
    with open(path, encoding="utf-8") as f:
      definition = f.read()
    config_path = os.path.join(directory, CONFIG)
    settings = {}
    if os.path.exists(config_path):
      with open(config_path, encoding="utf-8") as f:
        settings = {k: v for k, v in json.load(f).items() if k in KEPT}
    tok = tokenizers.Tokenizer.from_str(definition)
    eos = hf_settings.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos
    if eos is None and isinstance(settings.get("eos_token"), str):
      eos = tok.token_to_id(settings["eos_token"])
    if eos is None:
      raise UserError("neither config.json (eos_token_id) nor tokenizer_config.json (eos_token) "
                      "names the end-of-text token; add eos_token_id to config.json")
    return cls(definition, eos, settings, hf_settings.get("vocab_size"))

  def to_json(self) -> dict:
    return {"kind": self.kind, "definition": self.definition, "eos_id": self.eos_id,
            "settings": self.settings, "vocab_size": self.vocab_size}

  @classmethod
  def from_json(cls, state: dict) -> HfTokenizer:
    return cls(state["definition"], state["eos_id"], state["settings"], state["vocab_size"])

  def save_hf_files(self, directory: str, max_len: int) -> None:
    """Writes tokenizer.json and tokenizer_config.json (with the chat template)."""
    with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
      f.write(self.definition)
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
                **self.settings}
    with open(os.path.join(directory, CONFIG), "w", encoding="utf-8") as f:
      json.dump(settings, f, indent=2)
