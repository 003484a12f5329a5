"""A LoRA run and its base: what its checkpoints hold, and the base they must be restored onto.

A LoRA run's checkpoint state holds the adapters and their optimizer state only (`saved_state`);
the frozen base parameters are read from the base run (config.init_from) at the step recorded in
the checkpoint's config under "lora_base", with a fingerprint of them (a sum of squares per
tensor). Restoring onto another base run, another step, or a base whose parameters have changed
since is refused in one line (`check_base`).
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import cli
from jaxlm.errors import UserError
from jaxlm.models import lora
from jaxlm.training import checkpoint

RECORD = "lora_base"  # the key of the base reference in a LoRA checkpoint's config JSON
# Sums of squares of the same parameters on another mesh differ by float32 reassociation (~1e-7
# relative); one optimizer step changes them by far more than this.
FINGERPRINT_RTOL = 1e-5


def is_lora(config) -> bool:
  return config.train.lora.rank != 0


def fingerprint(frozen) -> list[float]:
  """Sum of squares of each frozen tensor, in tree order."""
  sums = jax.jit(lambda t: [jnp.sum(jnp.square(x.astype(jnp.float32)))
                            for x in jax.tree.leaves(t)])(frozen)
  return [float(s) for s in jax.device_get(sums)]


def base_record(workdir: str, step: int, frozen) -> dict:
  return {"workdir": workdir, "step": step, "fingerprint": fingerprint(frozen)}


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


def restore_params(workdir: str, step: int, abstract_params, record: dict | None):
  """A LoRA run's parameters for evaluation: its base run's at the recorded step, and its
  adapters from its own checkpoint, placed like `abstract_params`."""
  if record is None:
    check_base(None, {}, workdir)
  adapters_target, base_target = lora.split(abstract_params)
  base = checkpoint.restore_params(record["workdir"], record["step"], base_target)
  check_base(record, base_record(record["workdir"], record["step"], base), workdir)
  adapters = checkpoint.restore_params(workdir, step, adapters_target)
  return lora.combine(adapters, base)
