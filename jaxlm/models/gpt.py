"""A decoder-only Transformer (GPT) in Flax Linen.

Every parameter carries logical axis names (`vocab`, `embed`, `heads`, `kv`, `mlp`, `pos`, `norm`) and
activations are constrained with `act_*` names; `parallel/sharding.py` maps both onto the device mesh. The model
is pure: `GPT(cfg).apply({"params": params}, ...)`. With `decode=True` it keeps a KV cache in the
"cache" collection, so a prompt is prefilled in one call and then extended a token at a time.

Speed/memory options that leave the numbers unchanged (up to float rounding): `remat` (recompute
activations in the backward pass), `scan_layers` (one `nn.scan` over stacked layers: faster compiles;
parameters get a leading layer axis under `blocks`, see `stack_layers`/`unstack_layers`) and
`attention_impl` (XLA or cuDNN flash attention). `dtype="bfloat16"` is mixed precision: parameters,
logits and the loss stay float32, matmuls and activations run in bfloat16.
"""

import flax.linen as nn
import jax.numpy as jnp

from jaxlm.models.config import REMAT_POLICIES, ModelConfig
from jaxlm.models.layers import Array, Block, norm_layer, param_init


class GPT(nn.Module):
  """Maps token ids to next-token logits (float32)."""
  cfg: ModelConfig
  decode: bool = False

  @nn.compact
  def __call__(self, inputs: Array, positions: Array, segment_ids: Array,
               deterministic: bool = True) -> Array:
    """inputs, positions, segment_ids: [batch, seq] int. Returns logits [batch, seq, vocab]."""
    cfg = self.cfg
    embedding = self.param("embedding", param_init(0.02, ("vocab", "embed")),
                           (cfg.vocab_size, cfg.d_model))  # [vocab, d_model]
    x = jnp.take(embedding, inputs, axis=0)  # [batch, seq, d_model]
    if cfg.positions == "learned":
      pos_embedding = self.param("pos_embedding", param_init(0.01, ("pos", "embed")),
                                 (cfg.max_len, cfg.d_model))  # [max_len, d_model]
      x = x + jnp.take(pos_embedding, positions, axis=0)
    x = x.astype(cfg.compute_dtype)
    x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
    x = nn.Dropout(cfg.dropout, deterministic=deterministic)(x)
    block = Block
    if cfg.remat != "none":
      # Arguments counted with self = 0: `deterministic` (4) is a Python bool.
      block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers,
                       static_argnums=(4,))
    if cfg.scan_layers:
      scanned = nn.scan(block, variable_axes={"params": 0, "cache": 0},
                        split_rngs={"params": True, "dropout": True},
                        in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                        length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = scanned(cfg, self.decode, scanned=True, name="blocks")(x, positions, segment_ids,
                                                                     deterministic)
    else:
      for layer in range(cfg.num_layers):
        x = block(cfg, self.decode, name=f"block_{layer}")(x, positions, segment_ids, deterministic)
    x = norm_layer(cfg, "ln_final")(x)
    if cfg.tie_embeddings:
      head = embedding.T
    else:
      head = self.param("head", param_init(0.02, ("embed", "vocab")), (cfg.d_model, cfg.vocab_size))
    logits = jnp.einsum("bsd,dv->bsv", x, head.astype(cfg.compute_dtype),
                        preferred_element_type=jnp.float32)  # [batch, seq, vocab]
    return nn.with_logical_constraint(logits, ("act_batch", "act_len", "act_vocab"))

