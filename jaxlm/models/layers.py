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
  one-token KV-cache decode steps always use XLA). "cudnn" off a GPU is an error.
  """
  on_gpu = jax.default_backend() == "gpu"
  if cfg.attention_impl == "cudnn":
    if not on_gpu:
      raise UserError(f"model.attention_impl='cudnn' needs a GPU (the backend is "
                        f"{jax.default_backend()!r}); use 'auto' or 'xla'")
    return "xla" if decode else "cudnn"
  if cfg.attention_impl == "auto" and on_gpu and not decode and cfg.dtype == "bfloat16" and (
      cfg.head_dim <= 128 and cfg.head_dim % 8 == 0):
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


def single_query_attention(query: Array, key: Array, value: Array, allowed: Array) -> Array:
  """Softmax attention of one query per row, `query  # [batch, 1, heads, head_dim]`, over
  `key, value  # [batch, keys, kv_heads, head_dim]` where `allowed  # [batch, keys]`, in float32,
  as elementwise products and sums (a KV-cache step attends with one query; XLA:CPU runs these
  several times faster than the batched matmuls of `dot_product_attention`). Query head h reads
  kv head h // (heads / kv_heads), as `dot_product_attention` groups them."""
  batch, _, heads, head_dim = query.shape
  kv_heads = key.shape[2]
  grouped = query.reshape(batch, 1, kv_heads, heads // kv_heads, head_dim).astype(jnp.float32)
  scale = head_dim ** -0.5
  scores = jnp.sum(grouped * key.astype(jnp.float32)[:, :, :, None], axis=-1) * scale
  scores = jnp.where(allowed[:, :, None, None], scores,
                     jnp.finfo(jnp.float32).min)  # [batch, keys, kv_heads, group]
  weights = jax.nn.softmax(scores, axis=1)
  out = jnp.sum(weights[..., None] * value.astype(jnp.float32)[:, :, :, None],
                axis=1)  # [batch, kv_heads, group, head_dim]
  return out.reshape(batch, 1, heads, head_dim).astype(value.dtype)


class Attention(nn.Module):
  cfg: ModelConfig
  decode: bool = False

  @nn.compact
  def __call__(self, x: Array, positions: Array, segment_ids: Array) -> Array:
    cfg = self.cfg
    init_std = 0.02
    query, key, value = project_qkv(cfg, x, init_std)
    if cfg.positions == "rope":
      inv_freq = model_frequencies(cfg)
      query, key = apply_rope(query, positions, inv_freq), apply_rope(key, positions, inv_freq)

    query_segments = segment_ids  # [batch, seq]
    implementation = attention_implementation(cfg, self.decode)
    if self.decode:
      key, value, key_segments, key_index, query_index = self._update_cache(key, value, segment_ids)
      causal = key_index <= query_index[:, :, None]  # [batch, seq, cache_len]
    else:
      key_segments = segment_ids
      causal = jnp.tril(jnp.ones((x.shape[1], x.shape[1]), dtype=bool))[None]
    same_segment = query_segments[:, :, None] == key_segments[:, None, :]  # [batch, seq, keys]
    if implementation == "cudnn":  # causality as cuDNN's built-in mask; documents as a mask
      out = jax.nn.dot_product_attention(query, key, value, mask=same_segment[:, None],
                                         is_causal=cfg.causal, implementation="cudnn")
    else:
      allowed = same_segment & causal if cfg.causal else same_segment
      mask = allowed[:, None]  # [batch, 1, seq, keys]
      if query.shape[1] == 1:  # a decode step: elementwise beats XLA:CPU's tiny batched matmuls
        out = single_query_attention(query, key, value, allowed[:, 0])
      else:
        out = jax.nn.dot_product_attention(query, key, value, mask=mask,
                                           implementation="xla")  # [batch, seq, heads, head_dim]
    out = nn.with_logical_constraint(out, ("act_batch", "act_len", "act_heads", None))
    return Linear((cfg.d_model,), ("heads", "kv", "embed"), init_std / (2 * cfg.num_layers) ** 0.5,
                  cfg.use_bias, cfg.compute_dtype, in_dims=2, lora=cfg.lora, name="out")(out)

  def _update_cache(self, key: Array, value: Array, segment_ids: Array):
    """Writes this call's keys/values at each row's cache index; returns the whole cache to attend
    to. The index is per row (`[batch]`), so rows of one batch may sit at different positions:
    a server's slots each hold their own request."""
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
    index.value = start + seq
    key_index = jnp.arange(max_len)
    query_index = start[:, None] + jnp.arange(seq)  # [batch, seq]
    return cached_key.value, cached_value.value, cached_segments.value, key_index, query_index


class Mlp(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    if cfg.mlp == "swiglu":
      gate_up = Linear((2, cfg.mlp_dim), ("embed", None, "mlp"), 0.02, cfg.use_bias,
                       cfg.compute_dtype, lora=cfg.lora, name="wi")(x)  # [batch, seq, 2, mlp_dim]
      hidden = nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1]
    else:
      # "gelu": GPT-2's tanh approximation; "gelu_exact": BERT's erf form.
      hidden = nn.gelu(Linear((cfg.mlp_dim,), ("embed", "mlp"), 0.02, cfg.use_bias,
                              cfg.compute_dtype, lora=cfg.lora, name="wi")(x),
                       approximate=cfg.mlp != "gelu_exact")
    hidden = nn.with_logical_constraint(hidden, ("act_batch", "act_len", "act_mlp"))
    return Linear((cfg.d_model,), ("mlp", "embed"), 0.02 / (2 * cfg.num_layers) ** 0.5,
                  cfg.use_bias, cfg.compute_dtype, lora=cfg.lora, name="wo")(hidden)


class Block(nn.Module):
  cfg: ModelConfig
  decode: bool = False
  scanned: bool = False  # inside nn.scan: return (carry, None)

  @nn.compact
  def __call__(self, x: Array, positions: Array, segment_ids: Array, deterministic: bool) -> Array:
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout, deterministic=deterministic)
    attention = Attention(cfg, self.decode, name="attn")
    mlp = Mlp(cfg, name="mlp")
    ln_attn, ln_mlp = norm_layer(cfg, "ln_attn"), norm_layer(cfg, "ln_mlp")
    if cfg.norm_position == "pre":  # GPT-2: x + f(norm(x)); the model ends with ln_final
      x = x + drop(attention(ln_attn(x), positions, segment_ids))
      x = x + drop(mlp(ln_mlp(x)))
    else:  # BERT and the original Transformer: norm(x + f(x))
      x = ln_attn(x + drop(attention(x, positions, segment_ids)))
      x = ln_mlp(x + drop(mlp(x)))
    x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
    return (x, None) if self.scanned else x


