"""Starting a run from a pretrained run's parameters (`--config.init_from=PATH`).

Only the parameters come over, through Orbax, onto this run's mesh. The architecture and tokenizer
are the pretrained run's; the task (`config.TASK_OPTIONS`: the output head and its labels), the
optimizer state, schedule, step counter and workdir are this run's own. Parameters this run has and
the pretrained one lacks (a new classification head) start from this run's initialisation; those
only the pretrained one has (its masked-LM head) are left behind; the log lists both. The runtime
model options (`config.RUNTIME_MODEL_OPTIONS`) are this run's when it chooses them: another
`model.scan_layers` converts the pretrained layers (scan_layout.py). Restarting the finetune run
resumes it from its own checkpoints, not from the pretrained run.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections

from jaxlm.config import (
  RUNTIME_MODEL_OPTIONS,
  TASK_OPTIONS,
  TOKENIZER_OPTIONS,
  base_config,
  from_saved,
)
from jaxlm.data import Tokenizer, tokenizer_from_json
from jaxlm.data.target_vocab import target_of
from jaxlm.errors import UserError
from jaxlm.training import checkpoint, scan_layout

# Model options a finetune run may change, each reported in the log: the runtime options, and a
# longer context (a learned position table grows, see restore_params).
CHANGEABLE = (*RUNTIME_MODEL_OPTIONS, "model.max_len")


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """The run a finetune starts from."""
  workdir: str
  step: int
  config: dict  # its full config as JSON
  tokenizer: Tokenizer
  target_tokenizer: Tokenizer | None = None  # its separate target vocabulary's; None: shared


def prepare(config: ml_collections.ConfigDict,
            overrides: dict) -> tuple[ml_collections.ConfigDict, Pretrained, list[str]]:
  """(this run's config with the pretrained architecture, the pretrained run, notes for the log)."""
  workdir, step = resolve_source(config.init_from, config.init_step)
  step, saved, tokenizer = checkpoint.restore_metadata(workdir, step)
  saved = from_saved(saved)
  if saved.train.lora.rank:
    raise UserError(f"config.init_from={config.init_from} is a LoRA run (its checkpoints hold "
                    "adapters only); merge it first: python -m jaxlm.convert merge-lora "
                    f"--workdir={workdir} --out=MERGED, and start from MERGED")
  config, notes = inherit(config, saved.to_dict(), overrides)
  return config, Pretrained(workdir, step, saved.to_dict(), tokenizer_from_json(tokenizer),
                            target_of(tokenizer)), notes


def resolve_source(init_from: str, init_step: int) -> tuple[str, int | None]:
  """(pretrained workdir, step or None for its latest) from a workdir or `WORKDIR/checkpoints/N`."""
  path = os.path.abspath(init_from)
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return path, None if init_step < 0 else init_step
  parent = os.path.dirname(path)
  if (os.path.basename(parent) == "checkpoints" and os.path.basename(path).isdigit()
      and os.path.isdir(parent)):  # a step that is not there is reported with those that are
    return os.path.dirname(parent), int(os.path.basename(path))
  if not os.path.exists(path):
    raise UserError(f"config.init_from={init_from} does not exist; give the pretrain run's "
                          "--workdir or one of its checkpoints/STEP directories")
  raise UserError(f"config.init_from={init_from} is not a jaxlm workdir or checkpoint (no "
                        "checkpoints/ inside); give the pretrain run's --workdir")


def inherit(config: ml_collections.ConfigDict, pretrained: dict,
            overrides: dict) -> tuple[ml_collections.ConfigDict, list[str]]:
  """This run's config with the pretrained architecture and tokenizer settings.

  A command-line override that contradicts them is refused (all such fields listed at once), except
  the CHANGEABLE ones, which are kept and returned as notes for the log. A runtime model option
  that `config` sets to other than its default (a finetune config file's choice, such as
  configs/finetune_llama.py's bfloat16 and scanned layers) is kept too, as if given as an override.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  chosen = {**_runtime_choices(config), **overrides}
  inherited = {f"model.{k}": v for k, v in pretrained["model"].items()
               if f"model.{k}" not in TASK_OPTIONS}
  inherited.update({key: pretrained["data"][key.split(".")[1]] for key in TOKENIZER_OPTIONS})
  refused, notes = [], []
  for key, value in inherited.items():
    section, name = key.split(".")
    if key in chosen and chosen[key] != value:
      if key in CHANGEABLE:
        notes.append(f"{key}: {value!r} in the pretrained run -> {chosen[key]!r} here")
        continue
      refused.append(f"{key} (pretrained {value!r}, override {chosen[key]!r})")
    else:
      config[section][name] = value
  if refused:
    raise UserError("init_from fixes the architecture and tokenizer, but these overrides differ: "
                      + "; ".join(refused) + "; drop them")
  if config.model.max_len < pretrained["model"]["max_len"]:
    raise UserError(f"model.max_len={config.model.max_len} is shorter than the pretrained "
                      f"{pretrained['model']['max_len']}; it may only grow")
  return config, notes


def _runtime_choices(config: ml_collections.ConfigDict) -> dict:
  """The runtime model options `config` sets to other than base_config's defaults."""
  defaults = base_config().model
  names = [key.split(".")[1] for key in RUNTIME_MODEL_OPTIONS]
  return {f"model.{name}": config.model[name] for name in names
          if config.model[name] != defaults[name]}


def restore_params(workdir: str, step: int, target_params, fresh_params,
                   pretrained_max_len: int) -> tuple[dict, list[str]]:
  """(pretrained parameters placed like `target_params` (abstract, with shardings), notes for the
  log).

  The checkpoint is read in its own layer layout and converted to this run's (model.scan_layers
  may differ: see scan_layout.py). A learned position table that this run made longer keeps its
  pretrained rows; the new rows come from `fresh_params`, this run's own initialisation, as do
  parameters the checkpoint lacks.
  """
  saved = checkpoint.param_paths(workdir, step)
  layout = scan_layout.is_scanned(saved)
  abstract = _subtree(scan_layout.abstract_in(target_params, layout), saved)
  target = abstract.get("pos_embedding")
  grown = target is not None and target.shape[0] > pretrained_max_len
  if grown:
    abstract["pos_embedding"] = jax.ShapeDtypeStruct((pretrained_max_len, target.shape[1]),
                                                     target.dtype, sharding=target.sharding)
  params = checkpoint.restore_params(workdir, step, abstract)
  notes = []
  wanted_layout = scan_layout.tree_is_scanned(target_params)
  if None not in (layout, wanted_layout) and layout != wanted_layout:
    notes.append(scan_layout.describe(params, wanted_layout))
    params = scan_layout.convert(params, target_params, free=True)
  if grown:
    table = jnp.concatenate([params["pos_embedding"],
                             fresh_params["pos_embedding"][pretrained_max_len:]])
    params["pos_embedding"] = jax.device_put(table, target.sharding)
  # Compared without layer indices: the two trees may be in different layouts.
  wanted = [path for path, _ in scan_layout.flat(target_params)]
  have = {scan_layout.canonical(path) for path in saved}
  new = sorted(path for path in wanted if scan_layout.canonical(path) not in have)
  for path in new:
    scan_layout.put(params, path, scan_layout.get(fresh_params, path))
  if new:
    notes.append("new parameters (freshly initialised): " + ", ".join("/".join(p) for p in new))
  used = {scan_layout.canonical(path) for path in wanted}
  left = sorted(path for path in saved if scan_layout.canonical(path) not in used)
  if left:
    notes.append("pretrained parameters not used: " + ", ".join("/".join(p) for p in left))
  return params, notes


def _subtree(tree: dict, paths: set[tuple[str, ...]]) -> dict:
  """The leaves of `tree` whose paths are in `paths`, as a nested dict."""
  kept = {}
  for path, leaf in scan_layout.flat(tree):
    if path in paths:
      scan_layout.put(kept, path, leaf)
  return kept
