"""Beam search for an encoder-decoder: the encoder and the decoder's first step run once per
source, their cache (self-attention keys/values and the cross-attention keys/values of the
source) is then copied into each beam, and `beam.beam_search` drives `seq2seq.decoder_step`.
Scores and stopping are transformers' (see beam.py), so the output is `generate(num_beams=k)`'s.
"""

import functools
from collections.abc import Sequence
from typing import Any

import jax

from jaxlm.inference.beam import (
  BeamConfig,
  BeamResult,
  beam_search,
  best_hypotheses,
  check_beam_config,
  gather_rows,
  repeat_beams,
)
from jaxlm.inference.seq2seq import check_lengths, decoder_step, padded_sources, prefill
from jaxlm.models import ModelConfig


@functools.partial(jax.jit, static_argnames=("cfg", "beam", "decoder_start_id"))
def _beam_seq2seq(params: Any, tokens, positions, segments, *, cfg: ModelConfig,
                  beam: BeamConfig, decoder_start_id: int) -> BeamResult:
  logits, cache = prefill(params, cfg, tokens, positions, segments, decoder_start_id)
  batch_axis = 1 if cfg.scan_layers else 0  # scanned layers stack the cache on axis 0
  cache = repeat_beams(cache, beam.beam_size, batch_axis)
  first_logits = repeat_beams(logits, beam.beam_size)  # [batch * beam, vocab]

  def step_fn(cache, new_tokens, step_index):
    # Generated token i sits at decoder position i + 1 (the start token holds position 0).
    return decoder_step(params, cfg, cache, new_tokens, step_index + 1)

  return beam_search(step_fn, cache, first_logits, beam, gather_rows(batch_axis))


def beam_seq2seq(params: Any, cfg: ModelConfig, sources: Sequence[Sequence[int]],
                 beam: BeamConfig, num_return: int = 1, decoder_start_id: int = 0,
                 length_multiple: int = 1) -> list[list[list[int]]]:
  """The `num_return` best hypotheses of each source (target tokens, best first, a final EOS
  dropped)."""
  check_beam_config(beam)
  check_lengths(cfg, sources, beam.max_new_tokens)
  tokens, positions, segments = padded_sources(cfg, sources, length_multiple)
  result = _beam_seq2seq(params, tokens, positions, segments, cfg=cfg, beam=beam,
                         decoder_start_id=decoder_start_id)
  return best_hypotheses(result, beam.eos_id, num_return)