def embed(model: nn.Module, inputs: Array, positions: Array, token_types: Array | None,
          deterministic: bool) -> tuple[Array, Array]:
  """Token (+ learned position) (+ token-type) embeddings, declared on `model` (a compact method
  of it is running). Returns (x  # [batch, seq, d_model] compute dtype, embedding  # [vocab, d]).

  Post-norm models normalise the sum (`ln_embed`) before dropout, as BERT does; token types None
  means all type 0, and are ignored when the model has no type table (type_vocab_size 0).
  """
  cfg = model.cfg
  embedding = model.param("embedding", param_init(0.02, ("vocab", "embed")),
                          (cfg.vocab_size, cfg.d_model))  # [vocab, d_model]
  x = jnp.take(embedding, inputs, axis=0)  # [batch, seq, d_model]
  if cfg.positions == "learned":
    pos_embedding = model.param("pos_embedding", param_init(0.01, ("pos", "embed")),
                                (cfg.max_len, cfg.d_model))  # [max_len, d_model]
    x = x + jnp.take(pos_embedding, positions, axis=0)
  if cfg.type_vocab_size > 0:
    type_embedding = model.param("type_embedding", param_init(0.02, (None, "embed")),
                                 (cfg.type_vocab_size, cfg.d_model))  # [types, d_model]
    types = jnp.zeros_like(inputs) if token_types is None else token_types
    x = x + jnp.take(type_embedding, types, axis=0)
  if cfg.norm_position == "post":
    x = norm_layer(cfg, "ln_embed")(x)
  x = x.astype(cfg.compute_dtype)
  x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_embed"))
  return nn.Dropout(cfg.dropout, deterministic=deterministic)(x), embedding


def blocks(cfg: ModelConfig, decode: bool, x: Array, positions: Array, segment_ids: Array,
           deterministic: bool) -> Array:
  """The `num_layers` Blocks over `x  # [batch, seq, d_model]`, as children of the calling model:
  `block_{i}` each, or one scanned `blocks` with a leading layer axis; remat per `cfg.remat`."""
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
    x, _ = scanned(cfg, decode, scanned=True, name="blocks")(x, positions, segment_ids,
                                                            deterministic)
    return x
  for layer in range(cfg.num_layers):
    x = block(cfg, decode, name=f"block_{layer}")(x, positions, segment_ids, deterministic)
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
