"""Text generation with a KV cache: the prompt is prefilled in one forward pass, then one token per step.

Prompts of different lengths share a batch by left padding: padded slots get segment id 0, which
real tokens (segment 1) never attend to, and positions count from each row's first real token.
Everything from prefill to the last token is one jitted function, compiled once per
(batch, prompt length, new tokens, sampling settings).

`beam_generate` runs beam.py's search from the same prefill: each prompt once, its KV cache then
copied into every beam, and `step_logits` as the search's step function.
"""

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.errors import UserError
from jaxlm.inference.beam import (BeamConfig, BeamResult, beam_search, best_hypotheses,
                                  check_beam_config, gather_rows, repeat_beams)
from jaxlm.models import GPT, ModelConfig


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 64
  temperature: float = 1.0  # 0 = greedy
  top_k: int = 0  # 0 = no top-k filter
  top_p: float = 1.0  # 1 = no nucleus filter


def pad_rows(rows: Sequence[Sequence[int]], length: int | None = None,
             left: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(tokens, positions, segment_ids), each `[batch, length]` (default: the longest row), padded
  on the left (prompts, so that every row ends where generation starts) or on the right (an
  encoder's sources). Real tokens are segment 1 with positions from 0; padding is 0 in all three."""
  length = length or max(len(r) for r in rows)
  tokens = np.zeros((len(rows), length), np.int32)
  segments = np.zeros_like(tokens)
  for i, row in enumerate(rows):
    span = slice(length - len(row), length) if left else slice(0, len(row))
    tokens[i, span] = row
    segments[i, span] = 1
  positions = np.where(segments > 0, np.cumsum(segments, axis=1) - 1, 0).astype(np.int32)
  return tokens, positions, segments


def left_pad(prompts: Sequence[Sequence[int]],
             length: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`pad_rows` on the left: prompts of different lengths in one batch."""
  return pad_rows(prompts, length, left=True)


def filter_logits(logits: jax.Array, top_k, top_p) -> jax.Array:
  """Sets logits outside the top-k / nucleus (top-p) set to -inf. logits: [batch, vocab].

  top_k (0 = off) and top_p (1 = off) are Python numbers for the whole batch, or arrays `[batch]`,
  one per row, so that one compiled step serves requests with different settings."""
  vocab = logits.shape[-1]
  static = isinstance(top_k, int) and isinstance(top_p, float | int)
  use_k = not static or 0 < top_k < vocab
  use_p = not static or top_p < 1.0
  if not (use_k or use_p):
    return logits
  top_k = jnp.broadcast_to(jnp.asarray(top_k, jnp.int32), logits.shape[:1])[:, None]  # [batch, 1]
  top_p = jnp.broadcast_to(jnp.asarray(top_p, jnp.float32), logits.shape[:1])[:, None]
  kept_count = jnp.where((top_k > 0) & (top_k < vocab), top_k, vocab)  # [batch, 1]
  sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]  # [batch, vocab], descending
  if use_k:
    kth = jnp.take_along_axis(sorted_logits, kept_count - 1, axis=-1)  # [batch, 1]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
    sorted_logits = jnp.where(jnp.arange(vocab) < kept_count, sorted_logits, -jnp.inf)
  if use_p:
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    # Keep the smallest set whose probability reaches top_p (always at least the best token).
    cutoff_index = jnp.minimum(jnp.sum(cumulative < top_p, axis=-1, keepdims=True), vocab - 1)
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where((top_p < 1.0) & (logits < cutoff), -jnp.inf, logits)
  return logits


def choose(logits: jax.Array, key: jax.Array, s: SamplingConfig) -> jax.Array:
  """Next token ids `[batch]` from last-position logits `[batch, vocab]`."""
  if s.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = filter_logits(logits / s.temperature, s.top_k, s.top_p)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def choose_rows(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_k: jax.Array,
                top_p: jax.Array) -> jax.Array:
  """Next token ids `[batch]`, each row with its own key and settings (all `[batch]`); a row
  with temperature 0 is greedy. A row's choice depends on nothing but its own inputs."""
  greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  vocab = logits.shape[-1]

  def sample():
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
    # Sorting the vocabulary is most of a small model's step: only when some row filters.
    filtered = jax.lax.cond(jnp.any((top_k > 0) & (top_k < vocab)) | jnp.any(top_p < 1),
                            lambda x: filter_logits(x, top_k, top_p), lambda x: x, scaled)
    sampled = jax.vmap(lambda key, row: jax.random.categorical(key, row))(keys, filtered)
    return jnp.where(temperature > 0, sampled.astype(jnp.int32), greedy)

  return jax.lax.cond(jnp.any(temperature > 0), sample, lambda: greedy)


def prefill(model: GPT, params: Any, tokens, positions, segments):
  """Runs the prompt `[batch, len]` through an empty KV cache: (logits of the first new token
  `[batch, vocab]`, the cache, the first new token's positions `[batch]`)."""
  cache = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens[:, :1], positions[:, :1],
                                            segments[:, :1]))["cache"]
  cache = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), cache)
  last = jnp.full((tokens.shape[0], 1), tokens.shape[1] - 1)  # prompts are left-padded
  logits, mutated = model.apply({"params": params, "cache": cache}, tokens, positions, segments,
                                logits_at=last, mutable=["cache"])
  return logits[:, 0], mutated["cache"], positions[:, -1] + 1


