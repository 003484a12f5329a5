"""Learning-rate schedules and the optax optimizer."""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jaxlm.config import ConfigError


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """See `jaxlm/config.py` (train.*) for the meaning of each field."""
  optimizer: str = "adamw"
  lr: float = 1e-3
  schedule: str = "warmup_cosine"
  warmup_steps: int = 100
  steps: int = 1000
  min_lr_ratio: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  weight_decay: float = 0.1
  decay_all: bool = False
  momentum: float = 0.9
  nesterov: bool = False
  grad_clip: float = 1.0

  @classmethod
  def from_config(cls, train) -> "OptimConfig":
    return cls(**{f.name: train[f.name] for f in dataclasses.fields(cls)})


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
  raise ConfigError(f"train.schedule={c.schedule!r} is not one of warmup_cosine, warmup_linear, "
                   "constant, rsqrt")


def decay_mask(params) -> object:
  """True for matrices that get weight decay; norms, biases and embeddings are left alone."""
  def is_decayed(path, leaf):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    layer_axes = 1 if name.startswith("blocks/") else 0  # model.scan_layers stacks the layers
    return leaf.ndim - layer_axes >= 2 and "embedding" not in name
  return jax.tree_util.tree_map_with_path(is_decayed, params)


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
    raise ConfigError(f"train.optimizer={c.optimizer!r} is not one of adamw, adam, sgd")
  return optax.chain(*clip, *core), schedule
