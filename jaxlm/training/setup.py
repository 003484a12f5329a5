"""A run set up from its config: the task checked, data read and packed, tokenizer, engine.

The model family and head decide what the data must be (`check_task`): a GPT learns the next token
of text or of prompt/completion records; a BERT with head "lm" the masked tokens of text; "classify"
and "tag" heads labelled records, whose label names become part of the run's config.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jaxlm import cli
from jaxlm.config import from_saved
from jaxlm.data import train_batches
from jaxlm.data.dataset import (
  DataConfig,
  Dataset,
  build_dataset,
  read_corpus,
  workdir_target_tokenizer,
  workdir_tokenizer,
)
from jaxlm.data import target_vocab
from jaxlm.data.prepared_data import check_data_source, open_sources
from jaxlm.data.records import PackedRecords
from jaxlm.data.seq2seq import PackedSeq2Seq
from jaxlm.errors import UserError
from jaxlm.models import make_model
from jaxlm.parallel import sharding
from jaxlm.training import checkpoint, finetune
from jaxlm.training.engine import (
  Engine,
  check_lora_targets,
  engine_for_config,
  mesh_for_config,
  model_config,
)
from jaxlm.training.finetune import Pretrained
from jaxlm.training.metrics import MetricsWriter
from jaxlm.training.objectives import SpecialTokens
from jaxlm.training.span_corruption import SpanTokens
from jaxlm.training.step import TrainState

# data format -> the model head that learns it (text: "lm", next-token or masked)
HEAD_OF_FORMAT = {"text": "lm", "prompt_completion": "lm", "chat": "lm", "seq2seq": "lm",
                  "classification": "classify", "tagging": "tag"}
ENCDEC_FORMATS = ("text", "seq2seq")  # span corruption of text, or (source, target) pairs


def check_config(config: ml_collections.ConfigDict) -> None:
  if config.data.seq_len > config.model.max_len:
    raise UserError(f"data.seq_len={config.data.seq_len} is longer than model.max_len="
                      f"{config.model.max_len}; raise model.max_len or lower data.seq_len")
  if config.train.steps <= 0:
    raise UserError(f"train.steps={config.train.steps} must be positive")
  if config.train.on_nonfinite not in ("skip", "stop"):
    raise UserError(f"train.on_nonfinite={config.train.on_nonfinite!r} is not one of skip, stop")


def check_lora(config: ml_collections.ConfigDict, vocab_size: int,
               target_vocab_size: int = 0) -> None:
  """The train.lora options, and targets that match a projection (from shapes only)."""
  model_cfg = model_config(config, vocab_size, target_vocab_size)
  tokens = jnp.zeros((1, 1), jnp.int32)
  shapes = jax.eval_shape(lambda: make_model(model_cfg).init(jax.random.key(0), tokens, tokens,
                                                             tokens + 1))
  check_lora_targets(model_cfg, shapes["params"])


def check_resume(saved: dict, config: ml_collections.ConfigDict) -> None:
  """A resumed run must keep the architecture and data it was started with."""
  now = cli.config_to_json(config)
  differing = [f"{section}.{key}: {saved[section].get(key)!r} -> {value!r}"
               for section in ("model", "data") for key, value in now[section].items()
               if saved[section].get(key) != value]
  if differing:
    raise UserError("the workdir holds a run with other settings (" + "; ".join(differing) +
                      "); use a new --workdir or the original settings")


def check_task(config: ml_collections.ConfigDict, data_format: str) -> None:
  """The model family, head, tokenizer and data format must fit together."""
  family, head = config.model.family, config.model.head
  wanted = HEAD_OF_FORMAT[data_format]
  if head != wanted:
    raise UserError(f"data.format={data_format} needs model.head={wanted!r}, but this run has "
                    f"{head!r}; set --config.model.head={wanted} or use the data the head expects")
  if family == "bert" and data_format in ("prompt_completion", "chat"):
    raise UserError("prompt/completion records train a generator; a bert encoder cannot generate: "
                    "use model.family=gpt, or classification / tagging data for bert")
  if (data_format == "seq2seq" and family != "encdec") or (
      family == "encdec" and data_format not in ENCDEC_FORMATS):
    raise UserError(f"data.format={data_format} and model.family={family} do not go together: "
                    "seq2seq pairs train an encdec model, which reads text or seq2seq data; set "
                    "--config.model.family=encdec or --config.data.format=seq2seq to match")
  if family == "bert" and config.data.tokenizer != "wordpiece":
    raise UserError(f"a bert run needs data.tokenizer=wordpiece (with [CLS] [SEP] [MASK] [PAD]), "
                    f"not {config.data.tokenizer!r}; set --config.data.tokenizer=wordpiece")
  target_vocab.check_options(config.data.separate_vocab, config.data.target_vocab_size, family,
                             data_format, config.data.tokenizer)


def special_tokens(config: ml_collections.ConfigDict,
                   tokenizer) -> SpecialTokens | SpanTokens | None:
  """What the masked-LM objective needs from a BERT's tokenizer, span corruption from an
  encoder-decoder's; None for other runs."""
  if config.model.family == "encdec":
    return SpanTokens(tuple(getattr(tokenizer, "sentinel_ids", ()) or ()), tokenizer.eos_id,
                      tokenizer.kind)
  if config.model.family != "bert":
    return None
  word_start = tokenizer.word_start() if config.train.whole_word_masking else None
  return SpecialTokens(mask_id=tokenizer.mask_id, special_ids=tuple(tokenizer.special_ids),
                       word_start=word_start)


