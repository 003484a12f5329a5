"""Continuous batching's device side: a fixed-shape KV cache of `slots` rows under `jit`.

The design follows JetStream's engine API: `prefill` runs one prompt (right-padded to a bucketed
length, so a few compilations serve every prompt) into a one-row cache and picks its first token;
`insert` copies that row into a free slot of the decode state; `step` advances every slot by one
token in one compiled call. Each slot has its own cache index and position (the cache index of
`layers.Attention` is per row), its own PRNG key and its own temperature / top-k / top-p, so
requests with different settings share one compiled step and a request's tokens depend only on
the request: token t of a request is drawn with `fold_in(request_key, t)`, whatever its slot or
batch-mates. Slots that hold no request run too (fixed shapes) and their output is ignored.
`Engine` serves a GPT; `seq2seq_engine.Seq2SeqEngine` an encoder-decoder, through the same
prefill / insert / step (the family's own pieces are `_prefill_logits` and `_step_logits`).
"""

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.inference.decode import choose_rows
from jaxlm.models import GPT, ModelConfig

TOP_LOGPROBS = 5  # alternatives returned with each token (OpenAI's API allows up to 5)
MIN_BUCKET = 16


class Logprobs(NamedTuple):
  """Log-probabilities under the model (before temperature and filters) of each row's token."""
  chosen: jax.Array  # [rows] float32
  top_ids: jax.Array  # [rows, TOP_LOGPROBS] int32
  top_logprobs: jax.Array  # [rows, TOP_LOGPROBS] float32


class Sampling(NamedTuple):
  """Per-row sampling settings, each `[rows]`; keys are raw PRNG key data `[rows, 2]` uint32."""
  keys: jax.Array
  temperature: jax.Array
  top_k: jax.Array
  top_p: jax.Array


class DecodeState(NamedTuple):
  cache: Any  # the model's "cache" collection, `slots` rows
  tokens: jax.Array  # [slots] the last token of each slot, fed to the next step
  positions: jax.Array  # [slots] its position
  generated: jax.Array  # [slots] tokens generated so far: the next token's index for its key
  sampling: Sampling


class Prefix(NamedTuple):
  """A prefilled prompt: a one-row cache, its first token, and (if asked) the prompt's logprobs."""
  cache: Any
  token: jax.Array  # [1]
  logprobs: Logprobs  # of the first token, rows = 1
  prompt_logprobs: Logprobs | None  # of prompt tokens 1.. given those before, rows = bucket - 1


@jax.jit
def _choice_key(seed_word: jax.Array, choice: jax.Array) -> jax.Array:
  key = jax.random.wrap_key_data(jnp.stack([jnp.zeros_like(seed_word), seed_word]))
  return jax.random.key_data(jax.random.fold_in(key, choice))


def request_key(seed: int, choice: int) -> np.ndarray:
  """Raw key data of choice `choice` of a request with `seed`: one stream per (seed, choice),
  `fold_in(key(seed), choice)`. `jax.random.key` keeps a seed's low 32 bits (without x64), and
  so does this: one compiled call, where the eager ops took ~1 ms of the event loop a request."""
  return np.asarray(_choice_key(np.uint32(seed % 2**32), np.uint32(choice)))


def buckets(max_len: int) -> tuple[int, ...]:
  """Prefill lengths: powers of two from MIN_BUCKET, and max_len itself."""
  sizes, size = [], MIN_BUCKET
  while size < max_len:
    sizes.append(size)
    size *= 2
  return (*sizes, max_len)


def _logprobs(logits: jax.Array, tokens: jax.Array) -> Logprobs:
  """Logprobs of `tokens  # [rows]` and the top alternatives, from `logits  # [rows, vocab]`."""
  logprobs = jax.nn.log_softmax(logits, axis=-1)
  chosen = jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]
  top_logprobs, top_ids = jax.lax.top_k(logprobs, TOP_LOGPROBS)
  return Logprobs(chosen, top_ids.astype(jnp.int32), top_logprobs)


