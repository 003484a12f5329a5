"""BERT's WordPiece tokenizer, through the Hugging Face `tokenizers` library.

Text goes through BERT's normaliser (control characters dropped, whitespace made spaces, optional
lowercasing) and pre-tokenizer (split at whitespace and around each punctuation character), then
each word into the longest vocabulary pieces from the left; a piece inside a word is written with
"##" in front. A word with no such split becomes [UNK]. Whitespace is not kept, so decode(encode(t))
is t with its words joined by single spaces.

The special tokens are [PAD] [UNK] [CLS] [SEP] [MASK], ids 0-4 when trained here (an imported
BERT keeps its own ids). jaxlm's packing puts the tokenizer's `eos_id` at the start of every
document, and here that is [CLS], so each document starts as a BERT sequence does.

The tokenizer is either trained on the training split (data.tokenizer="wordpiece", never
lowercased: the built-in corpus is code, where case matters) or read from a Hugging Face BERT
directory. Its JSON form embeds the whole `tokenizers` definition as text: no pickle, no side file.
"""

from __future__ import annotations

import json
import os
import re
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np
import tokenizers
from tokenizers import (
  decoders,
  models,
  normalizers,
  pre_tokenizers,
  processors,
  trainers,
)

from jaxlm.errors import UserError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = SPECIAL_TOKENS
PREFIX = "##"  # marks a piece that continues a word
MAX_WORD_CHARS = 100  # longer words become [UNK], as in BERT


def _bert_tokenizer(vocab: dict[str, int], lowercase: bool, strip_accents: bool | None = None,
                    chinese_chars: bool = True) -> tokenizers.Tokenizer:
  """BERT's pipeline around a WordPiece vocabulary, as Hugging Face's BertTokenizerFast builds it."""
  missing = [t for t in SPECIAL_TOKENS if t not in vocab]
  if missing:
    raise UserError(f"the WordPiece vocabulary lacks {', '.join(missing)}; use a BERT vocabulary "
                    f"with all of {' '.join(SPECIAL_TOKENS)}")
  tok = tokenizers.Tokenizer(
    models.WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=MAX_WORD_CHARS)
  )
  tok.normalizer = normalizers.BertNormalizer(
    clean_text=True, handle_chinese_chars=chinese_chars, strip_accents=strip_accents,
    lowercase=lowercase,
  )
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece(prefix=PREFIX)
  tok.post_processor = processors.TemplateProcessing(
    single=f"{CLS}:0 $A:0 {SEP}:0",
    pair=f"{CLS}:0 $A:0 {SEP}:0 $B:1 {SEP}:1",
    special_tokens=[(CLS, vocab[CLS]), (SEP, vocab[SEP])],
  )
  tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                          for t in SPECIAL_TOKENS])
  return tok


def _splits_words(char: str) -> bool:
  """Whether BERT's pre-tokenizer ends a word at `char` (after normalisation): whitespace,
  punctuation (ASCII symbols count as punctuation) and CJK ideographs."""
  code = ord(char)
  return (char.isspace() or unicodedata.category(char).startswith(("Z", "C", "P"))
          or 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126
          or 0x3400 <= code <= 0x4DBF or 0x4E00 <= code <= 0x9FFF or 0xF900 <= code <= 0xFAFF
          or 0x20000 <= code <= 0x2A6DF or 0x2F800 <= code <= 0x2FA1F)


def _continuation_pieces(texts: Iterable[str], normalizer: normalizers.Normalizer) -> list[str]:
  """"##c" for every character c that follows another character of its word, sorted."""
  normalized = [normalizer.normalize_str(text) for text in texts]
  chars: set[str] = set()
  for text in normalized:
    chars.update(text)
  breaks = "".join(re.escape(c) for c in sorted(c for c in chars if _splits_words(c)))
  inside_word = re.compile(f"(?<=[^{breaks}])[^{breaks}]" if breaks else r"(?<=.).", re.DOTALL)
  continued: set[str] = set()
  for text in normalized:
    continued.update(inside_word.findall(text))
  return [PREFIX + c for c in sorted(continued)]


