"""An imported model written as step 0 of a jaxlm run, so every verb takes it like a trained run."""

import os

import jax
import ml_collections

from jaxlm import cli
from jaxlm.config import fixed_by_checkpoint
from jaxlm.data import pack_documents, save_tokenizer, train_batches
from jaxlm.data.dataset import TOKENIZER_FILE
from jaxlm.data.target_vocab import TARGET_TOKENIZER_FILE, vocab_size_of, with_target
from jaxlm.errors import UserError
from jaxlm.models import lora
from jaxlm.training import checkpoint, finetune, lora_run, scan_layout
from jaxlm.training.engine import engine_for_config


def imported_config(config: ml_collections.ConfigDict, overridden: set[str], model_fields: dict,
                    tokenizer, labels: tuple[str, ...] = ()) -> ml_collections.ConfigDict:
  """`config` with the architecture, labels and tokenizer of the imported model."""
  fixed = sorted(key for key in overridden if key.startswith("model.") and (
      fixed_by_checkpoint(key) or key.removeprefix("model.") in model_fields))
  if fixed:
    raise UserError(f"the architecture comes from the model's config.json, so drop these "
                      f"overrides: {', '.join(fixed)}")
  config = ml_collections.ConfigDict(config.to_dict())
  if labels:
    if "data.labels" in overridden and tuple(config.data.labels) != tuple(labels):
      raise UserError(f"data.labels={tuple(config.data.labels)} differs from the model's "
                      f"labels {tuple(labels)} (config.json's id2label); drop the override")
    config.data.labels = tuple(labels)
  config.model.update(model_fields)
  config.data.tokenizer, config.data.vocab_size = tokenizer.kind, tokenizer.vocab_size
  if "data.seq_len" not in overridden:
    config.data.seq_len = config.model.max_len
  if config.data.seq_len > config.model.max_len:
    raise UserError(f"data.seq_len={config.data.seq_len} is longer than the model's context "
                      f"({config.model.max_len} positions); lower --config.data.seq_len")
  return config


def fresh_data_state() -> dict:
  """The position of a training iterator that has read nothing (the same for any data), so that
  `train` on the imported workdir starts its data from the beginning."""
  two_windows = pack_documents([[0, 0]], eos_id=0, seq_len=1)
  return iter(train_batches(two_windows, 2, 0, 0, 1)).get_state()


def saved_tokenizers(workdir: str, tokenizer, target=None) -> dict:
  """Writes WORKDIR/tokenizer.json (and a separate vocabulary's target_tokenizer.json); returns
  the checkpoint's tokenizer JSON, which holds both."""
  save_tokenizer(tokenizer, os.path.join(workdir, TOKENIZER_FILE))
  if target is not None:
    save_tokenizer(target, os.path.join(workdir, TARGET_TOKENIZER_FILE))
  return with_target(tokenizer.to_json(), target)


def write_run(workdir: str, config: ml_collections.ConfigDict, tokenizer, params,
              target_tokenizer=None) -> int:
  """Saves `params` (a tree, or a function of the run's engine that returns one) as step 0 of a
  new run in `workdir` (`target_tokenizer`: a separate target vocabulary's); returns the
  parameter count."""
  cli.ensure_writable(workdir)
  if checkpoint.latest_step(workdir) is not None:
    raise UserError(f"{workdir} already holds a run; import into a new --workdir")
  engine = engine_for_config(config, tokenizer.vocab_size,
                             target_vocab_size=vocab_size_of(target_tokenizer))
  if callable(params):  # streamed onto the engine's mesh (convert.streamed_params)
    params = params(engine)
  else:
    params = jax.device_put(params, engine.state_shardings.params)
  # The parameters alone: `train` on this workdir starts a fresh optimizer state from them
  # (training.loop.start_or_resume), so the import never holds one (2x the model under AdamW).
  tokenizers = saved_tokenizers(workdir, tokenizer, target_tokenizer)
  checkpoint.write_once(workdir, 0, {"params": params}, cli.config_to_json(config), tokenizers,
                        fresh_data_state(), keep=config.checkpoint.keep)
  return sum(x.size for x in jax.tree.leaves(params))


def write_lora_run(workdir: str, config: ml_collections.ConfigDict, pretrained,
                   adapters: dict) -> int:
  """Saves imported LoRA `adapters` over the base run `pretrained` (a finetune.Pretrained) as step
  0 of a new LoRA run in `workdir`; returns the adapters' parameter count."""
  cli.ensure_writable(workdir)
  if checkpoint.latest_step(workdir) is not None:
    raise UserError(f"{workdir} already holds a run; import into a new --workdir")
  engine = engine_for_config(config, pretrained.tokenizer.vocab_size,
                             target_vocab_size=vocab_size_of(pretrained.target_tokenizer))
  params, _ = finetune.restore_params(pretrained.workdir, pretrained.step,
                                      engine.abstract_state.params, engine.init().params,
                                      pretrained.config["model"]["max_len"])
  fresh, base = lora.split(params)
  adapters = scan_layout.in_layout(adapters, config.model.scan_layers)  # PEFT's: one per layer
  if jax.tree.structure(fresh) != jax.tree.structure(adapters):
    raise UserError("the adapter's modules are not the ones train.lora.targets selects; this is "
                    "a bug in the import, report it")
  state = engine.from_params(lora.combine(adapters, base))
  record = lora_run.base_record(pretrained.workdir, pretrained.step, lora.split(state.params)[1])
  tokenizers = saved_tokenizers(workdir, pretrained.tokenizer, pretrained.target_tokenizer)
  checkpoint.write_once(workdir, 0, lora_run.saved_state(state),
                        lora_run.config_json(config, record), tokenizers, fresh_data_state(),
                        keep=config.checkpoint.keep)
  return sum(x.size for x in jax.tree.leaves(adapters))
