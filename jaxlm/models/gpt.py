"""A decoder-only Transformer (GPT) in Flax Linen.

Every parameter carries logical axis names (`vocab`, `embed`, `heads`, `kv`, `mlp`, `pos`, `norm`)
and activations are constrained with `act_*` names; `parallel/sharding.py` maps both onto the
device mesh. The model is pure: `GPT(cfg).apply({"params": params}, ...)`. With `decode=True` it
keeps a KV cache in the "cache" collection, so a prompt is prefilled in one call and then extended
a token at a time. Its embeddings and blocks are shared with BERT (`layers.py`).

Speed/memory options that leave the numbers unchanged (up to float rounding): `remat` (recompute
activations in the backward pass), `scan_layers` (one `nn.scan` over stacked layers: faster
compiles; parameters get a leading layer axis under `blocks`, see `stack_layers` and
`unstack_layers`) and `attention_impl` (XLA or cuDNN flash attention). `dtype="bfloat16"` is
mixed precision: parameters, logits and the loss stay float32, matmuls and activations run in
bfloat16.
"""

import flax.linen as nn
import jax.numpy as jnp

from jaxlm.models.config import ModelConfig
from jaxlm.models.layers import Array, blocks, embed, norm_layer, param_init


class GPT(nn.Module):
  """Maps token ids to next-token logits (float32)."""
  cfg: ModelConfig
  decode: bool = False

  @nn.compact
  def __call__(self, inputs: Array, positions: Array, segment_ids: Array,
               deterministic: bool = True, token_types: Array | None = None,
               logits_at: Array | None = None) -> Array:
    """inputs, positions, segment_ids: [batch, seq] int. Returns logits [batch, seq, vocab], or
    with `logits_at` ([batch, k] indices into seq) those positions' only: [batch, k, vocab].

    `token_types` are used only by a model with a type table (model.type_vocab_size > 0).
    A prefill needs one position's logits: computing the others costs seq x vocab floats (a
    512-token prompt with a 32k vocabulary: 66 MB per row) and their share of the head's FLOPs."""
    cfg = self.cfg
    x, embedding = embed(self, inputs, positions, token_types, deterministic)
    x = blocks(cfg, self.decode, x, positions, segment_ids, deterministic)  # [batch, seq, d]
    if logits_at is not None:
      x = jnp.take_along_axis(x, logits_at[..., None], axis=1)  # [batch, k, d_model]
    if cfg.norm_position == "pre":
      x = norm_layer(cfg, "ln_final")(x)
    if cfg.tie_embeddings:
      head = embedding.T
    else:
      head = self.param("head", param_init(0.02, ("embed", "vocab")), (cfg.d_model, cfg.vocab_size))
    logits = jnp.einsum("bsd,dv->bsv", x, head.astype(cfg.compute_dtype),
                        preferred_element_type=jnp.float32)  # [batch, seq, vocab]
    return nn.with_logical_constraint(logits, ("act_batch", "act_len", "act_vocab"))
