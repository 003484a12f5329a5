"""Decode calls that run fewer rows or fewer tokens: the row counts kept are those that change no
output, the scheduler picks the fewest that reach its last occupied slot, and it asks for no
token a request cannot take. (That outputs stay exactly those of full calls is tested end to end
in test_serve_engine.py's mixed-requests test, whose schedulers find their row counts so.)"""

import dataclasses
import threading

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.inference.decode import SamplingConfig, generate
from jaxlm.models import GPT, layers
from jaxlm.serving import row_counts
from jaxlm.serving.engine import Engine, request_key
from jaxlm.serving.scheduler import Request, Scheduler


@pytest.fixture(scope="module")
def params(tiny_model_cfg):
  tokens = jnp.zeros((1, 8), jnp.int32)
  return nn.unbox(GPT(tiny_model_cfg).init(jax.random.key(1), tokens, tokens, tokens + 1)["params"])


@dataclasses.dataclass(frozen=True)
class RowByRow(Engine):
  """An engine whose model runs each row alone (one compiled body in a loop), so a row's logits
  cannot depend on how many rows the call runs."""

  def _step_logits(self, params, cache, tokens, positions):
    def one(row):
      row_cache, token, position = jax.tree.map(lambda x: x[None], row)
      logits, new_cache = Engine._step_logits(self, params, row_cache, token, position)
      return logits[0], jax.tree.map(lambda x: x[0], new_cache)

    return jax.lax.map(one, (cache, tokens, positions))


@dataclasses.dataclass(frozen=True)
class SkewedAtTwoRows(RowByRow):
  """An engine whose two-row calls round differently (as a matrix-vector kernel may)."""

  def _step_logits(self, params, cache, tokens, positions):
    logits, cache = super()._step_logits(params, cache, tokens, positions)
    return (logits * (1 + 1e-6) if tokens.shape[0] == 2 else logits), cache


@dataclasses.dataclass(frozen=True)
class Recording(Engine):
  """Records each decode call's (tokens, rows)."""
  calls: list = dataclasses.field(default_factory=list, compare=False, hash=False)

  def steps(self, params, state, count, rows):
    self.calls.append((count, rows))
    return super().steps(params, state, count, rows)


def test_a_row_count_that_changes_outputs_is_not_kept(tiny_model_cfg, params):
  state = Engine(tiny_model_cfg, 8).init_state  # a fresh one each time: the calls donate it
  kept, _ = row_counts.invariant_row_counts(RowByRow(tiny_model_cfg, 8), params, state(), 3)
  assert kept == [1, 2, 4, 8]  # nothing dropped where no row count changes the outputs
  kept, _ = row_counts.invariant_row_counts(SkewedAtTwoRows(tiny_model_cfg, 8), params, state(),
                                            3)
  assert 2 not in kept and kept[-1] == 8 and kept == sorted(kept)


def test_fewest_rows_that_reach_the_last_occupied_slot(tiny_model_cfg, params):
  scheduler = Scheduler(Engine(tiny_model_cfg, 8), params)
  scheduler.row_counts = [2, 4, 8]
  for occupied, rows in [([0], 2), ([0, 1], 2), ([2], 4), ([0, 3], 4), ([1, 5], 8), ([7], 8)]:
    scheduler.slots = [object() if i in occupied else None for i in range(8)]
    assert scheduler.rows_to_run() == rows, occupied


class Take:
  def __init__(self, count):
    self.count, self.tokens, self.done = count, [], threading.Event()

  def on_tokens(self, tokens, logprobs):
    self.tokens += tokens[:self.count - len(self.tokens)]
    if len(self.tokens) == self.count:
      self.done.set()
    return self.done.is_set()

  def on_error(self, message):
    self.done.set()


@pytest.mark.parametrize("max_tokens, calls", [(3, [2]), (6, [8]), (12, [8, 4]), (1, [])])
def test_decode_calls_end_with_the_requests_max_tokens(tiny_model_cfg, params, max_tokens, calls):
  """The first token comes from the prefill; then calls of at most 8 tokens, the last one the
  power of two that covers what is left, and none once every token is computed or in flight."""
  engine = Recording(tiny_model_cfg, 4)
  scheduler = Scheduler(engine, params, decode_steps=8)
  scheduler.row_counts = [1, 4]
  scheduler.start()
  try:
    sink = Take(max_tokens)
    scheduler.submit(Request([3, 5, 7], request_key(0, 0), 0.0, 0, 1.0, sink,
                             max_tokens=max_tokens))
    assert sink.done.wait(120)
  finally:
    scheduler.stop()
  assert len(sink.tokens) == max_tokens
  assert engine.calls == [(count, 1) for count in calls]
  expected = generate(params, tiny_model_cfg, [[3, 5, 7]],
                      SamplingConfig(max_new_tokens=max_tokens, temperature=0))[0]
  assert sink.tokens == expected


@pytest.mark.parametrize("heads, kv_heads", [(6, 6), (6, 2)])
def test_decode_attention_of_few_rows_is_computed_as_in_eight(heads, kv_heads):
  """2-7 rows are padded to 8: each row's output is bit for bit its output in 8 rows (whatever
  the other rows hold), and equals softmax attention written out in numpy."""
  rng = np.random.default_rng(0)
  keys, head_dim = 128, 32  # configs/default.py's decode attention
  query = rng.normal(size=(8, 1, heads, head_dim)).astype(np.float32)
  key = rng.normal(size=(8, keys, kv_heads, head_dim)).astype(np.float32)
  value = rng.normal(size=(8, keys, kv_heads, head_dim)).astype(np.float32)
  allowed = rng.random((8, keys)) < 0.7
  attention = jax.jit(layers.single_query_attention)  # fused, as in a decode step
  eight = np.asarray(attention(query, key, value, allowed))
  group = heads // kv_heads
  scores = np.einsum("bhd,bkhd->bhk", query[:, 0], np.repeat(key, group, axis=2)) / head_dim**0.5
  scores = np.where(allowed[:, None], scores, -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  reference = np.einsum("bhk,bkhd->bhd", weights, np.repeat(value, group, axis=2))[:, None]
  for rows in range(1, 8):
    few = np.asarray(attention(query[:rows], key[:rows], value[:rows], allowed[:rows]))
    np.testing.assert_allclose(few, reference[:rows], rtol=1e-5, atol=1e-6)  # float32 sums
    if rows > 1:
      np.testing.assert_array_equal(few, eight[:rows])


def test_request_keys_are_jax_random_keys_folded_with_the_choice():
  for seed in [0, 1, 7, 2**31 + 5, 2**32 + 7, 2**40 + 12345, 2**63 - 1, 2**64 + 3]:
    for choice in [0, 1, 5]:
      expected = jax.random.key_data(jax.random.fold_in(jax.random.key(seed % 2**63), choice))
      np.testing.assert_array_equal(request_key(seed, choice), expected)
