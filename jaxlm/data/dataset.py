"""From data settings to a tokenizer and packed train/validation windows.

Five formats: text documents (packed into a continuous stream of windows), prompt/completion
records (packed whole, the loss on completions only; see `data/records.py`), classification
and tagging records (labels on [CLS] or on each word's first piece; see `data/labelled.py`), and
seq2seq (source, target) pairs for an encoder-decoder (encoder and decoder rows; see
`data/seq2seq.py`).

The tokenizer is trained once, on the training split, and saved as WORKDIR/tokenizer.json; a run that
finds one there (or is handed one from a checkpoint) uses it and never retrains. Seq2seq pairs with
data.separate_vocab get a second one, for the targets (see data/target_vocab.py).
"""

import dataclasses
import os
from typing import Any

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
from jaxlm.data.chat_records import (
  TASK_SUFFIX,
  ChatRecord,
  is_chat_file,
  load_chat_task,
  pack_chat_split,
  read_chat_records,
  split_chat_records,
  template_of,
)
from jaxlm.data.label_tasks import LABEL_TASKS, load_label_task
from jaxlm.data.labelled import (
  FORMATS as LABELLED_FORMATS,
)
from jaxlm.data.labelled import (
  ClassificationRecord,
  PackedLabels,
  TaggingRecord,
  detect_format,
  label_vocabulary,
  pack_labelled,
  read_labelled,
  split_labelled,
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
from jaxlm.data.seq2seq import (
  Pair,
  PackedSeq2Seq,
  is_seq2seq_file,
  pack_pair_split,
  read_pairs,
  split_pairs,
)
from jaxlm.data.target_vocab import TARGET_TOKENIZER_FILE, side_texts, with_target
from jaxlm.data.tasks import load_task
from jaxlm.data.translation_tasks import is_translation_task, load_seq2seq_task
from jaxlm.data.tokenizer_sample import sample_documents
from jaxlm.errors import UserError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_SAMPLE_SEED = 0  # fixed: the sample is part of the data, not of a run's seed


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
  labels: tuple
  mixture: tuple
  mixture_stages: tuple
  tokenizer_sample_chars: int
  tokenizer_file: str
  chat_template: str
  target_len: int
  num_sentinels: int
  separate_vocab: bool
  target_vocab_size: int

  @property
  def resolved_format(self) -> str:
    """data.format, with "auto" decided from the built-in task or the first JSONL record."""
    formats = ("auto", "text", "prompt_completion", "chat", "seq2seq", *LABELLED_FORMATS)
    if self.format not in formats:
      raise UserError(f"data.format={self.format!r} is not one of {', '.join(formats)}")
    if self.format != "auto":
      return self.format
    if self.source == "prepared":
      return "text"
    if self.source == "task" and self.path.endswith(TASK_SUFFIX):
      return "chat"
    if self.source == "task" and is_translation_task(self.path):
      return "seq2seq"
    if self.source == "task":
      return LABEL_TASKS[self.path].format if self.path in LABEL_TASKS else "prompt_completion"
    if self.source == "files":
      labelled = detect_format(self.path)
      if labelled:
        return labelled
      if is_seq2seq_file(self.path):
        return "seq2seq"
      if is_record_file(self.path):
        return "prompt_completion"
      if is_chat_file(self.path):
        return "chat"
    return "text"

  @property
  def labelled(self) -> bool:
    return self.resolved_format in LABELLED_FORMATS

  @property
  def decoder_len(self) -> int:
    """Decoder tokens of a seq2seq row: data.target_len, 0 = data.seq_len."""
    return self.target_len or self.seq_len


@dataclasses.dataclass(frozen=True)
class Dataset:
  tokenizer: Tokenizer
  train: PackedTokens | PackedRecords | PackedLabels | PackedSeq2Seq
  val: PackedTokens | PackedRecords | PackedLabels | PackedSeq2Seq
  val_bytes_per_token: float  # UTF-8 bytes of the scored validation text per scored token
  labels: tuple[str, ...] = ()  # label names in id order (classification / tagging)
  val_records: tuple = ()  # the validation records behind `val` (labelled data), for metrics
  # data.source=prepared: the directories read (train and val above are the first one's; a
  # mixture trains on all, see prepared_data.py, and evaluates each).
  sources: Any = None
  chat_template: str = ""  # the template chat data was rendered with
  target_tokenizer: Tokenizer | None = None  # data.separate_vocab's, of the targets; None: shared

  def val_sets(self) -> list[tuple[str, Any, float]]:
    """(source name, validation windows, bytes per token) to evaluate: "" for the one split."""
    if self.sources is not None:
      return self.sources.val_sets()
    return [("", self.val, self.val_bytes_per_token)]

  def tokenizer_state(self) -> dict:
    """The tokenizer's JSON for checkpoints, with the chat template of a chat run."""
    state = with_target(self.tokenizer.to_json(), self.target_tokenizer)
    return {**state, "chat_template": self.chat_template} if self.chat_template else state


def read_corpus(c: DataConfig) -> Corpus:
  """Train/validation documents (`str`) or, for prompt/completion data, `Record`s."""
  if c.resolved_format == "text":
    return load_corpus(c.source, c.path, c.text_field, c.val_fraction, c.dedup)
  if c.labelled:
    return read_labelled_corpus(c)
  if c.resolved_format == "chat":
    return read_record_corpus(c, "chat", load_chat_task, read_chat_records, split_chat_records)
  if c.resolved_format == "seq2seq":
    return read_record_corpus(c, "seq2seq", load_seq2seq_task, read_pairs, split_pairs)
  return read_record_corpus(c, "prompt/completion", load_task, read_records, split_records)


def read_record_corpus(c: DataConfig, kind: str, from_task, read, split) -> Corpus:
  """Train/validation records of a built-in task, of data.path and data.val_path, or of data.path
  split by data.val_fraction."""
  if c.source == "task":
    return Corpus(train=from_task(c.path, "train"), val=from_task(c.path, "val"))
  if c.source != "files":
    raise UserError(f"{kind} data comes from data.source=files or task, not {c.source!r}")
  if c.val_path:
    return Corpus(train=read(c.path), val=read(c.val_path))
  train, val = split(read(c.path), c.val_fraction)
  return Corpus(train=train, val=val)


def read_labelled_corpus(c: DataConfig) -> Corpus:
  """Train/validation classification or tagging records: a built-in task's, or JSONL files'."""
  if c.source == "task":
    if c.path not in LABEL_TASKS or LABEL_TASKS[c.path].format != c.resolved_format:
      known = [name for name, task in LABEL_TASKS.items() if task.format == c.resolved_format]
      raise UserError(f"data.path={c.path!r} is not a built-in {c.resolved_format} task; choose "
                      f"one of {', '.join(known)}")
    return Corpus(train=load_label_task(c.path, "train"), val=load_label_task(c.path, "val"))
  if c.source != "files":
    raise UserError(f"{c.resolved_format} records come from data.source=files or task, not "
                    f"{c.source!r}")
  if c.val_path:
    return Corpus(train=read_labelled(c.path, c.resolved_format),
                  val=read_labelled(c.val_path, c.resolved_format))
  train, val = split_labelled(read_labelled(c.path, c.resolved_format), c.val_fraction)
  return Corpus(train=train, val=val)


def text_of(doc) -> str:
  """The text a tokenizer learns from: a document as it is, a record's text fields joined."""
  if isinstance(doc, Record):
    return doc.prompt + doc.completion
  if isinstance(doc, ChatRecord):
    return doc.text
  if isinstance(doc, Pair):
    return doc.source + "\n" + doc.target
  if isinstance(doc, ClassificationRecord):
    return doc.text + ("\n" + doc.text_pair if doc.text_pair else "")
  if isinstance(doc, TaggingRecord):
    return " ".join(doc.tokens)
  return doc


def make_tokenizer(c: DataConfig, train_docs, encdec: bool = False) -> Tokenizer:
  """data.tokenizer_file's tokenizer, else one trained on a bounded sample of `train_docs`
  (an iterable of documents or records, read once); for an `encdec` run a sentencepiece one gets
  data.num_sentinels sentinels (span corruption's)."""
  if c.tokenizer_file:
    tokenizer = load_tokenizer(c.tokenizer_file)
    if tokenizer.kind != c.tokenizer:
      raise UserError(f"data.tokenizer_file {c.tokenizer_file} holds a {tokenizer.kind} tokenizer, "
                      f"but data.tokenizer={c.tokenizer!r}; set --config.data.tokenizer="
                      f"{tokenizer.kind} or give a {c.tokenizer} tokenizer")
    return tokenizer
  texts = sample_documents((text_of(doc) for doc in train_docs), c.tokenizer_sample_chars,
                           TOKENIZER_SAMPLE_SEED)
  return train_tokenizer(c.tokenizer, texts, c.vocab_size, c.sp_model_type,
                         sentinel_count(c, encdec))


def sentinel_count(c: DataConfig, encdec: bool) -> int:
  """The sentinels a new tokenizer gets: data.num_sentinels for an encdec run's sentencepiece."""
  return c.num_sentinels if encdec and c.tokenizer == "sentencepiece" else 0


def workdir_tokenizer(c: DataConfig, corpus: Corpus, workdir: str,
                      pretrained: Tokenizer | None = None, encdec: bool = False) -> Tokenizer:
  """The workdir's tokenizer if there is one; else `pretrained` (a finetune run's) or one trained
  on the training split (with sentinels for an `encdec` run; its sources alone with
  data.separate_vocab), saved."""
  def make() -> Tokenizer:  # no corpus when the tokenizer is given (prepared data has none)
    if pretrained is not None:
      return pretrained
    docs = side_texts(corpus.train, "source") if c.separate_vocab else corpus.train
    return make_tokenizer(c, docs, encdec)
  return saved_once(os.path.join(workdir, TOKENIZER_FILE), make)


def workdir_target_tokenizer(c: DataConfig, corpus: Corpus, workdir: str,
                             pretrained: Tokenizer | None = None) -> Tokenizer | None:
  """With data.separate_vocab the workdir's target tokenizer (WORKDIR/target_tokenizer.json), else
  `pretrained`'s, else one of data.target_vocab_size trained on the training targets (with
  sentinels), saved; a data.tokenizer_file's is the target_tokenizer.json beside it. None when
  the vocabulary is shared."""
  if not c.separate_vocab:
    return None
  given = c.tokenizer_file and os.path.join(os.path.dirname(c.tokenizer_file),
                                            TARGET_TOKENIZER_FILE)
  target_cfg = dataclasses.replace(c, vocab_size=c.target_vocab_size or c.vocab_size,
                                   tokenizer_file=given)
  return saved_once(os.path.join(workdir, TARGET_TOKENIZER_FILE), lambda: pretrained or
                    make_tokenizer(target_cfg, side_texts(corpus.train, "target"), encdec=True))


def saved_once(path: str, make) -> Tokenizer:
  """The tokenizer at `path`, made by `make()` and saved there if it is not yet.

  In a multi-host run only process 0 makes and saves it; the others wait for that, then read the
  file, so every host needs the same (shared) workdir.
  """
  tokenizer = None
  if jax.process_index() == 0 and not os.path.exists(path):
    tokenizer = make()
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


def pack_any(c: DataConfig, docs: list, tokenizer: Tokenizer, name: str,
             labels: tuple[str, ...] = (), target_tokenizer: Tokenizer | None = None
             ) -> tuple[PackedTokens | PackedRecords | PackedLabels | PackedSeq2Seq, float]:
  """Packs one split in the data's format; also returns its UTF-8 bytes per scored token (1.0 for
  labelled data, where bits per byte has no meaning). `target_tokenizer`: seq2seq targets' own
  (data.separate_vocab), None: `tokenizer`."""
  if c.labelled:
    return pack_labelled(docs, tokenizer, c.seq_len, labels, name), 1.0
  if c.resolved_format == "prompt_completion":
    return pack_record_split(docs, tokenizer, c.seq_len, c.truncate, name)
  if c.resolved_format == "chat":
    return pack_chat_split(docs, tokenizer, template_of(c), c.seq_len, c.truncate, name)
  if c.resolved_format == "seq2seq":
    return pack_pair_split(docs, tokenizer, c.seq_len, c.decoder_len, c.truncate, name,
                           target_tokenizer)
  return pack_split(docs, tokenizer, c.seq_len)


def build_dataset(c: DataConfig, corpus: Corpus, tokenizer: Tokenizer,
                  target_tokenizer: Tokenizer | None = None) -> Dataset:
  labels = label_vocabulary(corpus.train, c.labels) if c.labelled else ()
  train, _ = pack_any(c, corpus.train, tokenizer, "train", labels, target_tokenizer)
  val, val_bytes_per_token = pack_any(c, corpus.val, tokenizer, "val", labels, target_tokenizer)
  return Dataset(tokenizer, train, val, val_bytes_per_token, labels,
                 tuple(corpus.val) if c.labelled else (),
                 chat_template=template_of(c) if c.resolved_format == "chat" else "",
                 target_tokenizer=target_tokenizer)
