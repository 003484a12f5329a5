"""The layers every model family is built from, each parameter named by its logical axes.

Every parameter carries logical axis names (`vocab`, `embed`, `heads`, `kv`, `mlp`, `pos`, `norm`)
and activations are constrained with `act_*` names; `parallel/sharding.py` maps them onto the mesh.
Attention is causal for a decoder (GPT) and bidirectional for an encoder (BERT); both attend only
within a document (same segment id; segment 0 is padding). With `decode=True` attention keeps a KV
cache in the "cache" collection, so a prompt is prefilled in one call and then extended a token at
a time. `embed` and `blocks` declare their parameters on the calling model, so every family has the
same top-level names (`embedding`, `pos_embedding`, `block_{i}` or `blocks`, ...).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.errors import UserError
from jaxlm.models.config import REMAT_POLICIES, ModelConfig
from jaxlm.models.dense import project
from jaxlm.models.lora import adapter_delta
from jaxlm.models.positions import relative_bias, sinusoids
from jaxlm.models.rope import apply_rope, model_frequencies

Array = jax.Array
AXES_NORM = ("norm",)


def param_init(stddev: float, axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.normal(stddev), axes)


def zeros_init(axes: tuple[str | None, ...]):
  return nn.with_logical_partitioning(nn.initializers.zeros, axes)


def norm_layer(cfg: ModelConfig, name: str) -> nn.Module:
  scale_init = nn.with_logical_partitioning(nn.initializers.ones, AXES_NORM)
  if cfg.norm == "rmsnorm":
    return nn.RMSNorm(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, scale_init=scale_init,
                      name=name)
  return nn.LayerNorm(epsilon=cfg.norm_eps, dtype=cfg.compute_dtype, use_bias=cfg.use_bias,
                      scale_init=scale_init,
                      bias_init=zeros_init(AXES_NORM), name=name)


class Linear(nn.Module):
  """`x @ kernel (+ bias)` contracting the last `in_dims` axes of x; kernel axes are named."""
  features: tuple[int, ...]
  axes: tuple[str | None, ...]  # logical names of the kernel's axes (inputs, then outputs)
  stddev: float
  use_bias: bool
  dtype: Any
  in_dims: int = 1
  lora: Any = None  # a models.lora.LoraConfig: adapters when its targets match this module's path

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_shape = x.shape[-self.in_dims:]
    kernel = self.param("kernel", param_init(self.stddev, self.axes), (*in_shape, *self.features))
    y = project(x.astype(self.dtype), kernel.astype(self.dtype), self.in_dims)
    if self.lora is not None and self.lora.matches(self.path):
      y = y + adapter_delta(self, self.lora, x, self.in_dims, self.features, self.axes,
                            self.dtype, project)
    if self.use_bias:
      bias = self.param("bias", zeros_init(self.axes[self.in_dims:]), self.features)
      y = y + bias.astype(self.dtype)
    return y


def attention_implementation(cfg: ModelConfig, decode: bool) -> str:
  """"xla" or "cudnn" for `cfg.attention_impl` on the default backend.

  "auto" takes cuDNN flash attention on a GPU for bfloat16 training/eval and XLA otherwise (the
  one-token KV-cache decode steps and cross-attention always use XLA). "cudnn" off a GPU is an
  error.
  """
  on_gpu = jax.default_backend() == "gpu"
  if cfg.attention_impl == "cudnn":
    if not on_gpu:
      raise UserError(f"model.attention_impl='cudnn' needs a GPU (the backend is "
                        f"{jax.default_backend()!r}); use 'auto' or 'xla'")
    return "xla" if decode else "cudnn"
  # T5's relative-position bias through cuDNN has not been checked on a GPU: "auto" keeps XLA.
  if cfg.attention_impl == "auto" and on_gpu and not decode and cfg.dtype == "bfloat16" and (
      cfg.head_dim <= 128 and cfg.head_dim % 8 == 0) and cfg.positions != "relative":
    return "cudnn"
  return "xla"


def project_qkv(cfg: ModelConfig, x: Array, init_std: float) -> tuple[Array, Array, Array]:
  """Queries `[batch, seq, heads, head_dim]`, keys and values `[batch, seq, kv_heads, head_dim]`:
  one fused `qkv` projection for multi-head attention, `q` and `kv` for grouped-query attention
  (jax.nn.dot_product_attention shares each kv head among heads / kv_heads query heads)."""
  bias = cfg.use_bias or cfg.qkv_bias
  if cfg.fused_qkv:
    qkv = Linear((3, cfg.num_heads, cfg.head_dim), ("embed", None, "heads", "kv"), init_std,
                 bias, cfg.compute_dtype, lora=cfg.lora, name="qkv")(x)  # [batch, seq, 3, heads, head_dim]
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  query = Linear((cfg.num_heads, cfg.head_dim), ("embed", "heads", "kv"), init_std, bias,
                 cfg.compute_dtype, lora=cfg.lora, name="q")(x)  # [batch, seq, heads, head_dim]
  kv = Linear((2, cfg.kv_heads, cfg.head_dim), ("embed", None, "kv_heads", "kv"), init_std, bias,
              cfg.compute_dtype, lora=cfg.lora, name="kv")(x)  # [batch, seq, 2, kv_heads, head_dim]
  return query, kv[:, :, 0], kv[:, :, 1]


MIN_ATTENTION_ROWS = 8


def single_query_attention(query: Array, key: Array, value: Array, allowed: Array,
                           scale: float | None = None, bias: Array | None = None) -> Array:
  """`_single_query_attention` on at least MIN_ATTENTION_ROWS rows: XLA:CPU vectorises the
  reductions over the keys by row count, and 2-4 rows round differently from 8 or more, so a
  server's request would get other bits by how many rows its call runs. Padded (rows that attend
  to nothing), calls of 2 rows or more compute a row alike (serving/row_counts.py checks). One row
  is left alone: its matmuls round differently anyway, and `generate` would pay for padding."""
  rows = query.shape[0]
  if not 1 < rows < MIN_ATTENTION_ROWS:
    return _single_query_attention(query, key, value, allowed, scale, bias)
  pad = lambda x: jnp.pad(x, [(0, MIN_ATTENTION_ROWS - rows)] + [(0, 0)] * (x.ndim - 1))  # noqa: E731
  return _single_query_attention(pad(query), pad(key), pad(value), pad(allowed), scale,
                                 None if bias is None else pad(bias))[:rows]


def _single_query_attention(query: Array, key: Array, value: Array, allowed: Array,
                            scale: float | None = None, bias: Array | None = None) -> Array:
  """Softmax attention of one query per row, `query  # [batch, 1, heads, head_dim]`, over
  `key, value  # [batch, keys, kv_heads, head_dim]` where `allowed  # [batch, keys]`: two batched
  matmuls (einsum) with float32 scores and accumulation. Query head h reads kv head
  h // (heads / kv_heads), as `dot_product_attention` groups them. Scores are scaled by `scale`
  (None: 1/sqrt(head_dim)) and `bias  # [batch, heads, 1, keys]` is added to them. It replaced
  5-D broadcast products and sums, 10-25x slower on the AMD EPYC and ~10x on the Intel Xeon
  measured; in a whole serving step it is within 10% of `dot_product_attention` and 4-D products
  (tools/decode_attention_bench.py, docs/benchmarks.md)."""
  batch, _, heads, head_dim = query.shape
  kv_heads, keys = key.shape[2], key.shape[1]
  group = heads // kv_heads
  grouped = query.reshape(batch, kv_heads, group, head_dim).astype(key.dtype)
  scale = head_dim ** -0.5 if scale is None else scale
  scores = jnp.einsum("bhgd,bkhd->bhgk", grouped, key,
                      preferred_element_type=jnp.float32) * scale  # [batch, kv_heads, group, keys]
  if bias is not None:
    scores = scores + bias.reshape(bias.shape[0], kv_heads, group, keys).astype(jnp.float32)
  scores = jnp.where(allowed[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=-1)
  out = jnp.einsum("bhgk,bkhd->bhgd", weights.astype(value.dtype), value,
                   preferred_element_type=jnp.float32)  # [batch, kv_heads, group, head_dim]
  return out.reshape(batch, 1, heads, head_dim).astype(value.dtype)


def attend(query: Array, key: Array, value: Array, allowed: Array, scale: float,
           bias: Array | None) -> Array:
  """XLA softmax attention `[batch, seq, heads, head_dim]` where `allowed  # [batch, seq, keys]`,
  with `bias  # [batch, heads, seq, keys]` (or None) added to the scores."""
  if query.shape[1] == 1:  # a decode step: one query per row, grouped by kv head
    return single_query_attention(query, key, value, allowed[:, 0], scale, bias)
  return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=allowed[:, None],
                                      scale=scale, implementation="xla")


class Attention(nn.Module):
  """Self-attention within each document (causal for a decoder), or with `cross` the decoder's
  cross-attention: queries from x, keys and values (`kv`) from `context` (the encoder output,
  `[batch, enc_len, d_model]`) of the same segment. `relative_table  # [buckets, heads]` (T5's
  relative positions) adds a bias by distance to self-attention's scores."""
  cfg: ModelConfig
  decode: bool = False
  causal: bool | None = None  # None: cfg.causal (the family's)
  cross: bool = False

  @nn.compact
  def __call__(self, x: Array, positions: Array, segment_ids: Array,
               relative_table: Array | None = None, context: Array | None = None,
               context_segments: Array | None = None) -> Array:
    cfg = self.cfg
    init_std = 0.02
    causal = cfg.causal if self.causal is None else self.causal
    if self.cross:
      out = self._cross(x, segment_ids, context, context_segments, init_std)
    else:
      out = self._self_attention(x, positions, segment_ids, relative_table, causal, init_std)
    out = nn.with_logical_constraint(out, ("act_batch", "act_len", "act_heads", None))
    return Linear((cfg.d_model,), ("heads", "kv", "embed"), init_std / (2 * cfg.num_layers) ** 0.5,
                  cfg.use_bias, cfg.compute_dtype, in_dims=2, lora=cfg.lora, name="out")(out)

  def _self_attention(self, x, positions, segment_ids, relative_table, causal, init_std):
    cfg = self.cfg
    query, key, value = project_qkv(cfg, x, init_std)
    if cfg.positions == "rope":
      inv_freq = model_frequencies(cfg)
      query, key = apply_rope(query, positions, inv_freq), apply_rope(key, positions, inv_freq)
    query_segments = segment_ids  # [batch, seq]
    implementation = attention_implementation(cfg, self.decode)
    if self.decode:
      key, value, key_segments, key_positions, key_index, query_index = self._update_cache(
          key, value, segment_ids, positions if relative_table is not None else None)
      future = key_index <= query_index[:, :, None]  # [batch, seq, cache_len]
    else:
      key_segments, key_positions = segment_ids, positions
      future = jnp.tril(jnp.ones((x.shape[1], x.shape[1]), dtype=bool))[None]
    bias = None
    if relative_table is not None:
      bias = relative_bias(relative_table, positions, key_positions, cfg.max_len,
                           cfg.relative_buckets, cfg.relative_max_distance, not causal)
    same_segment = query_segments[:, :, None] == key_segments[:, None, :]  # [batch, seq, keys]
    if implementation == "cudnn":  # causality as cuDNN's built-in mask; documents as a mask
      return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=same_segment[:, None],
                                          scale=cfg.attention_scale, is_causal=causal,
                                          implementation="cudnn")
    allowed = same_segment & future if causal else same_segment
    return attend(query, key, value, allowed, cfg.attention_scale, bias)

  def _cross(self, x, segment_ids, context, context_segments, init_std):
    """Attention of x's queries to the context's keys/values; with `decode` these are computed
    on the call that passes `context` (the prefill) and read from the cache on later calls."""
    cfg = self.cfg
    query = Linear((cfg.num_heads, cfg.head_dim), ("embed", "heads", "kv"), init_std,
                   cfg.use_bias, cfg.compute_dtype, lora=cfg.lora, name="q")(x)
    if context is not None:
      kv = Linear((2, cfg.kv_heads, cfg.head_dim), ("embed", None, "kv_heads", "kv"), init_std,
                  cfg.use_bias, cfg.compute_dtype, lora=cfg.lora,
                  name="kv")(context)  # [batch, enc_len, 2, kv_heads, head_dim]
      key, value = kv[:, :, 0], kv[:, :, 1]
      if self.decode:
        self.put_variable("cache", "cross_key", key)
        self.put_variable("cache", "cross_value", value)
        self.put_variable("cache", "cross_segments", context_segments.astype(jnp.int32))
    else:
      if not self.decode or not self.has_variable("cache", "cross_key"):
        raise ValueError("cross-attention without `encoded` needs the decode cache of a prefill")
      key = self.get_variable("cache", "cross_key")
      value = self.get_variable("cache", "cross_value")
      context_segments = self.get_variable("cache", "cross_segments")
    allowed = segment_ids[:, :, None] == context_segments[:, None, :]  # [batch, seq, enc_len]
    return attend(query, key, value, allowed, cfg.attention_scale, None)

  def _update_cache(self, key: Array, value: Array, segment_ids: Array,
                    positions: Array | None = None):
    """Writes this call's keys/values at each row's cache index; returns the whole cache to attend
    to. The index is per row (`[batch]`), so rows of one batch may sit at different positions:
    a server's slots each hold their own request. `positions` (relative positions only) are
    cached too, for the distances of later queries to these keys."""
    batch, seq, heads, head_dim = key.shape
    max_len = self.cfg.max_len
    cached_key = self.variable("cache", "key", jnp.zeros, (batch, max_len, heads, head_dim),
                               key.dtype)
    cached_value = self.variable("cache", "value", jnp.zeros, (batch, max_len, heads, head_dim),
                                 value.dtype)
    # Segment 0 marks empty slots (and left padding): real query tokens have segment >= 1.
    cached_segments = self.variable("cache", "segments", jnp.zeros, (batch, max_len), jnp.int32)
    index = self.variable("cache", "index", lambda: jnp.zeros((batch,), jnp.int32))
    start = index.value  # [batch]
    write = jax.vmap(lambda cache, new, at: jax.lax.dynamic_update_slice_in_dim(cache, new, at, 0))
    cached_key.value = write(cached_key.value, key, start)
    cached_value.value = write(cached_value.value, value, start)
    cached_segments.value = write(cached_segments.value, segment_ids.astype(jnp.int32), start)
    key_positions = None
    if positions is not None:
      cached_positions = self.variable("cache", "positions", jnp.zeros, (batch, max_len),
                                       jnp.int32)
      cached_positions.value = write(cached_positions.value, positions.astype(jnp.int32), start)
      key_positions = cached_positions.value
    index.value = start + seq
    key_index = jnp.arange(max_len)
    query_index = start[:, None] + jnp.arange(seq)  # [batch, seq]
    return (cached_key.value, cached_value.value, cached_segments.value, key_positions, key_index,
            query_index)