def _train_vocab(texts: Sequence[str], vocab_size: int) -> dict[str, int]:
  """A WordPiece vocabulary learned by `tokenizers`' WordPieceTrainer, deterministically.

  The trainer numbers the "##c" pieces in the iteration order of a Rust hash map, which changes
  from process to process, and breaks ties between equally frequent merges by those numbers, so
  the same texts gave different vocabularies. Handing it every "##c" up front, sorted, as extra
  special tokens fixes their numbers; the tokenizer built from the vocabulary has only BERT's five.
  """
  tok = _bert_tokenizer({t: i for i, t in enumerate(SPECIAL_TOKENS)}, lowercase=False)
  trainer = trainers.WordPieceTrainer(
    vocab_size=vocab_size,
    special_tokens=[*SPECIAL_TOKENS, *_continuation_pieces(texts, tok.normalizer)],
    continuing_subword_prefix=PREFIX,
    show_progress=False,
  )
  tok.train_from_iterator(texts, trainer)
  return tok.get_vocab(with_added_tokens=False)


def _normalizer_options(definition: dict) -> tuple[bool, bool | None]:
  """(lowercase, strip_accents) of a `tokenizers` JSON definition's normaliser."""
  normalizer = definition.get("normalizer") or {}
  steps = normalizer.get("normalizers", [normalizer]) if normalizer.get("type") == "Sequence" \
    else [normalizer]
  lowercase, strip_accents = False, None
  for step in steps:
    if step.get("type") == "BertNormalizer":
      lowercase, strip_accents = bool(step.get("lowercase")), step.get("strip_accents")
    elif step.get("type") == "Lowercase":
      lowercase = True
    elif step.get("type") == "StripAccents":
      strip_accents = True
  return lowercase, strip_accents


