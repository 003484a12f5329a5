"""The serving engine of an encoder-decoder: `Engine`'s prefill / insert / step with the pieces of
`inference/seq2seq.py` (the same ones `jaxlm.sample --source` decodes with).

Prefill runs the encoder once over the source (right-padded to its bucket, padding segment 0)
and the decoder's first step from `decoder_start_id`, which computes every decoder layer's
cross-attention keys/values. Each slot's cache holds its decoder self-attention (`max_len`
positions) and those cross keys/values over `max_len` encoder positions with their source
segments; `insert` zero-pads a bucket's row to that length (segment 0: never attended), so one
compiled step serves sources of every length. A step feeds each slot's last token at its own
decoder position.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxlm.inference import seq2seq
from jaxlm.serving.engine import Engine, Logprobs

DECODER_START_ID = 0  # as `jaxlm.sample --source` and `evaluate --task` start (T5: the pad id)


@dataclasses.dataclass(frozen=True)
class Seq2SeqEngine(Engine):
  """An encoder-decoder's compiled prefill / insert / step with `slots` rows."""

  def _empty_cache(self, rows: int) -> Any:
    encoded = jax.ShapeDtypeStruct((rows, self.cfg.max_len, self.cfg.d_model),
                                   self.cfg.compute_dtype)  # only its shape counts
    segments = jax.ShapeDtypeStruct((rows, self.cfg.max_len), jnp.int32)
    return seq2seq.empty_decoder_cache(self.cfg, encoded, segments)

  def cache_length(self, prompt_length: int) -> int:
    """After prefill the decoder's self-attention holds its start token only."""
    return 1

  def _prefill_logits(self, params: Any, tokens: jax.Array, length: jax.Array,
                      prompt_logprobs: bool) -> tuple[jax.Array, Any, Logprobs | None]:
    """The source `tokens  # [1, bucket]` (its first `length` real): the first target token's
    logits `[1, vocab]` and the one-row decoder cache. A source has no logprobs (the encoder
    predicts nothing), so `prompt_logprobs` is never asked."""
    del prompt_logprobs
    positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]  # [1, bucket]
    segments = (positions < length).astype(jnp.int32)
    # Padding's positions are 0, as `seq2seq.right_pad` gives them to `jaxlm.sample`.
    logits, cache = seq2seq.prefill(params, self.cfg, tokens, positions * segments, segments,
                                    DECODER_START_ID)
    return logits, cache, None

  def _step_logits(self, params: Any, cache: Any, tokens: jax.Array,
                   positions: jax.Array) -> tuple[jax.Array, Any]:
    return seq2seq.decoder_step(params, self.cfg, cache, tokens, positions)


def engine_for(cfg, slots: int) -> Engine:
  """The engine of the run's family (gpt or encdec)."""
  return (Seq2SeqEngine if cfg.family == "encdec" else Engine)(cfg, slots)
