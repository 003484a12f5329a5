"""KV-cache generation against full recomputation, left padding, and the sampling filters."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.errors import UserError
from jaxlm.inference.decode import SamplingConfig, filter_logits, generate, left_pad, prefill
from jaxlm.models import GPT
from jaxlm.serving.engine import Engine, pad_prompt, request_key, sampling_row


@pytest.fixture(scope="module", params=["learned", "rope"])
def sharp_model(request, tiny_model_cfg):
  """A random model with large weights, so greedy choices are far from ties."""
  cfg = dataclasses.replace(tiny_model_cfg, positions=request.param)
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = nn.unbox(GPT(cfg).init(jax.random.key(4), tokens, tokens, tokens + 1)["params"])
  params = jax.tree.map(lambda x: x * 4 if x.ndim >= 2 else x, params)
  return cfg, params


def reference_greedy(params, cfg, prompt, steps):
  """Greedy decoding without a cache: the whole context (one row, right-padded to max_len so that
  one compilation serves every length; causality hides the padding) for every token."""
  forward = jax.jit(lambda p, t: GPT(cfg).apply(
      {"params": p}, t, jnp.arange(cfg.max_len)[None], jnp.ones_like(t)))
  context = np.zeros((1, cfg.max_len), np.int32)
  context[0, :len(prompt)] = prompt
  for length in range(len(prompt), len(prompt) + steps):
    logits = forward(params, context)  # [1, max_len, vocab]
    context[0, length] = int(jnp.argmax(logits[0, length - 1]))
  return context[0, len(prompt):len(prompt) + steps].tolist()


def test_cached_greedy_equals_recomputing_the_whole_context(sharp_model):
  cfg, params = sharp_model
  prompts = [[5, 9, 2, 7], [11, 3], [1, 2, 3, 4, 5, 6, 7, 8, 9]]  # different lengths: left padding
  cached = generate(params, cfg, prompts, SamplingConfig(max_new_tokens=12, temperature=0))
  assert cached == [reference_greedy(params, cfg, prompt, 12) for prompt in prompts]
  assert len({tuple(o) for o in cached}) > 1


def test_prefill_then_step_logits_equal_the_full_forward(sharp_model):
  cfg, params = sharp_model
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 10)).astype(np.int32)
  positions = np.broadcast_to(np.arange(10), (2, 10)).astype(np.int32)
  segments = np.ones_like(tokens)
  full = GPT(cfg).apply({"params": params}, tokens, positions, segments)  # [2, 10, vocab]
  # Float32 rounding (another summation order over the cache): 1e-5 of the largest logit.
  tolerance = 1e-5 * float(np.abs(full).max())
  model = GPT(cfg, decode=True)
  cache = model.init(jax.random.key(0), tokens[:, :1], positions[:, :1], segments[:, :1])["cache"]
  cache = jax.tree.map(jnp.zeros_like, cache)
  prefill, state = model.apply({"params": params, "cache": cache}, tokens[:, :6], positions[:, :6],
                               segments[:, :6], mutable=["cache"])
  np.testing.assert_allclose(prefill, full[:, :6], rtol=0, atol=tolerance)
  for t in range(6, 10):
    step, state = model.apply({"params": params, **state}, tokens[:, t:t + 1],
                              positions[:, t:t + 1], segments[:, t:t + 1], mutable=["cache"])
    np.testing.assert_allclose(step[:, 0], full[:, t], rtol=0, atol=tolerance)


def test_left_padding_marks_pad_as_segment_zero_and_counts_positions_from_the_prompt():
  tokens, positions, segments = left_pad([[4, 5, 6], [7]])
  np.testing.assert_array_equal(tokens, [[4, 5, 6], [0, 0, 7]])
  np.testing.assert_array_equal(segments, [[1, 1, 1], [0, 0, 1]])
  np.testing.assert_array_equal(positions, [[0, 1, 2], [0, 0, 0]])


def test_top_k_and_top_p_keep_only_the_likeliest_tokens():
  logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
  kept = np.isfinite(np.asarray(filter_logits(logits, top_k=2, top_p=1.0)))[0]
  np.testing.assert_array_equal(kept, [True, True, False, False, False])
  kept = np.isfinite(np.asarray(filter_logits(logits, top_k=0, top_p=0.8)))[0]
  np.testing.assert_array_equal(kept, [True, True, True, False, False])  # 0.5+0.2 < 0.8 <= 0.85


def test_sampling_is_reproducible_by_seed_and_varies_across_seeds(sharp_model):
  cfg, params = sharp_model
  s = SamplingConfig(max_new_tokens=10, temperature=1.5)
  first = generate(params, cfg, [[1, 2]] * 4, s, seed=1)
  assert first == generate(params, cfg, [[1, 2]] * 4, s, seed=1)
  assert first != generate(params, cfg, [[1, 2]] * 4, s, seed=2)


def test_prompt_longer_than_the_context_is_refused(sharp_model):
  cfg, params = sharp_model
  with pytest.raises(UserError, match="context of 32 tokens"):
    generate(params, cfg, [[1] * 30], SamplingConfig(max_new_tokens=5))


def test_prefill_computes_the_last_prompt_tokens_logits_only(tiny_model_cfg):
  """A prefill's logits are the full forward's at each prompt's last token (left padding), and
  the compiled prefill of generate and of the server's engine holds no `[seq, vocab]` logits
  (a 512-token prompt with a 32k vocabulary: 66 MB a row)."""
  cfg = dataclasses.replace(tiny_model_cfg, vocab_size=8192, max_len=256)
  tokens, positions, segments = left_pad([[5] * 256, [7] * 200])
  params = nn.unbox(GPT(cfg).init(jax.random.key(0), tokens[:, :8], positions[:, :8],
                                  segments[:, :8])["params"])
  model = GPT(cfg, decode=True)
  logits, _, _ = prefill(model, params, tokens, positions, segments)
  full = GPT(cfg).apply({"params": params}, tokens, positions, segments)[:, -1]  # [2, vocab]
  # Float32 rounding (a one-row head matmul against a many-row one): 1e-5 of the largest logit.
  np.testing.assert_allclose(logits, full, rtol=0, atol=1e-5 * float(np.abs(full).max()))
  all_logits_bytes = tokens.shape[1] * cfg.vocab_size * 4  # one row's [seq, vocab] float32
  compiled = jax.jit(lambda *a: prefill(model, *a)[0]).lower(
      params, tokens[:1], positions[:1], segments[:1]).compile()
  assert compiled.memory_analysis().temp_size_in_bytes < all_logits_bytes / 2
  engine = Engine(cfg, slots=1)
  sampling = sampling_row(request_key(0, 0), 0.0, 0, 1.0)
  for prompt_logprobs, holds_logits in ((False, False), (True, True)):
    compiled = Engine.prefill.lower(engine, params, pad_prompt([5] * 200, cfg.max_len), 200,
                                    prompt_logprobs, sampling).compile()
    held = compiled.memory_analysis().temp_size_in_bytes >= all_logits_bytes
    assert held == holds_logits  # every position's logits only for the prompt's logprobs