def step_logits(model: GPT, params: Any, cache: Any, tokens, positions):
  """One token per row (`tokens`, `positions`: `[batch]`) through the KV cache: (logits
  `[batch, vocab]`, the cache)."""
  logits, mutated = model.apply({"params": params, "cache": cache}, tokens[:, None],
                                positions[:, None], jnp.ones((tokens.shape[0], 1), jnp.int32),
                                mutable=["cache"])
  return logits[:, -1], mutated["cache"]


@functools.partial(jax.jit, static_argnames=("cfg", "sampling"))
def _generate(params: Any, tokens, positions, segments, key, *, cfg: ModelConfig,
              sampling: SamplingConfig) -> jax.Array:
  model = GPT(cfg, decode=True)
  logits, cache, next_position = prefill(model, params, tokens, positions, segments)
  first = choose(logits, jax.random.fold_in(key, 0), sampling)

  def step(carry, index):
    cache, token, position = carry
    logits, cache = step_logits(model, params, cache, token, position)
    new_token = choose(logits, jax.random.fold_in(key, index), sampling)
    return (cache, new_token, position + 1), new_token

  _, rest = jax.lax.scan(step, (cache, first, next_position),
                         jnp.arange(1, sampling.max_new_tokens))
  return jnp.concatenate([first[:, None], rest.T], axis=1)  # [batch, max_new_tokens]


def padded_prompts(prompts: Sequence[Sequence[int]], cfg: ModelConfig, max_new_tokens: int,
                   length_multiple: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`left_pad`'s arrays for prompts that must leave room for `max_new_tokens` in the context."""
  longest = max(len(p) for p in prompts)
  if min(len(p) for p in prompts) == 0:
    raise UserError("a prompt is empty; give at least one token (or start from EOS)")
  if longest + max_new_tokens > cfg.max_len:
    raise UserError(
        f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the "
        f"model's context of {cfg.max_len} tokens; shorten the prompt or lower --max_new_tokens")
  # Rounding the padded length up lets batches of similar prompts share one compiled shape.
  rounded = -(-longest // length_multiple) * length_multiple
  return left_pad(prompts, min(rounded, cfg.max_len - max_new_tokens))


def cut_at_eos(row: list[int], eos_id: int | None) -> list[int]:
  """The tokens before the first EOS."""
  return row[:row.index(eos_id)] if eos_id is not None and eos_id in row else row


def generate(params: Any, cfg: ModelConfig, prompts: Sequence[Sequence[int]],
             sampling: SamplingConfig, seed: int = 0, eos_id: int | None = None,
             length_multiple: int = 1) -> list[list[int]]:
  """New tokens for each prompt, cut after the first EOS (which is dropped)."""
  tokens, positions, segments = padded_prompts(prompts, cfg, sampling.max_new_tokens,
                                               length_multiple)
  out = np.asarray(_generate(params, tokens, positions, segments, jax.random.key(seed),
                             cfg=cfg, sampling=sampling))
  return [cut_at_eos(row, eos_id) for row in out.tolist()]


@functools.partial(jax.jit, static_argnames=("cfg", "beam"))
def _beam_generate(params: Any, tokens, positions, segments, *, cfg: ModelConfig,
                   beam: BeamConfig) -> BeamResult:
  model = GPT(cfg, decode=True)
  logits, cache, next_position = prefill(model, params, tokens, positions, segments)
  # The prompt is run once per row; its cache is then copied into each beam.
  batch_axis = 1 if cfg.scan_layers else 0  # scanned layers stack the cache on axis 0
  cache = repeat_beams(cache, beam.beam_size, batch_axis)
  first_logits, next_position = repeat_beams((logits, next_position), beam.beam_size)

  def step_fn(cache, tokens, step_index):
    return step_logits(model, params, cache, tokens, next_position + step_index)

  return beam_search(step_fn, cache, first_logits, beam, gather_rows(batch_axis))


def beam_generate(params: Any, cfg: ModelConfig, prompts: Sequence[Sequence[int]],
                  beam: BeamConfig, num_return: int = 1,
                  length_multiple: int = 1) -> list[list[list[int]]]:
  """The `num_return` best beam-search hypotheses of each prompt (new tokens, best first, a final
  EOS dropped), scored as transformers' `generate(num_beams=...)` scores them."""
  check_beam_config(beam)
  if not 1 <= num_return <= beam.beam_size:
    raise UserError(f"num_return={num_return} is not within 1..beam_size={beam.beam_size}; ask "
                    "for fewer hypotheses or use a larger beam")
  tokens, positions, segments = padded_prompts(prompts, cfg, beam.max_new_tokens, length_multiple)
  result = _beam_generate(params, tokens, positions, segments, cfg=cfg, beam=beam)
  return best_hypotheses(result, beam.eos_id, num_return)
