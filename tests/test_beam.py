"""Beam search against an exhaustive search, a plain reference implementation, greedy decoding and
transformers' `generate(num_beams=k)` on a tiny random GPT-2 (unscanned and scanned layers)."""

import dataclasses
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.errors import UserError
from jaxlm.inference.beam import BeamConfig, beam_search, repeat_beams
from jaxlm.inference.decode import SamplingConfig, beam_generate, generate
from jaxlm.models import GPT, ModelConfig
from jaxlm.models.layers import stack_layers

# A fixed random "model" over a tiny vocabulary: the logits depend on the whole prefix (through a
# code naming it), so that beams interact as they do with a language model.
VOCAB, EOS, CODES = 5, 0, 997
# float32 log-softmax sums against float64 ones, over a few tokens of logits ~3.
SCORE_TOLERANCE = 1e-5


def table_model(rows: int, seed: int, vocab: int = VOCAB):
  """(logits table `[rows, CODES, vocab]`, code of a prefix + token) for a random prefix model.
  The code hashes the prefix (a rare collision only makes two prefixes predict alike)."""
  table = 3.0 * np.random.default_rng(seed).standard_normal((rows, CODES, vocab))
  table[..., EOS] += 1.0  # EOS often good enough to end hypotheses of several lengths
  return table.astype(np.float32), lambda code, token: (code * (vocab + 1) + token + 1) % CODES


def table_search(table, extend, beam: BeamConfig):
  """jaxlm's beam search on the table model: (tokens, lengths, scores), numpy, best first."""

  def step_fn(cache, tokens, step_index):
    del step_index
    code = extend(cache["code"], tokens)
    return jnp.asarray(table)[cache["row"], code], {"row": cache["row"], "code": code}

  def search():
    rows = table.shape[0]
    cache = repeat_beams({"row": jnp.arange(rows), "code": jnp.zeros(rows, jnp.int32)},
                         beam.beam_size)
    return beam_search(step_fn, cache, jnp.asarray(table)[cache["row"], 0], beam)

  return jax.tree.map(np.asarray, jax.jit(search)())


def log_softmax(logits: np.ndarray) -> np.ndarray:
  logits = logits.astype(np.float64)
  return logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()


def exhaustive_best(table, extend, row: int, beam: BeamConfig):
  """The best hypothesis of all: every token sequence that ends at its first EOS or at
  max_new_tokens, scored sum_logprobs / length ** length_penalty. Returns (score, tokens)."""
  best = (-np.inf, None)
  for length in range(1, beam.max_new_tokens + 1):
    for tokens in itertools.product(range(table.shape[-1]), repeat=length):
      if EOS in tokens[:-1] or (tokens[-1] != EOS and length < beam.max_new_tokens):
        continue
      code, total = 0, 0.0
      for token in tokens:
        total += log_softmax(table[row, code])[token]
        code = extend(code, token)
      best = max(best, (total / length ** beam.length_penalty, list(tokens)))
  return best


def reference_beam(table, extend, row: int, beam: BeamConfig):
  """transformers' beam search written plainly for one row, without its stand-in beams (so it
  needs vocab >= 2 * beam_size). Returns the kept hypotheses, best first: [(score, tokens)]."""
  k, vocab = beam.beam_size, table.shape[-1]
  assert vocab >= 2 * k
  running, kept, improvable = [(0.0, [], 0)], [], True  # (summed log-prob, tokens, prefix code)
  for step in range(beam.max_new_tokens):
    candidates = [(score + log_softmax(table[row, code])[token], tokens + [token],
                   extend(code, token))
                  for score, tokens, code in running for token in range(vocab)]
    candidates = sorted(candidates, key=lambda c: -c[0])[:2 * k]  # stable: ties keep beam order
    last = step == beam.max_new_tokens - 1
    ends = [tokens[-1] == EOS or last for _, tokens, _ in candidates]
    full = beam.early_stopping is True and len(kept) == k
    if improvable and not full:
      kept += [(score / (step + 1) ** beam.length_penalty, tokens)
               for (score, tokens, _), end in zip(candidates[:k], ends[:k]) if end]
      kept = sorted(kept, key=lambda h: -h[0])[:k]
    running = [c for c, end in zip(candidates, ends) if not end][:k]
    if last or (beam.early_stopping is True and len(kept) == k):
      break
    longest = beam.max_new_tokens if beam.early_stopping == "never" and beam.length_penalty > 0 \
        else step + 1
    improvable = improvable and (len(kept) < k or
                                 running[0][0] / longest ** beam.length_penalty > kept[-1][0])
    if not improvable:
      break
  return kept


