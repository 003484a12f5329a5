"""Grouped-query attention, the RoPE base and Llama 3 RoPE scaling, q/k/v biases: against a plain
jnp reference that repeats each key/value head by hand, and Llama 3's frequency rule written out
per frequency."""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_decode import reference_greedy
from test_model_options import (
  assert_float32_close,
  packed_inputs,
  reference_dense,
  reference_mlp,
  reference_norm,
  scaled_params,
)

from jaxlm.errors import UserError
from jaxlm.inference.decode import SamplingConfig, generate
from jaxlm.models import GPT, ModelConfig
from jaxlm.models.rope import rope_frequencies
from jaxlm.parallel import sharding

# A Llama-3-like layout: RoPE (base 500000, llama3 scaling whose bands all fall inside head_dim 16
# because the original context is short), RMSNorm, SwiGLU, untied head, no biases but on q/k/v.
LLAMA = dict(positions="rope", norm="rmsnorm", mlp="swiglu", tie_embeddings=False,
             use_bias=False, rope_theta=500000.0, rope_scaling="llama3", rope_factor=8.0,
             rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_original_max_len=64)


def llama_cfg(**options) -> ModelConfig:
  return ModelConfig(vocab_size=61, d_model=64, num_layers=2, num_heads=4, mlp_dim=96,
                     max_len=32, **{**LLAMA, **options})


