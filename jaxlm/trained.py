"""A trained run loaded back from its workdir, for `evaluate` and `sample`.

The checkpoint carries the run's config and tokenizer, so nothing is retrained and the architecture
cannot drift; options that only change how the model is used (eval.*, mesh.*, the data to evaluate
on) may be overridden.
"""

import dataclasses

import ml_collections

from jaxlm import checkpoint, sharding
from jaxlm.config import ConfigError, from_saved
from jaxlm.corpus import DataConfig
from jaxlm.data import Tokenizer, tokenizer_from_json
from jaxlm.engine import Engine, build_engine
from jaxlm.model import ModelConfig
from jaxlm.optim import OptimConfig

# Overrides that would change what the checkpoint's parameters mean.
FROZEN_PREFIXES = ("model.", "data.tokenizer", "data.vocab_size", "data.sp_model_type")


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  config: ml_collections.ConfigDict
  tokenizer: Tokenizer
  model_cfg: ModelConfig
  engine: Engine
  params: object
  step: int


def model_config(config: ml_collections.ConfigDict, vocab_size: int) -> ModelConfig:
  return ModelConfig(vocab_size=vocab_size, **config.model.to_dict())


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """Sets `{"eval.batch_size": 8, ...}` on a copy of config, refusing architecture changes."""
  frozen = sorted(k for k in overrides if k.startswith(FROZEN_PREFIXES))
  if frozen:
    raise ConfigError(f"{', '.join(frozen)} cannot change after training (the checkpoint fixes "
                      "the architecture and tokenizer); drop these overrides")
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config


def load(workdir: str, step: int | None = None, overrides: dict | None = None) -> TrainedRun:
  step, config_json, tokenizer_json = checkpoint.restore_metadata(workdir, step)
  config = apply_overrides(from_saved(config_json), overrides or {})
  tokenizer = tokenizer_from_json(tokenizer_json)
  model_cfg = model_config(config, tokenizer.vocab_size)
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  batch_axes = sharding.check_batch(config.eval.batch_size, 1, mesh, "eval.batch_size")
  engine = build_engine(model_cfg, OptimConfig.from_config(config.train), mesh, config.mesh.rules,
                        config.train.seed, DataConfig.from_config(config.data).seq_len,
                        batch_axes=batch_axes)
  with checkpoint.manager(workdir, read_only=True) as mngr:
    state, _ = checkpoint.restore(mngr, step, engine.abstract_state)
  return TrainedRun(config, tokenizer, model_cfg, engine, state.params, step)
