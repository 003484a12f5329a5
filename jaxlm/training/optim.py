"""Learning-rate schedules and the optax optimizer."""

import jax
import jax.numpy as jnp
import optax

from jaxlm.config import section_dataclass
from jaxlm.errors import UserError


@section_dataclass("train")
class OptimConfig:
  """The optimizer's options; `jaxlm/config.py` (train.*) gives each one's meaning and default."""
  optimizer: str
  lr: float
  schedule: str
  warmup_steps: int
  steps: int
  min_lr_ratio: float
  b1: float
  b2: float
  weight_decay: float
  decay_all: bool
  momentum: float
  nesterov: bool
  grad_clip: float


def make_schedule(c: OptimConfig) -> optax.Schedule:
  warmup = max(c.warmup_steps, 0)
  end = c.lr * c.min_lr_ratio
  if c.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, c.lr, warmup, max(c.steps, warmup + 1), end)
  if c.schedule == "warmup_linear":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, c.lr, warmup),
         optax.linear_schedule(c.lr, end, max(c.steps - warmup, 1))], [warmup])
  if c.schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, c.lr, warmup), optax.constant_schedule(c.lr)], [warmup])
  if c.schedule == "rsqrt":
    def rsqrt(step):
      step = jnp.asarray(step, jnp.float32)
      ramp = c.lr * step / max(warmup, 1)
      decay = c.lr * jnp.sqrt(max(warmup, 1) / jnp.maximum(step, 1.0))
      return jnp.where(step < warmup, ramp, decay)
    return rsqrt
  raise UserError(f"train.schedule={c.schedule!r} is not one of warmup_cosine, warmup_linear, "
                   "constant, rsqrt")


# Parameters decayed by weight decay, by their own name: the kernels of projections and an untied
# output head (a projection too). Biases of any rank (qkv's is [3, heads, head_dim]), norm scales
# and the embedding tables are left alone, as in GPT-2 practice, unless train.decay_all.
# LoRA adapters (lora_a, lora_b) are projections too.
DECAYED_NAMES = frozenset({"kernel", "head", "lora_a", "lora_b"})


def decay_mask(params) -> object:
  """True for the leaves that get weight decay (see DECAYED_NAMES), in any layout of the model."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: str(getattr(path[-1], "key", path[-1])) in DECAYED_NAMES, params)


def applied_lr(opt_state, schedule: optax.Schedule) -> jax.Array:
  """The learning rate this update is given: the schedule at optax's own step count.

  That count lives in the optimizer state and rolls back with an update the guard refuses, so it
  can trail the training step; reading it here keeps the logged rate equal to the applied one.
  """
  counts = [s.count for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
            if isinstance(s, optax.ScaleByScheduleState)]
  return jnp.asarray(schedule(counts[0]), jnp.float32)


def make_optimizer(c: OptimConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = make_schedule(c)
  mask = None if c.decay_all else decay_mask
  clip = [optax.clip_by_global_norm(c.grad_clip)] if c.grad_clip > 0 else []
  if c.optimizer == "adamw":
    core = [optax.adamw(schedule, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay, mask=mask)]
  elif c.optimizer == "adam":
    core = [optax.add_decayed_weights(c.weight_decay, mask=mask),
            optax.adam(schedule, b1=c.b1, b2=c.b2)]
  elif c.optimizer == "sgd":
    core = [optax.add_decayed_weights(c.weight_decay, mask=mask),
            optax.sgd(schedule, momentum=c.momentum or None, nesterov=c.nesterov)]
  else:
    raise UserError(f"train.optimizer={c.optimizer!r} is not one of adamw, adam, sgd")
  return optax.chain(*clip, *core), schedule
