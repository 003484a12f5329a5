"""An encoder-only Transformer (BERT) in Flax Linen, with a masked-LM, classify or tag head.

Every position attends to its whole document (same segment id; segment 0 is padding), not only to
earlier ones. The embeddings, blocks and their parameter names are GPT's (`layers.py`); what
differs is `model.norm_position` ("post" for BERT: a norm after each residual add and `ln_embed`
over the embeddings, no `ln_final`), token-type embeddings (`model.type_vocab_size`) and the head:

  lm        mlm/transform (dense) -> GELU -> mlm/ln -> x @ embedding.T + mlm/bias:
            [batch, seq, vocab]
  classify  pooler (dense + tanh) -> dropout -> classifier, at every position:
            [batch, seq, num_labels]; the data weights each sequence's first token ([CLS]) only, so
            the loss and the evaluation stay token-level as for the other heads
  tag       dropout -> classifier: [batch, seq, num_labels]

The parameter tree (names and shapes) is what `interop` maps to and from Hugging Face's BertModel.
An encoder has no KV cache: `decode=True` is refused.
"""

import flax.linen as nn
import jax.numpy as jnp

from jaxlm.errors import UserError
from jaxlm.models.config import ModelConfig
from jaxlm.models.layers import (
  Array,
  Linear,
  blocks,
  embed,
  norm_layer,
  zeros_init,
)


def constrain_hidden(x: Array) -> Array:
  """`x  # [batch, seq, d_model]` split over the batch like the blocks' outputs.

  A head's dense output has the kernel's "mlp" axis (tensor-sharded); left to XLA's sharding
  propagation, the 2 x 2 x 2 mesh with one row per device got gradients 4% off (XLA:CPU, jax
  0.10; tests/test_bert.py), so the layout is fixed here as it is after every block.
  """
  return nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))


class MaskedLMHead(nn.Module):
  """Predicts every position's token through the (tied) embedding matrix, as BERT's MLM head."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array, embedding: Array) -> Array:
    """x: [batch, seq, d_model]; embedding: [vocab, d_model]. Returns logits [batch, seq, vocab]."""
    cfg = self.cfg
    hidden = Linear((cfg.d_model,), ("embed", "mlp"), 0.02, cfg.use_bias, cfg.compute_dtype,
                    name="transform")(x)  # [batch, seq, d_model]
    hidden = nn.gelu(constrain_hidden(hidden), approximate=cfg.mlp != "gelu_exact")
    hidden = norm_layer(cfg, "ln")(hidden)
    logits = jnp.einsum("bsd,vd->bsv", hidden, embedding.astype(cfg.compute_dtype),
                        preferred_element_type=jnp.float32)  # [batch, seq, vocab]
    if cfg.use_bias:
      logits = logits + self.param("bias", zeros_init(("vocab",)), (cfg.vocab_size,))
    return logits


class Bert(nn.Module):
  """Maps token ids to per-position logits (float32): tokens for head "lm", labels otherwise."""
  cfg: ModelConfig
  decode: bool = False

  @nn.compact
  def __call__(self, inputs: Array, positions: Array, segment_ids: Array,
               deterministic: bool = True, token_types: Array | None = None) -> Array:
    """inputs, positions, segment_ids, token_types (None: all 0): [batch, seq] int.
    Returns logits [batch, seq, vocab] (head "lm") or [batch, seq, num_labels]."""
    cfg = self.cfg
    if self.decode:
      raise UserError("a BERT model is an encoder: it has no KV-cache decoding (sampling); "
                      "sample from a model.family=gpt run")
    x, embedding = embed(self, inputs, positions, token_types, deterministic)
    x = blocks(cfg, False, x, positions, segment_ids, deterministic)  # [batch, seq, d_model]
    if cfg.norm_position == "pre":
      x = norm_layer(cfg, "ln_final")(x)
    if cfg.head == "lm":
      logits = MaskedLMHead(cfg, name="mlm")(x, embedding)
      return nn.with_logical_constraint(logits, ("act_batch", "act_len", "act_vocab"))
    if cfg.head == "classify":
      # BERT's pooler reads [CLS] only; here it runs at every position and the data's weights
      # keep the first token's prediction, so the head needs no gather.
      x = jnp.tanh(constrain_hidden(Linear((cfg.d_model,), ("embed", "mlp"), 0.02, cfg.use_bias,
                                           cfg.compute_dtype, name="pooler")(x)))  # [b, s, d]
    x = nn.Dropout(cfg.dropout, deterministic=deterministic)(x)
    logits = Linear((cfg.num_labels,), ("embed", None), 0.02, cfg.use_bias, cfg.compute_dtype,
                    name="classifier")(x)  # [batch, seq, num_labels]
    logits = logits.astype(jnp.float32)
    return nn.with_logical_constraint(logits, ("act_batch", "act_len", None))
