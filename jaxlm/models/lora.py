"""LoRA: low-rank adapters on a model's projections, and the split of its parameters into the
trainable adapters and the frozen rest.

A projection `y = x @ W` whose module path matches `train.lora.targets` gains two parameters beside
its kernel: `lora_a  # [*in, rank]` (uniform in +-1/sqrt(fan_in), as PEFT's Kaiming init) and
`lora_b  # [rank, *out]` (zeros), and computes `y = x @ W + (alpha / rank) * dropout(x) @ A @ B`.
B = 0 makes a fresh adapter exactly the base model. Adapter dropout draws from the "dropout" rng,
which only training passes in, so evaluation and decoding are deterministic.

Parameters are plain nested dicts; `split` separates the adapters (`lora_a`, `lora_b` leaves) from
the rest, `combine` puts them back, and a tree without adapters is all trainable, so the same train
step serves full and LoRA finetunes.
"""

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.config import section_dataclass
from jaxlm.errors import UserError

ADAPTER_NAMES = ("lora_a", "lora_b")
# train.lora.targets shorthands -> the regular expression over module paths ("block_0/attn/qkv").
TARGETS = {"attention": r"attn/(qkv|q|kv|out)$", "mlp": r"mlp/(wi|wo)$",
           "all": r"attn/(qkv|q|kv|out)$|mlp/(wi|wo)$"}


@section_dataclass("train.lora")
class LoraConfig:
  """The adapter options; `jaxlm/config.py` (train.lora.*) gives each one's meaning."""
  rank: int
  alpha: float
  dropout: float
  targets: str
  base_dtype: str

  def __post_init__(self):
    if self.rank <= 0:
      raise UserError(f"train.lora.rank={self.rank} must be positive; set the adapter rank "
                      "(e.g. 8), or 0 for a full finetune")
    if self.alpha <= 0:
      raise UserError(f"train.lora.alpha={self.alpha} must be positive; the adapters are scaled "
                      "by alpha / rank (e.g. 16)")
    if not 0 <= self.dropout < 1:
      raise UserError(f"train.lora.dropout={self.dropout} is not a probability; use a value in "
                      "[0, 1)")
    if self.base_dtype not in ("float32", "bfloat16"):
      raise UserError(f"train.lora.base_dtype={self.base_dtype!r} is not one of float32, bfloat16")
    try:
      re.compile(self.pattern)
    except re.error as e:
      raise UserError(f"train.lora.targets={self.targets!r} is not a regular expression ({e}); "
                      f"use one of {', '.join(TARGETS)} or a pattern over parameter paths") from None

  @property
  def scale(self) -> float:
    return self.alpha / self.rank

  @property
  def pattern(self) -> str:
    return TARGETS.get(self.targets, self.targets)

  def matches(self, module_path: tuple[str, ...]) -> bool:
    return re.search(self.pattern, "/".join(module_path)) is not None


def lora_config(node) -> LoraConfig | None:
  """The `train.lora` section as a LoraConfig, or None when rank is 0 (LoRA off)."""
  if node.rank == 0:
    return None
  return LoraConfig(**{f.name: node[f.name] for f in dataclasses.fields(LoraConfig)})


def a_init(fan_in: int, axes: tuple[str | None, ...]):
  bound = 1.0 / math.sqrt(fan_in)
  init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
  return nn.with_logical_partitioning(init, axes)


def adapter_delta(module: nn.Module, lora: LoraConfig, x: jax.Array, in_dims: int,
                  features: tuple[int, ...], axes: tuple[str | None, ...], dtype: Any,
                  project) -> jax.Array:
  """`(alpha / rank) * dropout(x) @ A @ B  # [..., *features]`, declaring A and B on `module` (a
  Linear whose compact call is running)."""
  in_shape = x.shape[-in_dims:]
  a = module.param("lora_a", a_init(math.prod(in_shape), (*axes[:in_dims], None)),
                   (*in_shape, lora.rank))  # [*in, rank]
  b = module.param("lora_b", nn.with_logical_partitioning(nn.initializers.zeros,
                                                          (None, *axes[in_dims:])),
                   (lora.rank, *features))  # [rank, *out]
  if lora.dropout > 0 and module.has_rng("dropout"):
    x = nn.Dropout(lora.dropout, deterministic=False, name="lora_dropout")(x)
  low = project(x.astype(dtype), a.astype(dtype), in_dims)  # [..., rank]
  return project(low, b.astype(dtype), 1) * jnp.asarray(lora.scale, dtype)


def is_adapter(name: str) -> bool:
  return name in ADAPTER_NAMES


def _select(tree: Mapping, keep) -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      sub = _select(value, keep)
      if sub:
        out[key] = sub
    elif keep(key):
      out[key] = value
  return out


def has_adapters(params: Mapping) -> bool:
  return bool(_select(params, is_adapter))


def split(params: Mapping) -> tuple[dict, dict]:
  """(trainable, frozen): the adapters and the rest, or everything and {} without adapters."""
  if not has_adapters(params):
    return params, {}
  return _select(params, is_adapter), _select(params, lambda k: not is_adapter(k))


def combine(trainable: Mapping, frozen: Mapping) -> dict:
  """The inverse of `split`: one tree with the leaves of both."""
  out = dict(frozen)
  for key, value in trainable.items():
    out[key] = combine(value, out[key]) if isinstance(value, Mapping) and key in out else value
  return out


def cast_frozen(params: Mapping, dtype: str) -> dict:
  """`params` with the frozen (non-adapter) leaves in `dtype` (boxed leaves keep their box)."""
  trainable, frozen = split(params)
  if not frozen:
    return params

  def cast(x):
    if isinstance(x, nn.LogicallyPartitioned):
      return x.replace_boxed(x.unbox().astype(dtype))
    return x.astype(dtype)
  frozen = jax.tree.map(cast, frozen, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  return combine(trainable, frozen)


def merged(params: Mapping, lora: LoraConfig, stacked: bool = False) -> dict:
  """Ordinary parameters: every adapted kernel W + (alpha / rank) A @ B, the adapters dropped.
  Under scanned layers (`blocks`: `stacked`) each leaf leads with a layer axis: A B per layer."""
  product = lambda a, b: jnp.tensordot(a, b, axes=1)  # contracts the rank axis
  out = {}
  for key, value in params.items():
    if not isinstance(value, Mapping):
      if not is_adapter(key):
        out[key] = value
    elif "lora_a" in value:
      a, b, kernel = value["lora_a"], value["lora_b"], value["kernel"]
      delta = (jax.vmap(product) if stacked else product)(a.astype(jnp.float32),
                                                           b.astype(jnp.float32))
      out[key] = {**{k: v for k, v in value.items() if not is_adapter(k)},
                  "kernel": (kernel.astype(jnp.float32) + lora.scale * delta).astype(kernel.dtype)}
    else:
      out[key] = merged(value, lora, stacked or key == "blocks")
  return out
