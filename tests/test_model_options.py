"""Speed/memory options give the same numbers: remat, scan over layers, attention kernel, bf16."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_model import assert_bfloat16_close

from jaxlm.config import base_config
from jaxlm.errors import UserError
from jaxlm.inference.decode import SamplingConfig, generate
from jaxlm.models import GPT, ModelConfig, stack_layers, unstack_layers
from jaxlm.parallel import sharding
from jaxlm.training.engine import build_engine
from jaxlm.training.optim import OptimConfig, decay_mask

SEQ = 16


@pytest.fixture(scope="module")
def nanogpt_cfg():
  """The nanoGPT char architecture, shrunk: learned positions, LayerNorm, GELU, tied, no biases."""
  return ModelConfig(vocab_size=61, d_model=32, num_layers=3, num_heads=4, mlp_dim=128,
                     max_len=32, use_bias=False)


def init_params(cfg):
  tokens = jnp.zeros((1, 8), jnp.int32)
  return nn.unbox(GPT(cfg).init(jax.random.key(0), tokens, tokens, tokens + 1)["params"])


# At init (std 0.02) attention scores are ~0.03, so softmax is near uniform and logits spread ~0.1:
# a wrong mask or score scale would move logits by less than float rounding allows for. Weight
# matrices times 10 make attention sharp and logits O(1) (std ~1.1, max ~4).
WEIGHT_SCALE = 10.0


def scaled_params(cfg):
  """Weight matrices x WEIGHT_SCALE; norm scales and biases moved off their init (1 and 0), so a
  missing or misplaced one shows."""
  params = init_params(cfg)
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(tree, [
      x * WEIGHT_SCALE if x.ndim >= 2 else x + 0.1 * jax.random.normal(k, x.shape)
      for x, k in zip(leaves, keys)])


def assert_float32_close(actual, expected):
  """Equal up to float32 rounding: 2^-24 per op, reassociated over sums of ~100 terms and a few
  layers, stays within 1e-5 of the tensor's largest entry."""
  expected = np.asarray(expected)
  np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


# Packed rows: documents of these lengths, back to back; every row changes document mid-row.
DOC_LENGTHS = ((5, 7, 4), (9, 7))


def packed_inputs(vocab, seed=1):
  """tokens, positions (restarting at 0 in each document), segment ids (1, 2, ... per row)."""
  tokens = np.random.default_rng(seed).integers(0, vocab, (len(DOC_LENGTHS), SEQ)).astype(np.int32)
  positions = np.array([np.concatenate([np.arange(n) for n in row]) for row in DOC_LENGTHS],
                       np.int32)  # [rows, seq]
  segments = np.array([np.repeat(np.arange(1, len(row) + 1), row) for row in DOC_LENGTHS],
                      np.int32)  # [rows, seq]
  return jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments)


def reference_dense(p, x, spec):
  """x . p["kernel"] by an einsum `spec`, plus p["bias"] when the model has biases."""
  y = jnp.einsum(spec, x, p["kernel"])
  return y + p["bias"] if "bias" in p else y


def reference_norm(p, x, cfg):
  if cfg.norm == "rmsnorm":
    return x / jnp.sqrt((x ** 2).mean(-1, keepdims=True) + cfg.norm_eps) * p["scale"]
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  y = (x - mean) / jnp.sqrt(var + cfg.norm_eps) * p["scale"]
  return y + p["bias"] if "bias" in p else y


def reference_rope(x, positions):
  """Rotates feature pair (i, i + half) of `x  # [batch, seq, heads, head_dim]` by the angle
  position * 10000^(-i / half)."""
  half = x.shape[-1] // 2
  angles = positions[..., None] * 10000.0 ** (-np.arange(half) / half)  # [batch, seq, half]
  cos, sin = jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]  # [batch, seq, 1, half]
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def reference_attention(p, h, positions, allowed, cfg, score_scale):
  qkv = reference_dense(p["qkv"], h, "bsd,dthk->bsthk")  # [batch, seq, 3, heads, head_dim]
  query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  if cfg.positions == "rope":
    query, key = reference_rope(query, positions), reference_rope(key, positions)
  scores = jnp.einsum("bqhd,bkhd->bhqk", query, key) * score_scale  # [batch, heads, q, k]
  weights = jax.nn.softmax(jnp.where(allowed, scores, -jnp.inf), axis=-1)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights, value)  # [batch, seq, heads, head_dim]
  return reference_dense(p["out"], out, "bqhd,hdm->bqm")