def _pick(logits: jax.Array, sampling: Sampling, generated: jax.Array):
  """Each row's next token `[rows]` (its key folded with its token index) and its logprobs."""
  keys = jax.vmap(lambda data, index: jax.random.fold_in(jax.random.wrap_key_data(data), index))(
      sampling.keys, generated)
  tokens = choose_rows(logits, keys, sampling.temperature, sampling.top_k, sampling.top_p)
  return tokens, _logprobs(logits, tokens)


@dataclasses.dataclass(frozen=True)
class Engine:
  """The compiled prefill / insert / step of one model with `slots` rows."""
  cfg: ModelConfig
  slots: int

  @property
  def model(self) -> GPT:
    return GPT(self.cfg, decode=True)

  def _empty_cache(self, rows: int) -> Any:
    one = jnp.zeros((rows, 1), jnp.int32)
    shapes = jax.eval_shape(lambda: self.model.init(jax.random.key(0), one, one, one))["cache"]
    return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

  def init_state(self) -> DecodeState:
    # Distinct buffers: the state is donated, and one buffer may not be donated twice.
    zeros = lambda dtype=jnp.int32: jnp.zeros((self.slots,), dtype)  # noqa: E731
    sampling = Sampling(jnp.zeros((self.slots, 2), jnp.uint32), zeros(jnp.float32), zeros(),
                        jnp.ones((self.slots,), jnp.float32))
    return DecodeState(jax.jit(self._empty_cache, static_argnums=0)(self.slots), zeros(), zeros(),
                       zeros(), sampling)

  def cache_length(self, prompt_length: int) -> int:
    """Tokens a prefilled row holds in the (self-attention) cache: the whole prompt."""
    return prompt_length

  def _prefill_logits(self, params: Any, tokens: jax.Array, length: jax.Array,
                      prompt_logprobs: bool) -> tuple[jax.Array, Any, Logprobs | None]:
    """(logits of the first new token `[1, vocab]`, the one-row cache, the prompt's logprobs if
    asked) of the prompt in `tokens  # [1, bucket]`."""
    bucket = tokens.shape[1]
    positions = jnp.arange(bucket, dtype=jnp.int32)[None]
    segments = (positions < length).astype(jnp.int32)
    # Every position's logits only for the prompt's logprobs; else the last prompt token's.
    logits_at = None if prompt_logprobs else jnp.reshape(length - 1, (1, 1))
    logits, mutated = self.model.apply({"params": params, "cache": self._empty_cache(1)},
                                       tokens, positions, segments, logits_at=logits_at,
                                       mutable=["cache"])
    if not prompt_logprobs:
      return logits[0], mutated["cache"], None  # [1, vocab]
    last = jax.lax.dynamic_index_in_dim(logits[0], length - 1, keepdims=True)  # [1, vocab]
    return last, mutated["cache"], _logprobs(logits[0, :-1], tokens[0, 1:])

  def _step_logits(self, params: Any, cache: Any, tokens: jax.Array,
                   positions: jax.Array) -> tuple[jax.Array, Any]:
    """(next-token logits `[rows, vocab]`, the cache) of `tokens` at `positions` (`[rows]`)."""
    logits, mutated = self.model.apply(
        {"params": params, "cache": cache}, tokens[:, None], positions[:, None],
        jnp.ones((tokens.shape[0], 1), jnp.int32), mutable=["cache"])
    return logits[:, 0], mutated["cache"]

  @functools.partial(jax.jit, static_argnums=(0, 4))
  def prefill(self, params: Any, tokens: jax.Array, length: jax.Array,
              prompt_logprobs: bool, sampling: Sampling) -> Prefix:
    """tokens `[1, bucket]`: the prompt then padding (segment 0, never attended to); length: the
    prompt's. `sampling` has one row."""
    last, cache, prompt = self._prefill_logits(params, tokens, length, prompt_logprobs)
    token, logprobs = _pick(last, sampling, jnp.zeros((1,), jnp.int32))
    return Prefix(cache, token, logprobs, prompt)

  @functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
  def insert(self, state: DecodeState, prefix: Prefix, slot: jax.Array, length: jax.Array,
             sampling: Sampling) -> DecodeState:
    """The decode state with `prefix` in row `slot`; `length`: the tokens its cache holds
    (`cache_length`), which is also the position of the next token fed."""
    batch_axis = 1 if self.cfg.scan_layers else 0  # scanned layers stack the cache on axis 0

    def put(path, rows, row):
      if getattr(path[-1], "key", None) == "index":  # the bucket's padding is not in the prompt
        row = jnp.full_like(row, length)
      # A row shorter than the slot's (an encoder-decoder's cross-attention keys of a bucketed
      # source) is zero-padded: segment 0 there, so the last occupant's keys are never attended.
      row = jnp.pad(row, [(0, 0 if axis == batch_axis else full - part)
                          for axis, (full, part) in enumerate(zip(rows.shape, row.shape))])
      return jax.lax.dynamic_update_slice_in_dim(rows, row.astype(rows.dtype), slot, batch_axis)

    cache = jax.tree_util.tree_map_with_path(put, state.cache, prefix.cache)
    set_row = lambda rows, value: rows.at[slot].set(value)  # noqa: E731
    return DecodeState(cache, set_row(state.tokens, prefix.token[0]),
                       set_row(state.positions, length), set_row(state.generated, 1),
                       jax.tree.map(lambda rows, row: set_row(rows, row[0]), state.sampling,
                                    sampling))

  def _advance(self, params: Any, state: DecodeState) -> tuple[DecodeState, jax.Array, Logprobs]:
    """One token for every row of `state`: (new state, tokens `[rows]`, their logprobs)."""
    # Empty slots keep stepping; clamping keeps their positions inside the position table.
    positions = jnp.minimum(state.positions, self.cfg.max_len - 1)
    logits, cache = self._step_logits(params, state.cache, state.tokens, positions)
    tokens, logprobs = _pick(logits, state.sampling, state.generated)
    new_state = DecodeState(cache, tokens, positions + 1, state.generated + 1,
                            state.sampling)
    return new_state, tokens, logprobs

  @functools.partial(jax.jit, static_argnums=(0, 3, 4), donate_argnums=2)
  def steps(self, params: Any, state: DecodeState, count: int,
            rows: int) -> tuple[DecodeState, jax.Array, Logprobs]:
    """`count` tokens for each of the first `rows` slots in one compiled loop:
    (new state, tokens `[count, rows]`, their logprobs, each `[count, rows, ...]`). A call costs
    the host one dispatch and one fetch, which on a CPU take longer than a small model's step;
    and a step's cost grows with its rows, so slots past the last occupied one are not run.
    Each token is the one a call of one token would give (a row's key is folded with its own
    token index)."""
    batch_axis = 1 if self.cfg.scan_layers else 0  # scanned layers stack the cache on axis 0
    axes = DecodeState(jax.tree.map(lambda _: batch_axis, state.cache), 0, 0, 0,
                       jax.tree.map(lambda _: 0, state.sampling))
    part = jax.tree.map(lambda x, axis: jax.lax.slice_in_dim(x, 0, rows, axis=axis), state, axes)

    def advance(part, _):
      part, tokens, logprobs = self._advance(params, part)
      return part, (tokens, logprobs)

    part, (tokens, logprobs) = jax.lax.scan(advance, part, None, length=count)
    state = jax.tree.map(lambda x, new, axis: jax.lax.dynamic_update_slice_in_dim(x, new, 0, axis),
                         state, part, axes)
    return state, tokens, logprobs


def sampling_row(key_data: np.ndarray, temperature: float, top_k: int, top_p: float) -> Sampling:
  """One row of `Sampling`, from host values (numpy: no eager device op per request)."""
  return Sampling(np.asarray(key_data, np.uint32)[None], np.array([temperature], np.float32),
                  np.array([top_k], np.int32), np.array([top_p], np.float32))


def pad_prompt(prompt: list[int], max_len: int) -> np.ndarray:
  """`[1, bucket]` int32: the prompt right-padded to the smallest bucket that holds it."""
  bucket = next(b for b in buckets(max_len) if b >= len(prompt))
  tokens = np.zeros((1, bucket), np.int32)
  tokens[0, :len(prompt)] = prompt
  return tokens
