"""Generation with an encoder-decoder: the encoder runs once over the sources, the decoder then
extends each target a token at a time from `decoder_start_id`, with a KV cache of its
self-attention and the cross-attention keys/values computed on its first (prefill) step.

Sources of different lengths share a batch by right padding (segment 0, which real tokens never
attend to; positions count from each source's first token, as Hugging Face's T5 does). The whole
generation is one jitted function, compiled once per (batch, source length, sampling settings).
`prefill` and `decoder_step` are the pieces a search over beams drives.
"""

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.errors import UserError
from jaxlm.inference.decode import SamplingConfig, choose, pad_rows, cut_at_eos
from jaxlm.models import EncDec, ModelConfig


def right_pad(sources: Sequence[Sequence[int]],
              length: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`decode.pad_rows` on the right: sources of different lengths in one encoder batch."""
  return pad_rows(sources, length, left=False)


def empty_decoder_cache(cfg: ModelConfig, encoded, encoder_segments) -> Any:
  """Zeros of the decoder's cache (self-attention over `cfg.max_len` positions, cross-attention
  over the encoder's) for rows of `encoded  # [batch, enc_len, d_model]` and
  `encoder_segments  # [batch, enc_len]`: arrays, or `jax.ShapeDtypeStruct`s (only shapes count)."""
  model = EncDec(cfg, decode=True)
  batch = encoded.shape[0]
  zeros, ones = jnp.zeros((batch, 1), jnp.int32), jnp.ones((batch, 1), jnp.int32)
  shapes = jax.eval_shape(lambda enc, seg: model.init(jax.random.key(0), zeros, zeros, ones, enc,
                                                      seg, method="decode_step"),
                          encoded, encoder_segments)["cache"]
  return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)


def prefill(params: Any, cfg: ModelConfig, encoder_tokens, encoder_positions, encoder_segments,
            decoder_start_id: int = 0) -> tuple[jax.Array, Any]:
  """Runs the encoder and the decoder's first step (`decoder_start_id` at position 0) on the
  sources `[batch, enc_len]`; returns (logits of the first target token `[batch, vocab]`, the
  decoder's cache, which holds the cross-attention keys/values from here on)."""
  model = EncDec(cfg, decode=True)
  batch = encoder_tokens.shape[0]
  encoded = model.apply({"params": params}, encoder_tokens, encoder_positions, encoder_segments,
                        method="encode")  # [batch, enc_len, d_model]
  start = jnp.full((batch, 1), decoder_start_id, jnp.int32)
  zeros, ones = jnp.zeros((batch, 1), jnp.int32), jnp.ones((batch, 1), jnp.int32)
  cache = empty_decoder_cache(cfg, encoded, encoder_segments)
  logits, mutated = model.apply({"params": params, "cache": cache}, start, zeros, ones, encoded,
                                encoder_segments, method="decode_step", mutable=["cache"])
  return logits[:, -1], mutated["cache"]


def decoder_step(params: Any, cfg: ModelConfig, cache: Any, tokens: jax.Array,
                 step_index) -> tuple[jax.Array, Any]:
  """Feeds `tokens  # [batch]` as the decoder input at position `step_index` (>= 1: one for the
  whole batch, or `[batch]`, each row its own, as a server's slots are) and returns (next-token
  logits `[batch, vocab]`, the updated cache)."""
  model = EncDec(cfg, decode=True)
  batch = tokens.shape[0]
  positions = jnp.broadcast_to(jnp.reshape(jnp.asarray(step_index, jnp.int32), (-1, 1)),
                               (batch, 1))
  logits, mutated = model.apply({"params": params, "cache": cache}, tokens[:, None], positions,
                                jnp.ones((batch, 1), jnp.int32), None, None,
                                method="decode_step", mutable=["cache"])
  return logits[:, -1], mutated["cache"]


@functools.partial(jax.jit, static_argnames=("cfg", "sampling", "decoder_start_id"))
def _generate(params: Any, tokens, positions, segments, key, *, cfg: ModelConfig,
              sampling: SamplingConfig, decoder_start_id: int) -> jax.Array:
  logits, cache = prefill(params, cfg, tokens, positions, segments, decoder_start_id)
  first = choose(logits, jax.random.fold_in(key, 0), sampling)

  def step(carry, index):
    cache, token = carry
    logits, cache = decoder_step(params, cfg, cache, token, index)
    new_token = choose(logits, jax.random.fold_in(key, index), sampling)
    return (cache, new_token), new_token

  _, rest = jax.lax.scan(step, (cache, first), jnp.arange(1, sampling.max_new_tokens))
  return jnp.concatenate([first[:, None], rest.T], axis=1)  # [batch, max_new_tokens]


def check_lengths(cfg: ModelConfig, sources: Sequence[Sequence[int]], max_new_tokens: int) -> None:
  """One-line errors for sources or targets the model cannot hold."""
  if cfg.family != "encdec":
    raise UserError(f"sequence-to-sequence generation needs a model.family=encdec run (this one "
                    f"is {cfg.family!r}); generate from a prompt instead")
  if not sources or min(len(s) for s in sources) == 0:
    raise UserError("a source is empty; give at least one token (e.g. the EOS id)")
  longest = max(len(s) for s in sources)
  if longest > cfg.max_len:
    raise UserError(f"a source of {longest} tokens is longer than the model's {cfg.max_len} "
                    "positions (model.max_len); shorten it")
  if max_new_tokens > cfg.max_len:
    raise UserError(f"max_new_tokens={max_new_tokens} exceeds the decoder's {cfg.max_len} "
                    "positions (model.max_len); lower --max_new_tokens")


def padded_sources(cfg: ModelConfig, sources: Sequence[Sequence[int]],
                   length_multiple: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`right_pad` to the longest source rounded up to `length_multiple` (so batches of similar
  sources share one compiled shape), at most the model's positions."""
  longest = max(len(s) for s in sources)
  return right_pad(sources, min(-(-longest // length_multiple) * length_multiple, cfg.max_len))


def generate_seq2seq(params: Any, cfg: ModelConfig, sources: Sequence[Sequence[int]],
                     sampling: SamplingConfig, seed: int = 0, eos_id: int | None = None,
                     decoder_start_id: int = 0, length_multiple: int = 1) -> list[list[int]]:
  """The target tokens generated for each source, cut before the first EOS."""
  check_lengths(cfg, sources, sampling.max_new_tokens)
  tokens, positions, segments = padded_sources(cfg, sources, length_multiple)
  out = np.asarray(_generate(params, tokens, positions, segments, jax.random.key(seed), cfg=cfg,
                             sampling=sampling, decoder_start_id=decoder_start_id))
  return [cut_at_eos(row, eos_id) for row in out.tolist()]