def hand_llama3_frequencies(head_dim, theta, factor, low, high, original):
  """Llama 3.1's rule, one frequency at a time (the reference code of Meta's llama-models)."""
  out = []
  for i in range(head_dim // 2):
    freq = 1.0 / theta ** (2 * i / head_dim)
    wavelength = 2 * math.pi / freq
    if wavelength < original / high:
      out.append(freq)
    elif wavelength > original / low:
      out.append(freq / factor)
    else:
      smooth = (original / wavelength - low) / (high - low)
      out.append((1 - smooth) * freq / factor + smooth * freq)
  return np.array(out)


def test_llama3_frequencies_equal_the_rule_in_all_three_bands():
  args = (16, 500000.0, 8.0, 1.0, 4.0, 64)
  got = rope_frequencies(*args[:2], "llama3", *args[2:])
  expected = hand_llama3_frequencies(*args)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  plain = rope_frequencies(16, 500000.0)
  kept, divided = np.isclose(got, plain), np.isclose(got, plain / 8)
  # Each band has members, so a wrong band edge or blend would show.
  assert kept.any() and divided.any() and (~kept & ~divided).any()
  np.testing.assert_allclose(plain, 500000.0 ** (-np.arange(8) / 8), rtol=1e-6)


def reference_rope(x, positions, inv_freq):
  angles = positions[..., None] * inv_freq  # [batch, seq, half]
  cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]
  half = x.shape[-1] // 2
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def reference_gqa(p, h, positions, allowed, cfg, inv_freq):
  """Attention with every key/value head repeated for its heads / kv_heads query heads."""
  if cfg.fused_qkv:
    qkv = reference_dense(p["qkv"], h, "bsd,dthk->bsthk")
    query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  else:
    query = reference_dense(p["q"], h, "bsd,dhk->bshk")  # [batch, seq, heads, head_dim]
    kv = reference_dense(p["kv"], h, "bsd,dthk->bsthk")  # [batch, seq, 2, kv_heads, head_dim]
    group = cfg.num_heads // cfg.kv_heads
    key, value = (jnp.repeat(kv[:, :, i], group, axis=2) for i in (0, 1))
  query, key = reference_rope(query, positions, inv_freq), reference_rope(key, positions, inv_freq)
  scores = jnp.einsum("bqhd,bkhd->bhqk", query, key) / np.sqrt(cfg.head_dim)
  weights = jax.nn.softmax(jnp.where(allowed, scores, -jnp.inf), axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
  return reference_dense(p["out"], out, "bqhd,hdm->bqm")


def reference_logits(params, cfg, tokens, positions, segments, inv_freq):
  seq = tokens.shape[1]
  x = params["embedding"][tokens]
  allowed = (np.tril(np.ones((seq, seq), bool))[None] &
             (segments[:, :, None] == segments[:, None, :]))[:, None]
  for i in range(cfg.num_layers):
    p = params[f"block_{i}"]
    x = x + reference_gqa(p["attn"], reference_norm(p["ln_attn"], x, cfg), positions, allowed,
                          cfg, inv_freq)
    x = x + reference_mlp(p["mlp"], reference_norm(p["ln_mlp"], x, cfg), cfg)
  return reference_norm(params["ln_final"], x, cfg) @ params["head"]


@pytest.mark.parametrize("options", [dict(num_kv_heads=2, qkv_bias=True), dict(num_kv_heads=1),
                                     dict(num_kv_heads=0, qkv_bias=True)])
def test_grouped_query_attention_equals_repeating_kv_heads(options):
  cfg = llama_cfg(**options)
  params = scaled_params(cfg)
  attn = params["block_0"]["attn"]
  if cfg.fused_qkv:
    assert attn["qkv"]["kernel"].shape == (64, 3, 4, 16)
  else:
    assert attn["kv"]["kernel"].shape == (64, 2, cfg.kv_heads, 16) and "qkv" not in attn
  assert ("bias" in (attn.get("qkv") or attn["q"])) == cfg.qkv_bias and "bias" not in attn["out"]
  tokens, positions, segments = packed_inputs(cfg.vocab_size)
  out = GPT(cfg).apply({"params": params}, tokens, positions, segments)
  hand = hand_llama3_frequencies(16, 500000.0, 8.0, 1.0, 4.0, 64)
  expected = reference_logits(params, cfg, tokens, positions, segments, hand)
  assert_float32_close(out, expected)
  # The test can tell unscaled RoPE frequencies from the scaled ones.
  unscaled = reference_logits(params, cfg, tokens, positions, segments,
                              rope_frequencies(16, 500000.0))
  assert float(jnp.abs(unscaled - expected).max()) > 100 * 1e-5 * float(jnp.abs(expected).max())


def test_kv_cache_holds_only_kv_heads_and_cached_greedy_equals_recomputing():
  cfg = llama_cfg(num_kv_heads=2)
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = nn.unbox(GPT(cfg).init(jax.random.key(4), tokens, tokens, tokens + 1)["params"])
  params = jax.tree.map(lambda x: x * 4 if x.ndim >= 2 else x, params)
  cache = GPT(cfg, decode=True).init(jax.random.key(0), tokens, tokens, tokens + 1)["cache"]
  assert cache["block_0"]["attn"]["key"].shape == (1, cfg.max_len, 2, cfg.head_dim)
  prompts = [[5, 9, 2, 7], [11, 3]]
  cached = generate(params, cfg, prompts, SamplingConfig(max_new_tokens=8, temperature=0))
  assert cached == [reference_greedy(params, cfg, prompt, 8) for prompt in prompts]


@pytest.mark.parametrize(("tensor", "kv_sharded"), [(2, True), (4, False)])
def test_kv_heads_split_over_tensor_only_when_it_divides_them(tensor, kv_sharded):
  cfg = llama_cfg(num_kv_heads=2)
  mesh = sharding.make_mesh(-1, 1, tensor)
  from jaxlm.config import base_config
  rules = base_config().mesh.rules
  tokens = jnp.zeros((1, 8), jnp.int32)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), tokens, tokens, tokens + 1))
  specs = sharding.logical_shardings(boxed["params"], mesh, rules)
  kv_spec = tuple(specs["block_0"]["attn"]["kv"]["kernel"].spec)
  q_spec = tuple(specs["block_0"]["attn"]["q"]["kernel"].spec)
  assert q_spec[1] == "tensor"  # 4 query heads split both ways
  assert (kv_spec[2] == "tensor") == kv_sharded


def test_kv_heads_that_do_not_divide_the_heads_are_refused():
  with pytest.raises(UserError, match="num_kv_heads=3 does not divide model.num_heads=4"):
    llama_cfg(num_kv_heads=3)
  with pytest.raises(UserError, match="rope_scaling"):
    dataclasses.replace(llama_cfg(), rope_scaling="yarn")