@dataclasses.dataclass
class Run:
  """Everything one training run holds; built by `set_up`, advanced by `loop.train_loop`."""
  config: ml_collections.ConfigDict
  workdir: str
  log: Callable[[str], None]
  dataset: Dataset
  engine: Engine
  iterator: Any  # grain iterator with get_state / set_state: this process's rows of each batch
  feed: sharding.BatchFeed  # training batches onto the devices
  mngr: checkpoint.Manager
  pretrained: Pretrained | None = None  # the run a finetune starts from
  # Opened once the state is loaded, so that a resume that fails writes nothing.
  writer: MetricsWriter | None = None
  state: TrainState | None = None
  start_step: int = 0
  started: float = 0.0  # perf_counter at launch
  lora_base: dict | None = None  # a LoRA run's base run, step and fingerprint (lora_run.py)


def set_up(config: ml_collections.ConfigDict, workdir: str, overrides: dict,
           log: Callable[[str], None]) -> Run:
  """Config (with a pretrained run's architecture when finetuning), data, tokenizer and engine."""
  pretrained = None
  if config.train.lora.rank and not config.init_from:
    raise UserError("train.lora.rank > 0 needs config.init_from: the run whose parameters the "
                    "adapters are trained on; set --config.init_from=PRETRAIN_WORKDIR")
  if config.init_from:
    config, pretrained, notes = finetune.prepare(config, overrides)
    if config.train.lora.rank:  # bad LoRA options fail before anything is logged or written
      check_lora(config, pretrained.tokenizer.vocab_size,
                 target_vocab.vocab_size_of(pretrained.target_tokenizer))
    log(f"finetuning from step {pretrained.step} of {pretrained.workdir}" +
        "".join(f"\n  changed: {note}" for note in notes))
  check_config(config)
  mesh_for_config(config)  # a mesh or batch that does not fit fails before the data is read
  data_cfg = DataConfig.from_config(config.data)
  check_task(config, data_cfg.resolved_format)
  dataset = load_dataset(data_cfg, workdir, pretrained, log,
                         encdec=config.model.family == "encdec")
  if dataset.labels:  # the label names are part of the run: saved with its config
    config.data.labels, config.model.num_labels = dataset.labels, len(dataset.labels)
  if checkpoint.latest_step(workdir) is not None:
    _, saved_config, _ = checkpoint.restore_metadata(workdir)  # the latest step's
    check_resume(cli.config_to_json(from_saved(saved_config)), config)
  tokenizer = dataset.tokenizer
  engine = engine_for_config(config, tokenizer.vocab_size, special_tokens(config, tokenizer),
                             target_vocab.vocab_size_of(dataset.target_tokenizer))
  feed = engine.train_feed(config.train.batch_size, config.train.grad_accum_steps)
  if dataset.sources is not None:
    iterator = dataset.sources.iterator(config.train.batch_size, config.train.seed, feed.block,
                                        feed.blocks)
  else:
    iterator = iter(train_batches(dataset.train, config.train.batch_size, config.train.seed,
                                  feed.block, feed.blocks))
  return Run(config, workdir, log, dataset, engine, iterator, feed,
             checkpoint.manager(workdir, keep=config.checkpoint.keep), pretrained)


