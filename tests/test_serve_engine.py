"""The serving engine (per-slot KV cache, continuous batching) against `generate` and against a
loop that recomputes the whole context; mixed concurrent requests against each alone."""

import dataclasses
import threading

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_decode import reference_greedy

from jaxlm.inference.decode import SamplingConfig, generate
from jaxlm.models import GPT
from jaxlm.models.layers import stack_layers
from jaxlm.serving.engine import Engine, buckets, request_key
from jaxlm.serving.scheduler import Request, Scheduler


@pytest.fixture(scope="module")
def sharp_model(tiny_model_cfg):
  """A random model with large weights, so greedy choices are far from ties. RoPE: positions
  enter every attention call (learned positions are served in test_serve.py)."""
  cfg = dataclasses.replace(tiny_model_cfg, positions="rope")
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = nn.unbox(GPT(cfg).init(jax.random.key(4), tokens, tokens, tokens + 1)["params"])
  params = jax.tree.map(lambda x: x * 4 if x.ndim >= 2 else x, params)
  return cfg, params


class Collect:
  """A sink that keeps `max_tokens` tokens (no EOS stop: the tiny model's EOS is just a token)."""

  def __init__(self, max_tokens: int):
    self.max_tokens, self.tokens, self.logprobs = max_tokens, [], []
    self.done = threading.Event()

  def on_tokens(self, tokens, logprobs):
    for token, token_logprobs in zip(tokens, logprobs):
      self.tokens.append(token)
      self.logprobs.append(token_logprobs)
      if len(self.tokens) >= self.max_tokens:
        self.done.set()
        return True
    return False

  def on_error(self, message):
    self.tokens.append(message)
    self.done.set()


def run_all(cfg, params, specs, slots, decode_steps=1):
  """Submits every (prompt, max_tokens, temperature, top_k, top_p, seed) at once; their tokens."""
  scheduler = Scheduler(Engine(cfg, slots), params, decode_steps=decode_steps)
  scheduler.warm_up()  # finds the row counts a decode call may run, as the server does
  scheduler.start()
  try:
    sinks = []
    for prompt, max_tokens, temperature, top_k, top_p, seed in specs:
      sink = Collect(max_tokens)
      assert scheduler.submit(Request(list(prompt), request_key(seed, 0), temperature, top_k,
                                      top_p, sink, max_tokens=max_tokens))
      sinks.append(sink)
    for sink in sinks:
      assert sink.done.wait(120)
    return [s.tokens for s in sinks], [s.logprobs for s in sinks]
  finally:
    scheduler.stop()


@pytest.mark.parametrize("decode_steps", [1, 5])
def test_greedy_equals_generate_and_recomputing_the_whole_context(sharp_model, decode_steps):
  """With 5 tokens per decode call, 12 tokens end inside a call: the 4th prompt joins a slot
  whose last occupant ran past its end."""
  cfg, params = sharp_model
  prompts = [[5, 9, 2, 7], [11, 3], [1, 2, 3, 4, 5, 6, 7, 8, 9], list(range(1, 18))]  # 2 buckets
  steps = 12
  served, _ = run_all(cfg, params, [(p, steps, 0.0, 0, 1.0, 0) for p in prompts], slots=3,
                      decode_steps=decode_steps)
  expected = generate(params, cfg, prompts, SamplingConfig(max_new_tokens=steps, temperature=0))
  assert served == expected
  assert served == [reference_greedy(params, cfg, p, steps) for p in prompts]


def test_scanned_layers_serve_the_same_tokens(sharp_model):
  """With `scan_layers` the cache has a leading layer axis: rows are inserted on axis 1."""
  cfg, params = sharp_model
  scanned = dataclasses.replace(cfg, scan_layers=True)
  specs = [([5, 9, 2, 7], 10, 0.0, 0, 1.0, 0), ([11, 3], 10, 0.0, 0, 1.0, 0)]
  expected = run_all(cfg, params, specs, slots=2)[0]
  assert run_all(scanned, stack_layers(params, cfg.num_layers), specs, slots=2)[0] == expected


@pytest.mark.parametrize("decode_steps", [1, 4])
def test_mixed_concurrent_requests_equal_each_alone(sharp_model, decode_steps):
  """Together (with `decode_steps` tokens per decode call) equals each alone (one per call)."""
  cfg, params = sharp_model
  rng = np.random.default_rng(0)
  specs = []
  for i in range(7):
    prompt = rng.integers(1, cfg.vocab_size, rng.integers(1, 20)).tolist()
    temperature, top_k, top_p = [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8)][i % 4]
    specs.append((prompt, int(rng.integers(3, 10)), temperature, top_k, top_p, 100 + i))
  together, together_lp = run_all(cfg, params, specs, slots=3,
                                  decode_steps=decode_steps)  # queueing; varied slots
  alone = [run_all(cfg, params, [spec], slots=3) for spec in specs]
  assert together == [tokens[0] for tokens, _ in alone]
  for mixed, (_, single) in zip(together_lp, alone):
    np.testing.assert_array_equal([lp[0] for lp in mixed], [lp[0] for lp in single[0]])
  # Sampling did sample: another seed changes some output.
  reseeded = run_all(cfg, params, [(*spec[:5], spec[5] + 50) for spec in specs], slots=3)[0]
  assert reseeded != together


def test_logprobs_are_the_log_softmax_of_the_full_forward(sharp_model):
  cfg, params = sharp_model
  prompt = [3, 1, 4, 1, 5]
  (tokens,), (logprobs,) = run_all(cfg, params, [(prompt, 6, 1.0, 0, 1.0, 7)], slots=2)
  context = np.array([prompt + tokens], np.int32)
  length = context.shape[1]
  logits = GPT(cfg).apply({"params": params}, context, np.arange(length)[None],
                          np.ones_like(context))[0]  # [length, vocab]
  reference = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  for i, (chosen, top_ids, top_lp) in enumerate(logprobs):
    row = reference[len(prompt) - 1 + i]
    # Float32 rounding of another summation order (cache vs full); logprobs are O(10).
    np.testing.assert_allclose(chosen, row[tokens[i]], atol=1e-4)
    assert top_ids == np.argsort(-row)[:5].tolist()
    np.testing.assert_allclose(top_lp, np.sort(row)[::-1][:5], atol=1e-4)


def test_parameters_sharded_over_8_devices_serve_the_same_tokens(sharp_model):
  cfg, params = sharp_model
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]), ("fsdp",))
  assert len(jax.devices()) >= 8

  def place(x):  # fsdp-style: split the first axis that 8 divides
    axis = next((i for i, size in enumerate(x.shape) if size % 8 == 0), None)
    spec = [None] * x.ndim
    if axis is not None:
      spec[axis] = "fsdp"
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec)))

  sharded = jax.tree.map(place, params)
  specs = [([5, 9, 2], 8, 0.0, 0, 1.0, 0), ([7] * 12, 8, 1.0, 0, 1.0, 3)]
  assert run_all(cfg, sharded, specs, slots=2)[0] == run_all(cfg, params, specs, slots=2)[0]


def test_buckets_are_powers_of_two_up_to_the_context():
  assert buckets(32) == (16, 32)
  assert buckets(100) == (16, 32, 64, 100)
