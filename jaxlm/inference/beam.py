"""Beam search for any model family, driven by a step function, with Hugging Face's scoring.

The family supplies

    step_fn(cache, tokens  # [batch*beam], step_index) -> (logits  # [batch*beam, vocab], cache)

which feeds generated token number `step_index` (0-based) of every beam and returns the logits of
the next one, and optionally `reorder_cache(cache, flat_indices  # [batch*beam])`, which gathers
cache rows (default: every leaf along axis 0). Row `b * beam + j` is beam j of batch row b.

The search is the one of transformers' `generate(num_beams=k)` (5.x, `_beam_search`), step for
step, so that outputs match it token for token:
- each step keeps the 2k best continuations of all k beams (by summed log-probability); of these,
  the best k that do not end in EOS run on, and those among the best k that end in EOS (or reach
  `max_new_tokens`) become finished hypotheses;
- a finished hypothesis scores `sum_logprobs / length ** length_penalty`, where length counts the
  generated tokens, its EOS included (the prompt / decoder start token excluded);
- the k best finished hypotheses are kept. `early_stopping=True` stops adding once k are kept;
  otherwise a row stops once its best running beam, scored at the current length (False) or, with
  "never" and a positive length penalty, at `max_new_tokens`, cannot beat the worst kept one;
- beams that reach `max_new_tokens` without EOS finish there, so k hypotheses always come back.
All shapes are fixed: a `lax.while_loop` runs until every row is done or `max_new_tokens`.
Call `beam_search` inside `jax.jit`.
"""

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.errors import UserError

# transformers' stand-in for -inf: scores of impossible or excluded candidates (float32 keeps the
# arithmetic on them finite, and excluded ones stay ordered below every real score).
EXCLUDED = -1.0e9
EARLY_STOPPING = (True, False, "never")


@dataclasses.dataclass(frozen=True)
class BeamConfig:
  beam_size: int = 4
  max_new_tokens: int = 64
  length_penalty: float = 1.0  # score = sum_logprobs / length ** length_penalty
  early_stopping: bool | str = False  # True, False or "never", as in transformers
  eos_id: int | None = None  # None: every hypothesis runs to max_new_tokens


def check_beam_config(beam: BeamConfig) -> None:
  """UserError for options a search cannot run with (flag names as in `jaxlm.sample`)."""
  if beam.beam_size < 1:
    raise UserError(f"--beam_size={beam.beam_size} is below 1; give 1 (no beam search) or more")
  if beam.max_new_tokens < 1:
    raise UserError(f"--max_new_tokens={beam.max_new_tokens} is below 1; give 1 or more")
  if not any(beam.early_stopping is value for value in EARLY_STOPPING):
    raise UserError(f"--early_stopping={beam.early_stopping!r} is not one of true, false, never; "
                    "pick one of them")


class BeamResult(NamedTuple):
  """The k finished hypotheses of each row, best first."""
  tokens: jax.Array  # [batch, beam, max_new_tokens] int32, EOS included, then eos_id (or 0)
  lengths: jax.Array  # [batch, beam] int32: generated tokens, EOS included
  scores: jax.Array  # [batch, beam] float32: sum_logprobs / length ** length_penalty


class _State(NamedTuple):
  step: jax.Array  # [] int32: generated tokens so far
  cache: Any
  logits: jax.Array  # [batch*beam, vocab]: of generated token number `step`
  running_tokens: jax.Array  # [batch, beam, max_new_tokens]
  running_scores: jax.Array  # [batch, beam]: summed log-probabilities, best first
  tokens: jax.Array  # the finished hypotheses: BeamResult's fields
  lengths: jax.Array
  scores: jax.Array
  finished: jax.Array  # [batch, beam] bool: the slot holds a finished hypothesis
  improvable: jax.Array  # [batch] bool: a running beam may still beat a kept hypothesis


def repeat_beams(tree: Any, beam_size: int, axis: int = 0) -> Any:
  """Every leaf's rows repeated `beam_size` times along `axis` (row b -> rows b*k .. b*k+k-1)."""
  return jax.tree.map(lambda x: jnp.repeat(x, beam_size, axis=axis), tree)


