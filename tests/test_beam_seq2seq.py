"""Beam search with an encoder-decoder equals transformers' `generate(num_beams=k)` on a tiny
random T5 imported into jaxlm (the model and tokenizer of tests/test_hf_t5.py), and a beam of
one is greedy decoding."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_hf_t5 import batch, hf_dir, imported  # noqa: E402,F401  (module fixtures)

from jaxlm.inference.beam import BeamConfig  # noqa: E402
from jaxlm.inference.decode import SamplingConfig  # noqa: E402
from jaxlm.inference.seq2seq import generate_seq2seq, right_pad  # noqa: E402
from jaxlm.inference.seq2seq_beam import beam_seq2seq  # noqa: E402

EOS = 1
# A token this random model often picks, used as EOS so that hypotheses finish early (the model
# never picks the tokenizer's EOS within a few steps).
OFTEN = 158


def hf_beam(model, sources, beam: BeamConfig) -> list[list[int]]:
  eos = beam.eos_id
  tokens, _, segments = right_pad(sources)
  with torch.no_grad():
    out = model.generate(input_ids=torch.tensor(tokens, dtype=torch.long),
                         attention_mask=torch.tensor(segments, dtype=torch.long),
                         max_new_tokens=beam.max_new_tokens, num_beams=beam.beam_size,
                         do_sample=False, length_penalty=beam.length_penalty,
                         early_stopping=beam.early_stopping, eos_token_id=eos, pad_token_id=0,
                         decoder_start_token_id=0,
                         # transformers 5.24 sizes its cache by num_layers, not the decoder's
                         # layers (see test_hf_t5.py): generate without one.
                         use_cache=False).numpy()
  rows = []
  for row in out.tolist():
    row = row[1:]  # generate's rows start with the decoder start id
    rows.append(row[:row.index(eos)] if eos in row else row)
  return rows


@pytest.mark.parametrize("beam_size,length_penalty,early_stopping,eos",
                         [(3, 1.0, False, EOS), (3, 1.0, False, OFTEN), (4, 0.5, True, OFTEN),
                          (2, 2.0, "never", OFTEN)])
def test_beam_search_equals_transformers_generate(hf_dir, imported, beam_size, length_penalty,
                                                  early_stopping, eos):
  _, model = hf_dir
  cfg, params = imported
  sources, _ = batch()
  beam = BeamConfig(beam_size=beam_size, max_new_tokens=8, length_penalty=length_penalty,
                    early_stopping=early_stopping, eos_id=eos)
  ours = [hypotheses[0] for hypotheses in beam_seq2seq(params, cfg, sources, beam)]
  assert ours == hf_beam(model, sources, beam)
  if eos == OFTEN:
    assert min(len(h) for h in ours) < beam.max_new_tokens  # some hypothesis ended at EOS


def test_a_beam_of_one_is_greedy_decoding(imported):
  cfg, params = imported
  sources, _ = batch()
  beam = BeamConfig(beam_size=1, max_new_tokens=8, eos_id=EOS)
  greedy = generate_seq2seq(params, cfg, sources, SamplingConfig(max_new_tokens=8, temperature=0),
                            eos_id=EOS)
  assert [h[0] for h in beam_seq2seq(params, cfg, sources, beam)] == greedy
