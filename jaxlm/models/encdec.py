"""An encoder-decoder Transformer (T5 v1.1 / Flan-T5, and the original Transformer) in Flax Linen.

The encoder attends bidirectionally within each source document (segment ids; 0 is padding), the
decoder causally within each target document and, through cross-attention, to the encoder tokens
of the same segment: several (source, target) examples may be packed into one row, example k
with segment id k + 1 on both sides. Both stacks are `layers.Block`s; one token embedding
(`embedding`) is shared by the encoder, the decoder and (tied) the output head, as in T5. With
separate vocabularies (`cfg.target_vocab_size` > 0) `embedding` is the encoder's, over the source
ids, and `decoder_embedding` the decoder's (and, tied, the head's), over the target ids: no matrix
is shared across the two vocabularies.

  T5 v1.1:   norm_position "pre" (and each stack's `ln_final`), norm "rmsnorm", use_bias False,
             positions "relative" (unscaled scores + one bias table per stack), mlp "geglu",
             tie_embeddings False, head_size = T5's d_kv
  original:  norm_position "post", norm "layernorm", use_bias True, positions "sinusoidal" or
             "learned", tie_embeddings True (logits scaled by d_model**-0.5)

Parameters: `embedding`, `decoder_embedding` (separate vocabularies only),
`encoder/{block_i | blocks, ln_final, relative_bias, pos_embedding}`, `decoder/...` (each block
with `attn`, `cross_attn/{q, kv, out}`, `mlp`, `ln_attn`, `ln_cross`, `ln_mlp`) and `head` when
untied. With `decode=True` the decoder keeps a KV cache of its
self-attention and, from the prefill call that passes `encoded`, of its cross-attention keys and
values; later calls pass `encoded=None`.
"""

import flax.linen as nn
import jax.numpy as jnp

from jaxlm.models.config import ModelConfig
from jaxlm.models.layers import Array, blocks, embed_positions, norm_layer, param_init

# T5 initialises its shared embedding with unit variance (its logits are scaled by d_model**-0.5).
EMBEDDING_STD = 1.0


class Stack(nn.Module):
  """The encoder (bidirectional) or the decoder (causal, cross-attending to `encoded`)."""
  cfg: ModelConfig
  decoder: bool
  decode: bool = False

  @nn.compact
  def __call__(self, embedding: Array, inputs: Array, positions: Array, segment_ids: Array,
               deterministic: bool, encoded: Array | None = None,
               encoder_segment_ids: Array | None = None) -> Array:
    """inputs, positions, segment_ids: [batch, seq]; encoded: [batch, enc_len, d_model].
    Returns the stack's output [batch, seq, d_model] (after ln_final for pre-norm)."""
    cfg = self.cfg
    x = jnp.take(embedding, inputs, axis=0)  # [batch, seq, d_model]
    x = embed_positions(self, x, positions, None, deterministic)
    table = None
    if cfg.positions == "relative":
      table = self.param("relative_bias", param_init(cfg.d_model ** -0.5,
                                                     ("relative_buckets", "heads")),
                         (cfg.relative_buckets, cfg.num_heads))  # [buckets, heads]
    extras = (table, encoded, encoder_segment_ids) if self.decoder else (table,)
    x = blocks(cfg, self.decode and self.decoder, x, positions, segment_ids, deterministic,
               num_layers=cfg.decoder_layers if self.decoder else cfg.num_layers,
               causal=self.decoder, cross=self.decoder, extras=extras)
    if cfg.norm_position == "pre":
      x = norm_layer(cfg, "ln_final")(x)
    return nn.Dropout(cfg.dropout, deterministic=deterministic)(x)


class EncDec(nn.Module):
  """Maps source and decoder-input token ids to next-token logits (float32) of the targets."""
  cfg: ModelConfig
  decode: bool = False

  def setup(self):
    cfg = self.cfg
    self.embedding = self.param("embedding", param_init(EMBEDDING_STD, ("vocab", "embed")),
                                (cfg.vocab_size, cfg.d_model))  # [source vocab, d_model]
    # [target vocab, d_model]: the decoder's own table, or the shared one
    self.decoder_embedding = self.param(
        "decoder_embedding", param_init(EMBEDDING_STD, ("vocab", "embed")),
        (cfg.target_vocab, cfg.d_model)) if cfg.separate_vocab else self.embedding
    self.encoder = Stack(cfg, decoder=False)
    self.decoder = Stack(cfg, decoder=True, decode=self.decode)
    if not cfg.tie_embeddings:
      self.head = self.param("head", param_init(0.02, ("embed", "vocab")),
                             (cfg.d_model, cfg.target_vocab))  # [d_model, target vocab]

  def __call__(self, inputs: Array, positions: Array, segment_ids: Array,
               deterministic: bool = True, token_types: Array | None = None, *,
               encoder_inputs: Array, encoder_positions: Array,
               encoder_segment_ids: Array) -> Array:
    """Teacher-forced logits [batch, dec_len, target vocab] of decoder `inputs` (targets shifted
    right within each document) given the sources; every argument [batch, len] int. `token_types`
    exists for the families' common signature and must be None."""
    del token_types  # an encdec model has no token types (model.type_vocab_size is 0)
    encoded = self.encode(encoder_inputs, encoder_positions, encoder_segment_ids, deterministic)
    return self.decode_step(inputs, positions, segment_ids, encoded, encoder_segment_ids,
                            deterministic)

  def encode(self, encoder_inputs: Array, encoder_positions: Array, encoder_segment_ids: Array,
             deterministic: bool = True) -> Array:
    """The encoder output `encoded  # [batch, enc_len, d_model]`."""
    return self.encoder(self.embedding, encoder_inputs, encoder_positions, encoder_segment_ids,
                        deterministic)

  def decode_step(self, inputs: Array, positions: Array, segment_ids: Array,
                  encoded: Array | None, encoder_segment_ids: Array | None,
                  deterministic: bool = True) -> Array:
    """Logits [batch, seq, target vocab] of the decoder over `inputs` given `encoded` (with
    decode=True: None after the prefill call, read from the cache)."""
    cfg = self.cfg
    x = self.decoder(self.decoder_embedding, inputs, positions, segment_ids, deterministic, encoded,
                     encoder_segment_ids)  # [batch, seq, d_model]
    if cfg.tie_embeddings:
      head = self.decoder_embedding.T * cfg.d_model ** -0.5  # T5's scaling of a tied output layer
    else:
      head = self.head
    logits = jnp.einsum("bsd,dv->bsv", x, head.astype(cfg.compute_dtype),
                        preferred_element_type=jnp.float32)  # [batch, seq, vocab]
    return nn.with_logical_constraint(logits, ("act_batch", "act_len", "act_vocab"))