def load_dataset(data_cfg: DataConfig, workdir: str, pretrained: Pretrained | None,
                 log: Callable[[str], None], encdec: bool = False) -> Dataset:
  """The run's tokenizer and data: prepared directories mapped (nothing tokenised), or the
  corpus read, tokenised and packed in memory. An `encdec` run's new tokenizer has sentinels;
  with data.separate_vocab it is the sources', and the targets get one of their own."""
  given = pretrained.tokenizer if pretrained else None
  if data_cfg.source != "prepared":
    check_data_source(data_cfg)
    corpus = read_corpus(data_cfg)
    tokenizer = workdir_tokenizer(data_cfg, corpus, workdir, given, encdec)
    target = workdir_target_tokenizer(data_cfg, corpus, workdir,
                                      pretrained.target_tokenizer if pretrained else None)
    dataset = build_dataset(data_cfg, corpus, tokenizer, target)
    log_data(log, data_cfg, corpus, dataset)
    return dataset
  sources = open_sources(data_cfg)
  if encdec:  # prepared data is text: span corruption
    sources.check_sentinels()
  tokenizer = workdir_tokenizer(data_cfg, None, workdir, given or sources.tokenizer)
  if tokenizer.to_json() != sources.tokenizer.to_json():
    whose = (f"the pretrained run's ({pretrained.workdir})" if given else
             f"this workdir's ({workdir}/tokenizer.json)")
    raise UserError(f"{sources.opened[0].directory} was prepared with another tokenizer than "
                    f"{whose}; prepare the data with --config.data.tokenizer_file set to that "
                    "tokenizer.json, or use a new --workdir")
  first = sources.opened[0]
  log(f"data: {sources.describe()}; {tokenizer.kind} tokenizer of {tokenizer.vocab_size} ids")
  return Dataset(tokenizer, first.train, first.val, first.val_bytes_per_token, sources=sources)


def log_data(log: Callable[[str], None], data_cfg: DataConfig, corpus, dataset: Dataset) -> None:
  tokenizer = dataset.tokenizer
  log(f"data: {len(corpus.train)} train / {len(corpus.val)} val {data_cfg.resolved_format} "
      f"examples in {dataset.train.num_full_windows:,} / {len(dataset.val):,} windows of "
      f"{data_cfg.seq_len} tokens; {tokenizer.kind} tokenizer of {tokenizer.vocab_size} ids" +
      (f", the targets' of {dataset.target_tokenizer.vocab_size}" if dataset.target_tokenizer
       else ""))
  if dataset.labels:
    log(f"labels ({len(dataset.labels)}): {', '.join(dataset.labels)}")
  if isinstance(dataset.train, (PackedRecords, PackedSeq2Seq)):
    log(f"records longer than data.seq_len: train {dataset.train.truncated} truncated / "
        f"{dataset.train.dropped} dropped, val {dataset.val.truncated} / {dataset.val.dropped}")