def reference_mlp(p, h, cfg):
  if cfg.mlp == "swiglu":
    gate_up = reference_dense(p["wi"], h, "bsd,dtm->bstm")  # [batch, seq, 2, mlp_dim]
    hidden = jax.nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1]
  else:
    hidden = jax.nn.gelu(reference_dense(p["wi"], h, "bsd,dm->bsm"), approximate=True)
  return reference_dense(p["wo"], hidden, "bsm,md->bsd")


def reference_logits(params, cfg, tokens, positions, segments, score_scale=None):
  """A plain-jnp GPT (no Flax, no fused attention) for every architecture option.

  Attention is an einsum with a causal and same-document mask; `score_scale` defaults to
  1/sqrt(head_dim) (another value is only for checking that the test can tell).
  """
  if score_scale is None:
    score_scale = 1 / np.sqrt(cfg.head_dim)
  seq = tokens.shape[1]
  x = params["embedding"][tokens]  # [batch, seq, d_model]
  if cfg.positions == "learned":
    x = x + params["pos_embedding"][positions]
  causal = np.tril(np.ones((seq, seq), bool))  # [query, key]
  same_doc = segments[:, :, None] == segments[:, None, :]  # [batch, query, key]
  allowed = (causal[None] & same_doc)[:, None]  # [batch, 1, query, key]
  for i in range(cfg.num_layers):
    p = params[f"block_{i}"]
    h = reference_norm(p["ln_attn"], x, cfg)
    x = x + reference_attention(p["attn"], h, positions, allowed, cfg, score_scale)
    x = x + reference_mlp(p["mlp"], reference_norm(p["ln_mlp"], x, cfg), cfg)
  head = params["embedding"].T if cfg.tie_embeddings else params["head"]  # [d_model, vocab]
  return reference_norm(params["ln_final"], x, cfg) @ head  # [batch, seq, vocab]


@pytest.mark.parametrize("options", [
    dict(attention_impl="auto"), dict(attention_impl="xla"),
    dict(use_bias=True),  # GPT-2: biases in every dense layer and LayerNorm
    dict(positions="rope", norm="rmsnorm", mlp="swiglu", tie_embeddings=False)])
def test_model_on_packed_documents_equals_a_plain_jnp_reference(nanogpt_cfg, options):
  cfg = dataclasses.replace(nanogpt_cfg, **options)
  params = scaled_params(cfg)
  tokens, positions, segments = packed_inputs(cfg.vocab_size)
  out = GPT(cfg).apply({"params": params}, tokens, positions, segments)  # [batch, seq, vocab]
  expected = reference_logits(params, cfg, tokens, positions, segments)
  assert_float32_close(out, expected)
  # The inputs can tell: without the document mask, or without 1/sqrt(head_dim), the logits move
  # by far more than the tolerance above.
  tolerance = 1e-5 * float(jnp.abs(expected).max())
  one_doc = reference_logits(params, cfg, tokens, positions, jnp.ones_like(segments))
  unscaled = reference_logits(params, cfg, tokens, positions, segments, score_scale=1.0)
  for wrong in (one_doc, unscaled):
    assert float(jnp.abs(wrong - expected).max()) > 1000 * tolerance