def gather_rows(axis: int = 0) -> Callable[[Any, jax.Array], Any]:
  """A `reorder_cache` that takes rows `flat_indices` of every leaf along `axis`."""
  return lambda cache, flat_indices: jax.tree.map(
      lambda x: jnp.take(x, flat_indices, axis=axis), cache)


def _gather(values: jax.Array, indices: jax.Array) -> jax.Array:
  """values `[batch, n, ...]` at indices `[batch, m]` along axis 1 -> `[batch, m, ...]`."""
  indices = indices.reshape(indices.shape + (1,) * (values.ndim - 2))
  return jnp.take_along_axis(values, indices, axis=1)


def _penalties(beam: BeamConfig) -> jax.Array:
  """`length ** length_penalty` for lengths 1..max_new_tokens, `[max_new_tokens]` float32.

  Computed in float64 and rounded once, as transformers' Python-float divisor is."""
  lengths = np.arange(1, beam.max_new_tokens + 1, dtype=np.float64)
  return jnp.asarray(lengths ** beam.length_penalty, jnp.float32)


def _expand(state: _State, beam: BeamConfig):
  """The 2k best continuations per row: (summed log-probs `[batch, 2k]` best first, their
  sequences `[batch, 2k, max_new_tokens]`, source beams `[batch, 2k]`, last tokens `[batch, 2k]`)."""
  batch, k, _ = state.running_tokens.shape
  vocab = state.logits.shape[-1]
  log_probs = jax.nn.log_softmax(state.logits.astype(jnp.float32), axis=-1)
  log_probs = log_probs.reshape(batch, k, vocab) + state.running_scores[:, :, None]
  top_scores, top_indices = jax.lax.top_k(log_probs.reshape(batch, k * vocab), 2 * k)
  source_beams, tokens = top_indices // vocab, top_indices % vocab  # [batch, 2k] each
  at_step = jnp.arange(beam.max_new_tokens) == state.step  # [max_new_tokens]
  sequences = jnp.where(at_step, tokens[:, :, None], _gather(state.running_tokens, source_beams))
  return top_scores, sequences, source_beams, tokens


def _keep_finished(state: _State, top_scores, sequences, ends, beam: BeamConfig):
  """Merges the continuations that end (`ends [batch, 2k]`, among the best k only) into the k best
  finished hypotheses: (tokens, lengths, scores, finished)."""
  k = beam.beam_size
  among_best_k = jnp.arange(2 * k) < k  # the other k only stand by to keep k beams running
  scores = top_scores / _penalties(beam)[state.step]
  full = jnp.all(state.finished, axis=1, keepdims=True) & (beam.early_stopping is True)
  # Added one by one as transformers does, so that the excluded scores round alike.
  scores = scores + full.astype(jnp.float32) * EXCLUDED
  scores = scores + (~state.improvable[:, None]).astype(jnp.float32) * EXCLUDED
  just_finished = ends & among_best_k
  scores = scores + (~just_finished).astype(jnp.float32) * EXCLUDED
  merged_scores = jnp.concatenate([state.scores, scores], axis=1)  # [batch, 3k]
  _, best = jax.lax.top_k(merged_scores, k)
  new_lengths = jnp.broadcast_to(state.step + 1, scores.shape).astype(jnp.int32)
  merged = (jnp.concatenate([state.tokens, sequences], axis=1),
            jnp.concatenate([state.lengths, new_lengths], axis=1), merged_scores,
            jnp.concatenate([state.finished, just_finished], axis=1))
  return tuple(_gather(x, best) for x in merged)


def _still_improvable(state: _State, beam: BeamConfig) -> jax.Array:
  """transformers' early-stop heuristic after `state.step` tokens: `[batch]` bool."""
  if beam.early_stopping == "never" and beam.length_penalty > 0:
    divisor = _penalties(beam)[-1]  # the longest a running beam may grow
  else:
    divisor = _penalties(beam)[state.step - 1]
  best_running = state.running_scores[:, :1] / divisor  # [batch, 1]
  worst_kept = jnp.where(state.finished, jnp.min(state.scores, axis=1, keepdims=True), EXCLUDED)
  return state.improvable & jnp.any(best_running > worst_kept, axis=-1)