def hypotheses(result, row: int) -> list:
  tokens, lengths, scores = result
  return [(float(s), t[:n].tolist()) for t, n, s in zip(tokens[row], lengths[row], scores[row])]


@pytest.mark.parametrize("length_penalty, early_stopping", [
    (1.0, False), (0.0, True), (2.0, "never"), (-1.0, False)])
def test_a_beam_as_wide_as_every_sequence_finds_the_exhaustive_best(length_penalty,
                                                                     early_stopping):
  max_new_tokens = 3
  table, extend = table_model(rows=2, seed=1)
  beam = BeamConfig(VOCAB ** max_new_tokens, max_new_tokens, length_penalty, early_stopping, EOS)
  result = table_search(table, extend, beam)
  for row in range(table.shape[0]):
    score, tokens = exhaustive_best(table, extend, row, beam)
    best_score, best_tokens = hypotheses(result, row)[0]
    assert best_tokens == tokens
    assert best_score == pytest.approx(score, abs=SCORE_TOLERANCE)


@pytest.mark.parametrize("beam_size, length_penalty, early_stopping", [
    (3, 1.0, False), (3, 2.0, False), (3, 2.0, "never"), (2, -1.0, True), (4, 0.5, True),
    (2, 0.0, "never")])
def test_a_narrow_beam_keeps_what_a_plain_reference_implementation_keeps(
    beam_size, length_penalty, early_stopping):
  vocab, max_new_tokens = 8, 6
  table, extend = table_model(rows=16, seed=2, vocab=vocab)
  beam = BeamConfig(beam_size, max_new_tokens, length_penalty, early_stopping, EOS)
  result = table_search(table, extend, beam)
  lengths_seen = set()
  for row in range(table.shape[0]):
    expected, got = reference_beam(table, extend, row, beam), hypotheses(result, row)
    assert len(expected) == beam_size  # the search always ends with k hypotheses
    assert [tokens for _, tokens in got] == [tokens for _, tokens in expected]
    np.testing.assert_allclose([s for s, _ in got], [s for s, _ in expected], rtol=0,
                               atol=SCORE_TOLERANCE)
    lengths_seen |= {len(tokens) for _, tokens in got}
  assert len(lengths_seen) > 1  # hypotheses of several lengths competed


@pytest.fixture(scope="module")
def sharp_gpt(tiny_model_cfg):
  """A random GPT with large weights, so greedy choices are far from ties."""
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = nn.unbox(GPT(tiny_model_cfg).init(jax.random.key(4), tokens, tokens, tokens + 1)
                    ["params"])
  return tiny_model_cfg, jax.tree.map(lambda x: x * 4 if x.ndim >= 2 else x, params)


def test_beam_of_one_is_greedy_decoding(sharp_gpt):
  cfg, params = sharp_gpt
  prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]  # left-padded together
  greedy = generate(params, cfg, prompts, SamplingConfig(8, temperature=0.0))
  beam = BeamConfig(beam_size=1, max_new_tokens=8)
  assert [h[0] for h in beam_generate(params, cfg, prompts, beam)] == greedy
  eos_id = greedy[0][3]  # a token greedy decoding emits: it stops there
  greedy = generate(params, cfg, prompts, SamplingConfig(8, temperature=0.0), eos_id=eos_id)
  beam = dataclasses.replace(beam, eos_id=eos_id)
  assert [h[0] for h in beam_generate(params, cfg, prompts, beam)] == greedy
  assert len(greedy[0]) < 8


def test_bad_beam_options_are_refused(sharp_gpt):
  cfg, params = sharp_gpt
  for beam, message in [(BeamConfig(beam_size=0), "--beam_size=0 is below 1"),
                        (BeamConfig(early_stopping="sometimes"), "is not one of true, false"),
                        (BeamConfig(max_new_tokens=0), "--max_new_tokens=0 is below 1")]:
    with pytest.raises(UserError, match=message):
      beam_generate(params, cfg, [[1, 2]], beam)
  with pytest.raises(UserError, match="num_return=3 is not within 1..beam_size=2"):
    beam_generate(params, cfg, [[1, 2]], BeamConfig(beam_size=2), num_return=3)
  with pytest.raises(UserError, match="exceeds the model's context"):
    beam_generate(params, cfg, [[1] * 30], BeamConfig(max_new_tokens=3))