class Mlp(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    if cfg.mlp in ("swiglu", "geglu"):
      gate_up = Linear((2, cfg.mlp_dim), ("embed", None, "mlp"), 0.02, cfg.use_bias,
                       cfg.compute_dtype, lora=cfg.lora, name="wi")(x)  # [batch, seq, 2, mlp_dim]
      gate = nn.silu(gate_up[:, :, 0]) if cfg.mlp == "swiglu" else nn.gelu(gate_up[:, :, 0])
      hidden = gate * gate_up[:, :, 1]
    else:
      # "gelu": GPT-2's tanh approximation; "gelu_exact": BERT's erf form.
      hidden = nn.gelu(Linear((cfg.mlp_dim,), ("embed", "mlp"), 0.02, cfg.use_bias,
                              cfg.compute_dtype, lora=cfg.lora, name="wi")(x),
                       approximate=cfg.mlp != "gelu_exact")
    hidden = nn.with_logical_constraint(hidden, ("act_batch", "act_len", "act_mlp"))
    return Linear((cfg.d_model,), ("mlp", "embed"), 0.02 / (2 * cfg.num_layers) ** 0.5,
                  cfg.use_bias, cfg.compute_dtype, lora=cfg.lora, name="wo")(hidden)


class Block(nn.Module):
  """A Transformer layer: self-attention (causal per `causal`, None: the family's) and an MLP, and
  with `cross` (a decoder of an encoder-decoder) cross-attention to `context` between them."""
  cfg: ModelConfig
  decode: bool = False
  scanned: bool = False  # inside nn.scan: return (carry, None)
  causal: bool | None = None
  cross: bool = False

  @nn.compact
  def __call__(self, x: Array, positions: Array, segment_ids: Array, deterministic: bool,
               relative_table: Array | None = None, context: Array | None = None,
               context_segments: Array | None = None) -> Array:
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout, deterministic=deterministic)
    attention = Attention(cfg, self.decode, self.causal, name="attn")
    sublayers = [("ln_attn", lambda h: attention(h, positions, segment_ids, relative_table))]
    if self.cross:
      cross = Attention(cfg, self.decode, cross=True, name="cross_attn")
      sublayers.append(("ln_cross", lambda h: cross(h, positions, segment_ids, None, context,
                                                     context_segments)))
    sublayers.append(("ln_mlp", Mlp(cfg, name="mlp")))
    for norm_name, sublayer in sublayers:
      norm = norm_layer(cfg, norm_name)
      if cfg.norm_position == "pre":  # GPT-2 and T5: x + f(norm(x)); the stack ends with ln_final
        x = x + drop(sublayer(norm(x)))
      else:  # BERT and the original Transformer: norm(x + f(x))
        x = norm(x + drop(sublayer(x)))
    x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
    return (x, None) if self.scanned else x