def _advance(state: _State, step_fn, reorder_cache, beam: BeamConfig) -> _State:
  """One generated token for every beam."""
  batch, k, _ = state.running_tokens.shape
  top_scores, sequences, source_beams, tokens = _expand(state, beam)
  last = state.step == beam.max_new_tokens - 1
  ends = (tokens == (-1 if beam.eos_id is None else beam.eos_id)) | last  # [batch, 2k]
  running_scores, keep = jax.lax.top_k(top_scores + ends.astype(jnp.float32) * EXCLUDED, k)
  running_tokens = _gather(sequences, keep)
  finished = _keep_finished(state, top_scores, sequences, ends, beam)
  flat_sources = (_gather(source_beams, keep) + jnp.arange(batch)[:, None] * k).reshape(-1)
  state = state._replace(step=state.step + 1, running_tokens=running_tokens,
                         running_scores=running_scores,
                         **dict(zip(("tokens", "lengths", "scores", "finished"), finished)))
  state = state._replace(improvable=_still_improvable(state, beam))

  def forward(cache):
    new_tokens = running_tokens[:, :, state.step - 1].reshape(-1)  # [batch*beam]
    return step_fn(reorder_cache(cache, flat_sources), new_tokens, state.step - 1)

  # The model runs only if the loop goes on (not after the last token, nor once every row is done).
  logits, cache = jax.lax.cond(_goes_on(state, beam), forward, lambda c: (state.logits, c),
                               state.cache)
  return state._replace(cache=cache, logits=logits)


def _goes_on(state: _State, beam: BeamConfig) -> jax.Array:
  """Whether any row may still change: tokens left, a row improvable and (early_stopping=True)
  not all rows full."""
  all_full = jnp.all(state.finished) & (beam.early_stopping is True)
  return (state.step < beam.max_new_tokens) & jnp.any(state.improvable) & ~all_full


def beam_search(step_fn: Callable, cache: Any, first_logits: jax.Array, beam: BeamConfig,
                reorder_cache: Callable[[Any, jax.Array], Any] = gather_rows(0)) -> BeamResult:
  """The k best hypotheses of each row. `cache` holds batch*beam rows (`repeat_beams`) that have
  seen the prompt; `first_logits  # [batch*beam, vocab]` are those of the first new token."""
  k, length = beam.beam_size, beam.max_new_tokens
  batch = first_logits.shape[0] // k
  fill = jnp.full((batch, k, length), 0 if beam.eos_id is None else beam.eos_id, jnp.int32)
  # Only beam 0 starts live, so the k identical beams do not all pick the same tokens.
  running_scores = jnp.where(jnp.arange(k) == 0, 0.0, EXCLUDED) * jnp.ones((batch, 1))
  state = _State(step=jnp.zeros((), jnp.int32), cache=cache, logits=first_logits,
                 running_tokens=fill, running_scores=running_scores.astype(jnp.float32),
                 tokens=fill, lengths=jnp.zeros((batch, k), jnp.int32),
                 scores=jnp.full((batch, k), EXCLUDED, jnp.float32),
                 finished=jnp.zeros((batch, k), bool), improvable=jnp.ones((batch,), bool))
  state = jax.lax.while_loop(lambda s: _goes_on(s, beam),
                             lambda s: _advance(s, step_fn, reorder_cache, beam), state)
  return BeamResult(state.tokens, state.lengths, state.scores)


def best_hypotheses(result: BeamResult, eos_id: int | None, count: int = 1) -> list[list[list[int]]]:
  """The `count` best hypotheses of each row as token lists, a final EOS dropped."""
  tokens, lengths = np.asarray(result.tokens), np.asarray(result.lengths)
  rows = []
  for row_tokens, row_lengths in zip(tokens, lengths):
    hypotheses = []
    for ids, n in zip(row_tokens[:count].tolist(), row_lengths[:count].tolist()):
      ids = ids[:n]
      hypotheses.append(ids[:-1] if ids and eos_id is not None and ids[-1] == eos_id else ids)
    rows.append(hypotheses)
  return rows