def logits_and_grads(cfg, params, tokens, positions, segments):
  def loss(p):
    logits = GPT(cfg).apply({"params": p}, tokens, positions, segments)
    return jax.nn.log_softmax(logits).mean(), logits
  (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
  return logits, grads


@pytest.mark.parametrize("options", [dict(remat="full"), dict(remat="dots"),
                                     dict(scan_layers=True),
                                     dict(scan_layers=True, remat="dots")])
def test_speed_options_keep_logits_and_gradients(nanogpt_cfg, options):
  params = scaled_params(nanogpt_cfg)
  batch = packed_inputs(nanogpt_cfg.vocab_size)
  base_logits, base_grads = logits_and_grads(nanogpt_cfg, params, *batch)
  cfg = dataclasses.replace(nanogpt_cfg, **options)
  same_params = stack_layers(params, cfg.num_layers) if cfg.scan_layers else params
  logits, grads = logits_and_grads(cfg, same_params, *batch)
  if cfg.scan_layers:
    grads = unstack_layers(grads, cfg.num_layers)
  assert_float32_close(logits, base_logits)
  jax.tree.map(assert_float32_close, grads, base_grads)


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


def reference_greedy(params, cfg, prompt, steps):
  """Greedy decoding by rerunning `reference_logits` on the whole context for each new token."""
  context = list(prompt)
  for _ in range(steps):
    tokens = jnp.asarray([context])  # [1, len]
    positions = jnp.arange(len(context))[None]
    logits = reference_logits(params, cfg, tokens, positions, jnp.ones_like(tokens))
    context.append(int(jnp.argmax(logits[0, -1])))
  return context[len(prompt):]


def test_scanned_model_decodes_with_a_kv_cache_like_the_reference(nanogpt_cfg):
  params = scaled_params(nanogpt_cfg)  # sharp: greedy choices follow the context, not ties
  scanned = dataclasses.replace(nanogpt_cfg, scan_layers=True, remat="full")
  sampling = SamplingConfig(max_new_tokens=8, temperature=0.0)
  prompts = [[1, 2, 3], [4, 5]]  # different lengths: the shorter one is left-padded
  expected = [reference_greedy(params, nanogpt_cfg, p, 8) for p in prompts]
  assert generate(params, nanogpt_cfg, prompts, sampling) == expected
  assert generate(stack_layers(params, 3), scanned, prompts, sampling) == expected
  assert expected[0] != expected[1]


def test_train_step_is_the_same_with_scan_and_remat(nanogpt_cfg):
  mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])
  rules = base_config().mesh.rules
  optim = OptimConfig(steps=10, warmup_steps=0)
  tokens, positions, segments = (np.asarray(x)[None] for x in packed_inputs(61))  # [1, 2, SEQ]
  targets = np.random.default_rng(0).integers(0, 61, tokens.shape).astype(np.int32)
  batch = {"inputs": tokens, "targets": targets, "positions": positions, "segment_ids": segments,
           "weights": np.ones(tokens.shape, np.float32)}
  params = init_params(nanogpt_cfg)
  results = []
  for cfg in (nanogpt_cfg, dataclasses.replace(nanogpt_cfg, scan_layers=True, remat="dots")):
    engine = build_engine(cfg, optim, mesh, rules, 0, SEQ)
    state = engine.from_params(stack_layers(params, 3) if cfg.scan_layers else params)
    for _ in range(2):
      state, metrics = engine.train_step(state, batch)
    new_params = unstack_layers(state.params, 3) if cfg.scan_layers else state.params
    results.append((float(metrics["loss"]), jax.device_get(new_params)))
  assert results[1][0] == pytest.approx(results[0][0], rel=1e-5)
  # Two Adam steps move each parameter by ~2e-3; float32 rounding allows ~1e-6 here.
  jax.tree.map(assert_float32_close, results[1][1], results[0][1])


def test_bfloat16_is_mixed_precision_with_float32_params_logits_and_grads(nanogpt_cfg):
  cfg16 = dataclasses.replace(nanogpt_cfg, dtype="bfloat16")
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(init_params(cfg16)))
  params = scaled_params(nanogpt_cfg)  # logits O(1), so the bound below is not vacuous
  batch = packed_inputs(nanogpt_cfg.vocab_size)
  logits32, _ = logits_and_grads(nanogpt_cfg, params, *batch)
  logits16, grads16 = logits_and_grads(cfg16, params, *batch)
  assert logits16.dtype == jnp.float32
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
  assert_bfloat16_close(logits16, logits32, nanogpt_cfg.num_layers)


def test_attention_impl_is_checked(nanogpt_cfg):
  with pytest.raises(UserError, match="attention_impl"):
    dataclasses.replace(nanogpt_cfg, attention_impl="flash")
  with pytest.raises(UserError, match="remat"):
    dataclasses.replace(nanogpt_cfg, remat="some")
  if jax.default_backend() != "gpu":
    cfg = dataclasses.replace(nanogpt_cfg, attention_impl="cudnn")
    with pytest.raises(UserError, match="needs a GPU"):
      init_params(cfg)