def embed(model: nn.Module, inputs: Array, positions: Array, token_types: Array | None,
          deterministic: bool) -> tuple[Array, Array]:
  """Token (+ position) (+ token-type) embeddings, declared on `model` (a compact method of it is
  running). Returns (x  # [batch, seq, d_model] compute dtype, embedding  # [vocab, d_model])."""
  cfg = model.cfg
  embedding = model.param("embedding", param_init(0.02, ("vocab", "embed")),
                          (cfg.vocab_size, cfg.d_model))  # [vocab, d_model]
  x = jnp.take(embedding, inputs, axis=0)  # [batch, seq, d_model]
  return embed_positions(model, x, positions, token_types, deterministic), embedding


def embed_positions(model: nn.Module, x: Array, positions: Array, token_types: Array | None,
                    deterministic: bool) -> Array:
  """Token embeddings `x  # [batch, seq, d_model]` + learned or sinusoidal positions +
  token types, declared on `model`; then dropout.

  Post-norm GPT/BERT normalise the sum (`ln_embed`) before dropout, as BERT does (the original
  Transformer, an encdec, does not); token types None means all type 0, and are ignored when the
  model has no type table (type_vocab_size 0).
  """
  cfg = model.cfg
  if cfg.positions == "learned":
    pos_embedding = model.param("pos_embedding", param_init(0.01, ("pos", "embed")),
                                (cfg.max_len, cfg.d_model))  # [max_len, d_model]
    x = x + jnp.take(pos_embedding, positions, axis=0)
  elif cfg.positions == "sinusoidal":
    x = x + sinusoids(positions, cfg.d_model)
  if cfg.type_vocab_size > 0:
    type_embedding = model.param("type_embedding", param_init(0.02, (None, "embed")),
                                 (cfg.type_vocab_size, cfg.d_model))  # [types, d_model]
    types = jnp.zeros((x.shape[:2]), jnp.int32) if token_types is None else token_types
    x = x + jnp.take(type_embedding, types, axis=0)
  if cfg.norm_position == "post" and cfg.family != "encdec":
    x = norm_layer(cfg, "ln_embed")(x)
  x = x.astype(cfg.compute_dtype)
  x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
  return nn.Dropout(cfg.dropout, deterministic=deterministic)(x)


