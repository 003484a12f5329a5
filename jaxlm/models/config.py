"""The architecture options of every model family, read from `config.model` (see jaxlm/config.py)."""

from typing import Any

import jax
import jax.numpy as jnp

from jaxlm.config import section_dataclass
from jaxlm.errors import UserError

# model.remat -> what the backward pass may keep from the forward (None: keep nothing, recompute all).
REMAT_POLICIES = {"none": None, "full": None,
                  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


@section_dataclass("model")
class ModelConfig:
  """The architecture: see `jaxlm/config.py` (model.*) for each field's meaning and default;
  `vocab_size` is the tokenizer's."""
  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  max_len: int
  dropout: float
  positions: str
  norm: str
  mlp: str
  tie_embeddings: bool
  use_bias: bool
  norm_eps: float
  dtype: str
  remat: str
  scan_layers: bool
  attention_impl: str

  def __post_init__(self):
    if self.d_model % self.num_heads:
      raise UserError(f"model.d_model={self.d_model} is not divisible by model.num_heads="
                       f"{self.num_heads}; choose a head count that divides it")
    for field, allowed in (("positions", ("learned", "rope")), ("norm", ("layernorm", "rmsnorm")),
                           ("mlp", ("gelu", "swiglu")), ("dtype", ("float32", "bfloat16")),
                           ("remat", tuple(REMAT_POLICIES)),
                           ("attention_impl", ("auto", "xla", "cudnn"))):
      if getattr(self, field) not in allowed:
        raise UserError(f"model.{field}={getattr(self, field)!r} is not one of {allowed}")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def compute_dtype(self) -> Any:
    return jnp.dtype(self.dtype)

