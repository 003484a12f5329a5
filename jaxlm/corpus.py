"""From data settings to a tokenizer and packed train/validation windows.

The tokenizer is trained once, on the training split, and saved as WORKDIR/tokenizer.json; a run that
finds one there (or is handed one from a checkpoint) uses it and never retrains.
"""

import dataclasses
import os

from jaxlm.data import (Corpus, PackedTokens, Tokenizer, load_corpus, load_tokenizer,
                        pack_documents, save_tokenizer, tokenize_corpus, train_tokenizer)

TOKENIZER_FILE = "tokenizer.json"


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """See `jaxlm/config.py` (data.*) for the meaning of each field."""
  source: str = "stdlib"
  path: str = ""
  text_field: str = "text"
  val_fraction: float = 0.1
  dedup: bool = False
  tokenizer: str = "sentencepiece"
  sp_model_type: str = "bpe"
  vocab_size: int = 4096
  seq_len: int = 256

  @classmethod
  def from_config(cls, data) -> "DataConfig":
    return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class Dataset:
  tokenizer: Tokenizer
  train: PackedTokens
  val: PackedTokens
  val_bytes_per_token: float  # UTF-8 bytes of the validation text per validation token


def read_corpus(c: DataConfig) -> Corpus:
  return load_corpus(c.source, c.path, c.text_field, c.val_fraction, c.dedup)


def workdir_tokenizer(c: DataConfig, corpus: Corpus, workdir: str) -> Tokenizer:
  """The workdir's tokenizer if there is one; else one trained on the training split, saved."""
  path = os.path.join(workdir, TOKENIZER_FILE)
  if os.path.exists(path):
    return load_tokenizer(path)
  tokenizer = train_tokenizer(c.tokenizer, corpus.train, c.vocab_size, c.sp_model_type)
  save_tokenizer(tokenizer, path)
  return tokenizer


def pack_split(docs: list[str], tokenizer: Tokenizer, seq_len: int) -> tuple[PackedTokens, float]:
  """Packed windows of a split and its UTF-8 bytes per token (for bits per byte)."""
  token_docs = tokenize_corpus(docs, tokenizer)
  packed = pack_documents(token_docs, tokenizer.eos_id, seq_len)
  num_bytes = sum(len(doc.encode("utf-8")) for doc in docs)
  return packed, num_bytes / len(packed.stream)


def build_dataset(c: DataConfig, corpus: Corpus, tokenizer: Tokenizer) -> Dataset:
  train, _ = pack_split(corpus.train, tokenizer, c.seq_len)
  val, val_bytes_per_token = pack_split(corpus.val, tokenizer, c.seq_len)
  return Dataset(tokenizer, train, val, val_bytes_per_token)
