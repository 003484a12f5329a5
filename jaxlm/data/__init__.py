"""Data for jaxlm: corpora, tokenizers, packing into windows, and batches."""

from jaxlm.data.clean import clean_documents, read_utf8
from jaxlm.data.packing import PackedTokens, pack_documents
from jaxlm.data.pipeline import eval_batches, tokenize_corpus, train_batches
from jaxlm.data.sources import Corpus, load_corpus
from jaxlm.data.tokenizer import (
  Tokenizer,
  load_tokenizer,
  save_tokenizer,
  tokenizer_from_json,
  train_tokenizer,
)
from jaxlm.errors import UserError

__all__ = [
  "Corpus",
  "UserError",
  "PackedTokens",
  "Tokenizer",
  "clean_documents",
  "eval_batches",
  "load_corpus",
  "load_tokenizer",
  "pack_documents",
  "read_utf8",
  "save_tokenizer",
  "tokenize_corpus",
  "tokenizer_from_json",
  "train_batches",
  "train_tokenizer",
]
