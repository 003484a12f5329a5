"""A LoRA run and its base: what its checkpoints hold, and the base they must be restored onto.

A LoRA run's checkpoint state holds the adapters and their optimizer state only (`saved_state`);
the frozen base parameters are read from the base run (config.init_from) at the step recorded in
the checkpoint's config under "lora_base", with a fingerprint of them (a sum of squares per
tensor, in the base checkpoint's own layer layout, whichever `model.scan_layers` the LoRA run
chose). Restoring onto another base run, another step, or a base whose parameters have changed
since is refused in one line (`check_base`).
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import cli
from jaxlm.errors import UserError
from jaxlm.models import lora
from jaxlm.training import checkpoint, scan_layout

RECORD = "lora_base"  # the key of the base reference in a LoRA checkpoint's config JSON
# Sums of squares of the same parameters on another mesh differ by float32 reassociation (~1e-7
# relative); one optimizer step changes them by far more than this.
FINGERPRINT_RTOL = 1e-5


def is_lora(config) -> bool:
  return config.train.lora.rank != 0


def fingerprint(frozen, scanned: bool | None = None) -> list[float]:
  """Sum of squares of each frozen tensor, in tree order, of the tensors as they are in the
  `scanned` layout (None: `frozen`'s own), whichever layout `frozen` is in."""
  have = scan_layout.tree_is_scanned(frozen)
  if scanned is None or have in (None, scanned):
    sums = jax.jit(lambda t: [jnp.sum(jnp.square(x.astype(jnp.float32)))
                              for x in jax.tree.leaves(t)])(frozen)
    return [float(s) for s in jax.device_get(sums)]

  def per_layer(path, x):  # a stacked tensor: one sum per layer
    axes = tuple(range(1, x.ndim)) if any(k.key == "blocks" for k in path) else None
    return jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axes)
  sums = jax.device_get(jax.jit(lambda t: jax.tree_util.tree_map_with_path(per_layer, t))(frozen))
  # The per-layer sums regrouped on the host as the other layout's tensors.
  return [float(np.sum(s)) for s in jax.tree.leaves(scan_layout.in_layout(sums, scanned))]


def base_record(workdir: str, step: int, frozen) -> dict:
  """The reference to a base run's step, with the fingerprint of its parameters `frozen` (in any
  layer layout) as its checkpoint holds them."""
  layout = scan_layout.is_scanned(checkpoint.param_paths(workdir, step))
  return {"workdir": workdir, "step": step, "fingerprint": fingerprint(frozen, layout)}


def check_base(saved: dict | None, current: dict, where: str) -> None:
  """Refuses a base that is not the one the adapters in `where` were trained on."""
  if saved is None:
    raise UserError(f"{where} is a LoRA run whose checkpoint has no record of its base run; "
                    "finetune again into a new --workdir")
  if (saved["workdir"], saved["step"]) != (current["workdir"], current["step"]):
    raise UserError(f"the adapters in {where} were trained on step {saved['step']} of "
                    f"{saved['workdir']}, not step {current['step']} of {current['workdir']}; set "
                    f"--config.init_from={saved['workdir']} --config.init_step={saved['step']}")
  if not np.allclose(saved["fingerprint"], current["fingerprint"], rtol=FINGERPRINT_RTOL, atol=0):
    raise UserError(f"step {saved['step']} of the base run {saved['workdir']} is not the one the "
                    f"adapters in {where} were trained on (its parameters differ); restore that "
                    "base run")


def saved_state(state):
  """What a checkpoint of `state` holds: for a LoRA run the adapters (not the frozen base)."""
  return state.replace(params=lora.split(state.params)[0])


def config_json(config, record: dict | None) -> dict:
  """The config JSON a checkpoint saves, with a LoRA run's base record."""
  return {**cli.config_to_json(config), **({RECORD: record} if record else {})}


def read_record(workdir: str, step: int) -> dict | None:
  return checkpoint.restore_metadata(workdir, step)[1].get(RECORD)


def restore_params(workdir: str, step: int, abstract_params, record: dict | None,
                   log=scan_layout.stderr_log):
  """A LoRA run's parameters for evaluation: its base run's at the recorded step, and its
  adapters from its own checkpoint, placed like `abstract_params` (in its layer layout: each
  checkpoint is converted from its own, see scan_layout.py)."""
  if record is None:
    check_base(None, {}, workdir)
  adapters_target, base_target = lora.split(abstract_params)
  base = scan_layout.restore_params(record["workdir"], record["step"], base_target, log)
  check_base(record, base_record(record["workdir"], record["step"], base), workdir)
  adapters = scan_layout.restore_params(workdir, step, adapters_target, log)
  return lora.combine(adapters, base)