def blocks(cfg: ModelConfig, decode: bool, x: Array, positions: Array, segment_ids: Array,
           deterministic: bool, num_layers: int | None = None, causal: bool | None = None,
           cross: bool = False, extras: tuple = ()) -> Array:
  """The `num_layers` (None: cfg.num_layers) Blocks over `x  # [batch, seq, d_model]`, as
  children of the calling model: `block_{i}` each, or one scanned `blocks` with a leading layer
  axis; remat per `cfg.remat`. `extras` are the Block's (relative_table, context,
  context_segments), the same for every layer."""
  num_layers = cfg.num_layers if num_layers is None else num_layers
  block = Block
  if cfg.remat != "none":
    # Arguments counted with self = 0: `deterministic` (4) is a Python bool.
    block = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers,
                     static_argnums=(4,))
  if cfg.scan_layers:
    scanned = nn.scan(block, variable_axes={"params": 0, "cache": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=(nn.broadcast,) * (3 + len(extras)),
                      length=num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = scanned(cfg, decode, True, causal, cross, name="blocks")(
        x, positions, segment_ids, deterministic, *extras)
    return x
  for layer in range(num_layers):
    x = block(cfg, decode, False, causal, cross, name=f"block_{layer}")(
        x, positions, segment_ids, deterministic, *extras)
  return x


def stack_layers(params: dict, num_layers: int) -> dict:
  """Unscanned parameters (`block_0` ... `block_{L-1}`) -> the `scan_layers` layout (`blocks`)."""
  blocks = [params[f"block_{i}"] for i in range(num_layers)]
  rest = {k: v for k, v in params.items() if not k.startswith("block_")}
  return {**rest, "blocks": jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)}


def unstack_layers(params: dict, num_layers: int) -> dict:
  """The `scan_layers` layout -> one `block_i` per layer (the checkpoint / Hugging Face layout)."""
  rest = {k: v for k, v in params.items() if k != "blocks"}
  return {**rest, **{f"block_{i}": jax.tree.map(lambda x, i=i: x[i], params["blocks"])
                     for i in range(num_layers)}}
