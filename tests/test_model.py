"""The model's numerics: causality, document masking, variants, logical axes."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models import GPT, ModelConfig, apply_rope

VARIANTS = {
    "gpt2": {},
    "rope_rms_swiglu_untied": dict(positions="rope", norm="rmsnorm", mlp="swiglu",
                                   tie_embeddings=False, use_bias=False),
}


def init_params(cfg: ModelConfig, seed: int = 0):
  tokens = jnp.zeros((1, 8), jnp.int32)
  return nn.unbox(GPT(cfg).init(jax.random.key(seed), tokens, tokens, tokens + 1)["params"])


def forward(cfg, params, tokens, positions=None, segments=None):
  tokens = jnp.asarray(tokens)
  if positions is None:
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  if segments is None:
    segments = jnp.ones_like(tokens)
  return GPT(cfg).apply({"params": params}, tokens, positions, segments)


def scaled(params):
  """Weight matrices x10: init's (std 0.02) give near-uniform attention and logits spread ~0.1, so
  masking or precision errors would hide under the tolerances; x10 makes attention sharp and the
  logits' spread O(1) (std ~1.1, max ~4)."""
  return jax.tree.map(lambda x: x * 10 if x.ndim >= 2 else x, params)


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, tiny_model_cfg):
  cfg = dataclasses.replace(tiny_model_cfg, **VARIANTS[request.param])
  return cfg, scaled(init_params(cfg))


def test_changing_a_future_token_never_changes_earlier_logits(variant):
  cfg, params = variant
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 16))
  base = forward(cfg, params, tokens)
  for t in (3, 9, 15):
    changed = tokens.copy()
    changed[:, t] = (changed[:, t] + 7) % cfg.vocab_size
    out = forward(cfg, params, changed)
    np.testing.assert_array_equal(out[:, :t], base[:, :t])
    assert np.abs(out[:, t] - base[:, t]).max() > 1e-4  # the changed position itself does move


def test_documents_in_one_row_do_not_see_each_other(variant):
  cfg, params = variant
  rng = np.random.default_rng(1)
  doc_a, doc_b = rng.integers(0, cfg.vocab_size, 10), rng.integers(0, cfg.vocab_size, 6)
  packed = np.concatenate([doc_a, doc_b])[None]
  segments = np.array([[1] * 10 + [2] * 6])
  positions = np.array([list(range(10)) + list(range(6))])
  out = forward(cfg, params, packed, positions, segments)
  alone_b = forward(cfg, params, doc_b[None])
  alone_a = forward(cfg, params, doc_a[None])
  # Float32 rounding only (sums over a different number of masked keys): 1e-5 of the largest logit.
  tolerance = 1e-5 * float(np.abs(out).max())
  np.testing.assert_allclose(out[0, 10:], alone_b[0], rtol=0, atol=tolerance)
  np.testing.assert_allclose(out[0, :10], alone_a[0], rtol=0, atol=tolerance)
  # Without the segment mask the second document's logits would differ.
  unmasked = forward(cfg, params, packed, positions, np.ones_like(segments))
  assert np.abs(unmasked[0, 10:] - alone_b[0]).max() > 1000 * tolerance


def test_every_parameter_has_logical_axes(tiny_model_cfg):
  untied = dataclasses.replace(tiny_model_cfg, **VARIANTS["rope_rms_swiglu_untied"])
  for cfg in (tiny_model_cfg, untied):
    tokens = jnp.zeros((1, 8), jnp.int32)
    boxed = jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), tokens, tokens, tokens + 1))
    leaves = jax.tree.leaves(boxed["params"],
                             is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    for leaf in leaves:
      assert len(leaf.names) == leaf.value.ndim


def test_tied_model_has_no_separate_head_and_untied_has_one(tiny_model_cfg):
  tied = init_params(tiny_model_cfg)
  untied = init_params(dataclasses.replace(tiny_model_cfg, tie_embeddings=False))
  assert "head" not in tied and untied["head"].shape == (32, 61)


def test_rope_rotation_depends_only_on_relative_position():
  rng = np.random.default_rng(2)
  q, k = rng.normal(size=(2, 1, 1, 1, 8)).astype(np.float32)
  def score(pq, pk):
    rq = apply_rope(jnp.asarray(q), jnp.array([[pq]]))
    rk = apply_rope(jnp.asarray(k), jnp.array([[pk]]))
    return float((rq * rk).sum())
  assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-5)
  assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


# bfloat16 keeps 8 significant bits: each rounding moves a value by at most 2^-8 of itself.
BF16_ROUNDING = 2.0 ** -8


def assert_bfloat16_close(logits16, logits32, num_layers: int):
  """bfloat16-compute logits are float32's up to bf16 rounding, and not equal to them.

  About 12 bf16 roundings lie in series per layer (norm, q/k/v, scores, softmax, attention output,
  its projection, residual, norm, MLP in, activation, MLP out, residual) plus 3 outside (embedding,
  final norm, head). Independent relative errors add in quadrature, so the RMS error relative to
  the logits' spread is about sqrt(n) * 2^-8 when each takes its largest value. Weights x10 amplify
  errors little: measured 2.3-3.5 * 2^-8 for these 2-3 layer models, against a bound of 5.2-6.2.
  """
  roundings = 12 * num_layers + 3
  error = np.asarray(logits16 - logits32)  # [batch, seq, vocab]
  relative = float(np.sqrt((error ** 2).mean()) / np.asarray(logits32).std())
  assert relative < np.sqrt(roundings) * BF16_ROUNDING
  # bf16 really ran: float32 compute leaves ~2^-23; one bf16 rounding alone gives 2^-8 / sqrt(3).
  assert relative > BF16_ROUNDING / 16


def test_bfloat16_compute_keeps_float32_params_and_logits(variant):
  cfg32, params32 = variant
  cfg = dataclasses.replace(cfg32, dtype="bfloat16")
  params = init_params(cfg)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  params = params32  # scaled: the logits' spread is O(1), so the bound is not vacuous
  tokens = np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 16))
  logits = forward(cfg, params, tokens)
  assert logits.dtype == jnp.float32
  assert_bfloat16_close(logits, forward(cfg32, params, tokens), cfg.num_layers)


def test_invalid_options_are_refused(tiny_model_cfg):
  with pytest.raises(ValueError, match="model.norm"):
    dataclasses.replace(tiny_model_cfg, norm="batchnorm")
  with pytest.raises(ValueError, match="num_heads"):
    dataclasses.replace(tiny_model_cfg, num_heads=5)
