"""Speed/memory options give the same numbers: remat, scan over layers, attention kernel, bf16."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import sharding
from jaxlm.config import ConfigError, base_config
from jaxlm.decode import SamplingConfig, generate
from jaxlm.engine import build_engine
from jaxlm.model import GPT, ModelConfig, stack_layers, unstack_layers
from jaxlm.optim import OptimConfig, decay_mask

SEQ = 16


@pytest.fixture(scope="module")
def nanogpt_cfg():
  """The nanoGPT char architecture, shrunk: learned positions, LayerNorm, GELU, tied, no biases."""
  return ModelConfig(vocab_size=61, d_model=32, num_layers=3, num_heads=4, mlp_dim=128,
                     max_len=32, use_bias=False)


def init_params(cfg):
  tokens = jnp.zeros((1, 8), jnp.int32)
  return nn.unbox(GPT(cfg).init(jax.random.key(0), tokens, tokens, tokens + 1)["params"])


def inputs(vocab, rows=2, seq=SEQ, seed=0):
  tokens = np.random.default_rng(seed).integers(0, vocab, (rows, seq)).astype(np.int32)
  positions = np.broadcast_to(np.arange(seq, dtype=np.int32), tokens.shape)
  return jnp.asarray(tokens), jnp.asarray(positions), jnp.ones_like(jnp.asarray(tokens))


def reference_logits(params, cfg, tokens):
  """A plain-jnp GPT (no Flax, no fused attention) for the architecture of `nanogpt_cfg`."""
  def layer_norm(x, scale):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + cfg.norm_eps) * scale

  seq = tokens.shape[1]
  x = params["embedding"][tokens] + params["pos_embedding"][:seq]
  causal = np.tril(np.ones((seq, seq), bool))
  for i in range(cfg.num_layers):
    p = params[f"block_{i}"]
    h = layer_norm(x, p["ln_attn"]["scale"])
    qkv = jnp.einsum("bsd,dthk->tbhsk", h, p["attn"]["qkv"]["kernel"])  # [3, batch, heads, seq, hd]
    scores = qkv[0] @ qkv[1].swapaxes(-1, -2) / np.sqrt(cfg.head_dim)
    weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
    attn = jnp.einsum("bhqk,bhkd->bqhd", weights, qkv[2])
    x = x + jnp.einsum("bshk,hkd->bsd", attn, p["attn"]["out"]["kernel"])
    h = layer_norm(x, p["ln_mlp"]["scale"])
    x = x + jax.nn.gelu(h @ p["mlp"]["wi"]["kernel"], approximate=True) @ p["mlp"]["wo"]["kernel"]
  x = layer_norm(x, params["ln_final"]["scale"])
  return x @ params["embedding"].T


def test_model_equals_a_plain_jnp_reference(nanogpt_cfg):
  params = init_params(nanogpt_cfg)
  tokens, positions, segments = inputs(nanogpt_cfg.vocab_size)
  out = GPT(nanogpt_cfg).apply({"params": params}, tokens, positions, segments)
  np.testing.assert_allclose(out, reference_logits(params, nanogpt_cfg, tokens), atol=1e-5)


def logits_and_grads(cfg, params, tokens, positions, segments):
  def loss(p):
    logits = GPT(cfg).apply({"params": p}, tokens, positions, segments)
    return jax.nn.log_softmax(logits).mean(), logits
  (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
  return logits, grads


@pytest.mark.parametrize("options", [dict(remat="full"), dict(remat="dots"),
                                     dict(scan_layers=True),
                                     dict(scan_layers=True, remat="dots"),
                                     dict(attention_impl="xla")])
def test_speed_options_keep_logits_and_gradients(nanogpt_cfg, options):
  params = init_params(nanogpt_cfg)
  batch = inputs(nanogpt_cfg.vocab_size)
  base_logits, base_grads = logits_and_grads(nanogpt_cfg, params, *batch)
  cfg = dataclasses.replace(nanogpt_cfg, **options)
  same_params = stack_layers(params, cfg.num_layers) if cfg.scan_layers else params
  logits, grads = logits_and_grads(cfg, same_params, *batch)
  if cfg.scan_layers:
    grads = unstack_layers(grads, cfg.num_layers)
  np.testing.assert_allclose(logits, base_logits, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), grads, base_grads)


def test_scanned_layout_stacks_layers_with_a_layers_axis(nanogpt_cfg):
  cfg = dataclasses.replace(nanogpt_cfg, scan_layers=True)
  tokens = jnp.zeros((1, 8), jnp.int32)
  boxed = jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), tokens, tokens, tokens + 1))
  params = boxed["params"]
  assert not any(k.startswith("block_") for k in params)
  kernel = params["blocks"]["mlp"]["wi"]["kernel"]
  assert kernel.names == ("layers", "embed", "mlp")
  assert kernel.value.shape == (cfg.num_layers, cfg.d_model, cfg.mlp_dim)
  # Round trip of the two layouts, and weight decay still skips the (now 2-D) norm scales.
  plain = init_params(nanogpt_cfg)
  again = unstack_layers(stack_layers(plain, cfg.num_layers), cfg.num_layers)
  jax.tree.map(np.testing.assert_array_equal, again, plain)
  mask = decay_mask(stack_layers(plain, cfg.num_layers))
  assert not mask["blocks"]["ln_attn"]["scale"] and mask["blocks"]["mlp"]["wi"]["kernel"]


def test_scanned_model_decodes_with_a_kv_cache_like_the_unscanned(nanogpt_cfg):
  params = init_params(nanogpt_cfg)
  scanned = dataclasses.replace(nanogpt_cfg, scan_layers=True, remat="full")
  sampling = SamplingConfig(max_new_tokens=8, temperature=0.0)
  prompts = [[1, 2, 3], [4, 5]]
  assert (generate(stack_layers(params, 3), scanned, prompts, sampling) ==
          generate(params, nanogpt_cfg, prompts, sampling))


def test_train_step_is_the_same_with_scan_and_remat(nanogpt_cfg):
  mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])
  rules = base_config().mesh.rules
  optim = OptimConfig(steps=10, warmup_steps=0)
  rng = np.random.default_rng(0)
  shape = (1, 4, SEQ)
  batch = {"inputs": rng.integers(0, 61, shape).astype(np.int32),
           "targets": rng.integers(0, 61, shape).astype(np.int32),
           "positions": np.broadcast_to(np.arange(SEQ, dtype=np.int32), shape).copy(),
           "segment_ids": np.ones(shape, np.int32), "weights": np.ones(shape, np.float32)}
  params = init_params(nanogpt_cfg)
  results = []
  for cfg in (nanogpt_cfg, dataclasses.replace(nanogpt_cfg, scan_layers=True, remat="dots")):
    engine = build_engine(cfg, optim, mesh, rules, 0, SEQ)
    state = engine.from_params(stack_layers(params, 3) if cfg.scan_layers else params)
    for _ in range(2):
      state, metrics = engine.train_step(state, batch)
    new_params = unstack_layers(state.params, 3) if cfg.scan_layers else state.params
    results.append((float(metrics["loss"]), jax.device_get(new_params)))
  assert abs(results[0][0] - results[1][0]) < 1e-5
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), results[0][1],
               results[1][1])


def test_bfloat16_is_mixed_precision_with_float32_params_logits_and_grads(nanogpt_cfg):
  params = init_params(dataclasses.replace(nanogpt_cfg, dtype="bfloat16"))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  batch = inputs(nanogpt_cfg.vocab_size)
  logits32, _ = logits_and_grads(nanogpt_cfg, params, *batch)
  logits16, grads16 = logits_and_grads(dataclasses.replace(nanogpt_cfg, dtype="bfloat16"), params,
                                       *batch)
  assert logits16.dtype == jnp.float32
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
  # bf16 has 8 mantissa bits: close, not equal.
  assert 0 < float(jnp.abs(logits16 - logits32).max()) < 0.05


def test_attention_impl_is_checked(nanogpt_cfg):
  with pytest.raises(ConfigError, match="attention_impl"):
    dataclasses.replace(nanogpt_cfg, attention_impl="flash")
  with pytest.raises(ConfigError, match="remat"):
    dataclasses.replace(nanogpt_cfg, remat="some")
  if jax.default_backend() != "gpu":
    cfg = dataclasses.replace(nanogpt_cfg, attention_impl="cudnn")
    with pytest.raises(ConfigError, match="needs a GPU"):
      init_params(cfg)
