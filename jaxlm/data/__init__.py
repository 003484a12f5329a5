"""Data for jaxlm: corpora, tokenizers, packing into windows, and batches."""

from jaxlm.data.clean import clean_documents, read_utf8
from jaxlm.data.label_tasks import LABEL_TASKS, load_label_task
from jaxlm.data.labelled import (
  ClassificationRecord,
  PackedLabels,
  TaggingRecord,
  check_labels,
  detect_format,
  label_vocabulary,
  pack_labelled,
  read_labelled,
  split_labelled,
)
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
from jaxlm.data.wordpiece_tokenizer import WordPieceTokenizer
from jaxlm.errors import UserError

__all__ = [
  "LABEL_TASKS",
  "ClassificationRecord",
  "Corpus",
  "PackedLabels",
  "PackedTokens",
  "TaggingRecord",
  "Tokenizer",
  "UserError",
  "WordPieceTokenizer",
  "check_labels",
  "clean_documents",
  "detect_format",
  "eval_batches",
  "label_vocabulary",
  "load_corpus",
  "load_label_task",
  "load_tokenizer",
  "pack_documents",
  "pack_labelled",
  "read_labelled",
  "read_utf8",
  "save_tokenizer",
  "split_labelled",
  "tokenize_corpus",
  "tokenizer_from_json",
  "train_batches",
  "train_tokenizer",
]