class WordPieceTokenizer:
  """A BERT WordPiece `tokenizers.Tokenizer`; EOS is [CLS] (see the module docstring)."""

  kind = "wordpiece"

  def __init__(self, definition: str, vocab_size: int | None = None):
    """`definition`: a `tokenizers` JSON definition (the text of a tokenizer.json).
    `vocab_size`: the model's vocabulary when it is padded beyond the tokenizer's ids."""
    try:
      self._tok = tokenizers.Tokenizer.from_str(definition)
      parsed = json.loads(definition)
    except Exception as e:  # noqa: BLE001 (tokenizers raises a plain Exception)
      raise UserError(
        f"not a valid tokenizers definition ({str(e).splitlines()[0]}); "
        "use the tokenizer.json of a Hugging Face BERT model"
      ) from None
    if (parsed.get("model") or {}).get("type") != "WordPiece":
      raise UserError("the tokenizer is not a WordPiece one; use a BERT model's tokenizer.json")
    self.definition = definition
    ids = [self._tok.token_to_id(t) for t in SPECIAL_TOKENS]
    missing = [t for t, i in zip(SPECIAL_TOKENS, ids) if i is None]
    if missing:
      raise UserError(f"the tokenizer lacks {', '.join(missing)}; use a BERT tokenizer with all "
                      f"of {' '.join(SPECIAL_TOKENS)}")
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = ids
    self.special_ids = tuple(ids)
    self.eos_id = self.cls_id
    self.lowercase, self.strip_accents = _normalizer_options(parsed)
    own_size = self._tok.get_vocab_size(with_added_tokens=True)
    self.vocab_size = own_size if vocab_size is None else vocab_size
    if self.vocab_size < own_size:
      raise UserError(f"vocab_size={vocab_size} is smaller than the tokenizer's {own_size} ids")
    # Documents are text: "[MASK]" written in them stays text rather than becoming the token.
    self._tok.encode_special_tokens = True

  @classmethod
  def train(cls, texts: Sequence[str], vocab_size: int) -> WordPieceTokenizer:
    """A new WordPiece vocabulary of at most `vocab_size` ids (special tokens included)."""
    vocab = _train_vocab(texts, vocab_size)
    if len(vocab) > vocab_size:
      raise UserError(
        f"data.vocab_size={vocab_size} is smaller than this corpus needs (min {len(vocab)}: the "
        "special tokens and every character, alone and as ##piece); raise --config.data.vocab_size"
      )
    return cls(_bert_tokenizer(vocab, lowercase=False).to_str())

  @classmethod
  def from_hf_dir(cls, directory: str, vocab_size: int | None = None) -> WordPieceTokenizer:
    """From a Hugging Face BERT directory: tokenizer.json, else vocab.txt with the lowercasing
    options of tokenizer_config.json (do_lower_case: BertTokenizer's default, true)."""
    tokenizer_json = os.path.join(directory, "tokenizer.json")
    vocab_txt = os.path.join(directory, "vocab.txt")
    if os.path.exists(tokenizer_json):
      with open(tokenizer_json, encoding="utf-8") as f:
        return cls(f.read(), vocab_size)
    if not os.path.exists(vocab_txt):
      raise UserError(f"{directory} has no tokenizer.json nor vocab.txt; copy the BERT model's "
                      "tokenizer files there")
    settings_path = os.path.join(directory, "tokenizer_config.json")
    hf_settings = {}  # transformers' tokenizer_config.json; its defaults are BertTokenizer's
    if os.path.exists(settings_path):
      with open(settings_path, encoding="utf-8") as f:
        hf_settings = json.load(f)
    vocab = models.WordPiece.read_file(vocab_txt)
    tok = _bert_tokenizer(vocab, lowercase=bool(hf_settings.get("do_lower_case", True)),
                          strip_accents=hf_settings.get("strip_accents"),
                          chinese_chars=bool(hf_settings.get("tokenize_chinese_chars", True)))
    return cls(tok.to_str(), vocab_size)

  def word_start(self) -> np.ndarray:
    """[vocab_size] bool: True for ids that start a word (special tokens and the ids beyond the
    tokenizer's included), False for "##" pieces that continue one."""
    starts = np.ones(self.vocab_size, dtype=bool)  # [vocab_size]
    for piece, i in self._tok.get_vocab(with_added_tokens=True).items():
      starts[i] = not piece.startswith(PREFIX)
    return starts

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    # One call encodes all texts on all cores.
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    own_size = self._tok.get_vocab_size(with_added_tokens=True)
    kept = [int(i) for i in ids if i not in self.special_ids and 0 <= i < own_size]
    return self._tok.decode(kept, skip_special_tokens=False)

  def to_json(self) -> dict:
    return {"kind": self.kind, "definition": self.definition, "vocab_size": self.vocab_size}

  @classmethod
  def from_json(cls, state: dict) -> WordPieceTokenizer:
    return cls(state["definition"], state["vocab_size"])

  def save_hf_files(self, directory: str, max_len: int) -> None:
    """Writes tokenizer.json, vocab.txt, tokenizer_config.json and special_tokens_map.json, which
    `transformers.AutoTokenizer.from_pretrained(directory)` loads with the same ids."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
      f.write(self.definition)
    vocab = self._tok.get_vocab(with_added_tokens=True)
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
      f.writelines(piece + "\n" for piece in sorted(vocab, key=vocab.__getitem__))
    special_map = {"pad_token": PAD, "unk_token": UNK, "cls_token": CLS, "sep_token": SEP,
                   "mask_token": MASK}
    config = {
      "tokenizer_class": "BertTokenizer",
      "do_lower_case": self.lowercase,
      "strip_accents": self.strip_accents,
      "tokenize_chinese_chars": True,
      "model_max_length": max_len,
      **special_map,
    }
    for name, content in [("tokenizer_config.json", config),
                          ("special_tokens_map.json", special_map)]:
      with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2)
