"""From data settings to a tokenizer and packed train/validation windows.

Two formats: text documents (packed into a continuous stream of windows) and prompt/completion
records (packed whole, the loss on completions only; see `data/records.py`).

The tokenizer is trained once, on the training split, and saved as WORKDIR/tokenizer.json; a run that
finds one there (or is handed one from a checkpoint) uses it and never retrains.
"""

import dataclasses
import os

import jax
from jax.experimental import multihost_utils

from jaxlm.config import section_dataclass
from jaxlm.data import (
  Corpus,
  PackedTokens,
  Tokenizer,
  load_corpus,
  load_tokenizer,
  pack_documents,
  save_tokenizer,
  tokenize_corpus,
  train_tokenizer,
)
from jaxlm.data.records import (
  PackedRecords,
  Record,
  fit_record,
  is_record_file,
  pack_records,
  read_records,
  split_records,
)
from jaxlm.data.tasks import load_task
from jaxlm.errors import UserError

TOKENIZER_FILE = "tokenizer.json"


@section_dataclass("data")
class DataConfig:
  """The data options: see `jaxlm/config.py` (data.*) for each field's meaning and default."""
  source: str
  path: str
  text_field: str
  val_fraction: float
  dedup: bool
  tokenizer: str
  sp_model_type: str
  vocab_size: int
  seq_len: int
  format: str
  truncate: str
  val_path: str

  @property
  def resolved_format(self) -> str:
    """"text" or "prompt_completion" (data.format, with "auto" decided from the data)."""
    if self.format not in ("auto", "text", "prompt_completion"):
      raise UserError(f"data.format={self.format!r} is not one of auto, text, prompt_completion")
    if self.format != "auto":
      return self.format
    if self.source == "task" or (self.source == "files" and is_record_file(self.path)):
      return "prompt_completion"
    return "text"


@dataclasses.dataclass(frozen=True)
class Dataset:
  tokenizer: Tokenizer
  train: PackedTokens | PackedRecords
  val: PackedTokens | PackedRecords
  val_bytes_per_token: float  # UTF-8 bytes of the scored validation text per scored token


def read_corpus(c: DataConfig) -> Corpus:
  """Train/validation documents (`str`) or, for prompt/completion data, `Record`s."""
  if c.resolved_format == "text":
    return load_corpus(c.source, c.path, c.text_field, c.val_fraction, c.dedup)
  if c.source == "task":
    return Corpus(train=load_task(c.path, "train"), val=load_task(c.path, "val"))
  if c.source != "files":
    raise UserError(f"prompt/completion data comes from data.source=files or task, not {c.source!r}")
  if c.val_path:
    return Corpus(train=read_records(c.path), val=read_records(c.val_path))
  train, val = split_records(read_records(c.path), c.val_fraction)
  return Corpus(train=train, val=val)


def texts_of(docs: list) -> list[str]:
  """The text a tokenizer learns from: documents as they are, records as prompt + completion."""
  return [d.prompt + d.completion if isinstance(d, Record) else d for d in docs]


def workdir_tokenizer(c: DataConfig, corpus: Corpus, workdir: str,
                      pretrained: Tokenizer | None = None) -> Tokenizer:
  """The workdir's tokenizer if there is one; else `pretrained` (a finetune run's) or one trained
  on the training split, saved.

  In a multi-host run only process 0 trains and saves it; the others wait for that, then read the
  file, so every host needs the same (shared) workdir.
  """
  path = os.path.join(workdir, TOKENIZER_FILE)
  tokenizer = None
  if jax.process_index() == 0 and not os.path.exists(path):
    tokenizer = pretrained or train_tokenizer(c.tokenizer, texts_of(corpus.train), c.vocab_size,
                                              c.sp_model_type)
    save_tokenizer(tokenizer, path)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("jaxlm: workdir tokenizer saved")
  if tokenizer is not None:
    return tokenizer
  if not os.path.exists(path):
    raise UserError(f"process {jax.process_index()} cannot see {path}, which process 0 saved; put "
                    "--workdir on a filesystem that every host shares")
  return load_tokenizer(path)


def pack_split(docs: list[str], tokenizer: Tokenizer, seq_len: int) -> tuple[PackedTokens, float]:
  """Packed windows of a split and its UTF-8 bytes per scored token (for bits per byte)."""
  token_docs = tokenize_corpus(docs, tokenizer)
  packed = pack_documents(token_docs, tokenizer.eos_id, seq_len)
  num_bytes = sum(len(doc.encode("utf-8")) for doc in docs)
  # Evaluation scores every stream token but the first (the partial last window too): every
  # document's tokens and the EOS before each document but the first, which has no bytes.
  return packed, num_bytes / packed.num_targets


def pack_record_split(records: list[Record], tokenizer: Tokenizer, seq_len: int, truncate: str,
                      name: str) -> tuple[PackedRecords, float]:
  """Packed rows of records and the UTF-8 bytes per scored token (completions and their EOS)."""
  prompts = tokenizer.encode_batch([r.prompt for r in records])
  completions = tokenizer.encode_batch([r.completion for r in records])
  packed = pack_records(list(zip(prompts, completions)), tokenizer.eos_id, seq_len, truncate, name)
  # Only the records that fit a row are scored; a dropped one's bytes are not in the text scored.
  num_bytes = sum(len(r.completion.encode("utf-8"))
                  for r, prompt, completion in zip(records, prompts, completions)
                  if fit_record(prompt, completion, tokenizer.eos_id, seq_len, truncate))
  return packed, num_bytes / max(float(packed.weights.sum()), 1.0)


def pack_any(c: DataConfig, docs: list, tokenizer: Tokenizer,
             name: str) -> tuple[PackedTokens | PackedRecords, float]:
  """Packs one split in the data's format; also returns its UTF-8 bytes per scored token."""
  if c.resolved_format == "prompt_completion":
    return pack_record_split(docs, tokenizer, c.seq_len, c.truncate, name)
  return pack_split(docs, tokenizer, c.seq_len)


def build_dataset(c: DataConfig, corpus: Corpus, tokenizer: Tokenizer) -> Dataset:
  train, _ = pack_any(c, corpus.train, tokenizer, "train")
  val, val_bytes_per_token = pack_any(c, corpus.val, tokenizer, "val")
  return Dataset(tokenizer, train, val, val_bytes_per_token)
