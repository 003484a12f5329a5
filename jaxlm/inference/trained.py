"""A trained run loaded back from its workdir, for `evaluate` and `sample`.

The checkpoint carries the run's config and tokenizer, so nothing is retrained and the architecture
cannot drift; options that only change how the model is used (eval.*, mesh.*, the data to evaluate
on, the runtime model options of `config.RUNTIME_MODEL_OPTIONS`) may be overridden. Another
`model.scan_layers` than the run's converts its parameters as they are restored (scan_layout.py).
"""

import dataclasses

import ml_collections

from jaxlm.config import fixed_by_checkpoint, from_saved
from jaxlm.data import Tokenizer, tokenizer_from_json
from jaxlm.data.target_vocab import target_of, vocab_size_of
from jaxlm.errors import UserError
from jaxlm.models import ModelConfig
from jaxlm.training import checkpoint, lora_run, scan_layout
from jaxlm.training.engine import Engine, engine_for_config
from jaxlm.training.setup import special_tokens


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  config: ml_collections.ConfigDict
  tokenizer: Tokenizer
  model_cfg: ModelConfig
  engine: Engine
  params: object
  step: int
  # What decodes generated ids: a separate target vocabulary's tokenizer, else `tokenizer`.
  target_tokenizer: Tokenizer | None = None

  def __post_init__(self):
    if self.target_tokenizer is None:
      object.__setattr__(self, "target_tokenizer", self.tokenizer)


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict) -> ml_collections.ConfigDict:
  """Sets `{"eval.batch_size": 8, ...}` on a copy of config, refusing architecture changes."""
  frozen = sorted(k for k in overrides if fixed_by_checkpoint(k))
  if frozen:
    raise UserError(f"{', '.join(frozen)} cannot change after training (the checkpoint fixes "
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
  """The run's parameters (never its optimizer state, 2x their size under Adam), config and
  tokenizer, on an engine for this process's devices."""
  step, config_json, tokenizer_json = checkpoint.restore_metadata(workdir, step)
  config = apply_overrides(from_saved(config_json), overrides or {})
  tokenizer, target = tokenizer_from_json(tokenizer_json), target_of(tokenizer_json)
  engine = engine_for_config(config, tokenizer.vocab_size, special_tokens(config, tokenizer),
                             vocab_size_of(target))
  if lora_run.is_lora(config):  # its base run's parameters, plus its own adapters
    params = lora_run.restore_params(workdir, step, engine.abstract_state.params,
                                     config_json.get(lora_run.RECORD))
  else:
    params = scan_layout.restore_params(workdir, step, engine.abstract_state.params)
  return TrainedRun(config, tokenizer, engine.model.cfg, engine, params, step, target)


def check_generative(workdir: str, step: int | None) -> tuple[int, dict, dict]:
  """Only a GPT or an encoder-decoder generates: refused, before any parameter is read, for an
  encoder. Returns the checkpoint's (step, config dict, tokenizer dict)."""
  metadata = checkpoint.restore_metadata(workdir, step)
  config = metadata[1]
  family = config["model"].get("family", "gpt")
  if family == "bert":
    raise UserError(f"{workdir} holds a {family} run: an encoder has no next-token head and "
                    "cannot generate text; evaluate it with `python -m jaxlm.evaluate "
                    f"--workdir={workdir}`, or sample from a gpt run")
  return metadata
