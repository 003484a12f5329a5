"""Bad encoder-decoder input: encdec models given GPT- or BERT-only options and gpt / bert models
given encdec-only ones, bad relative-position settings, sources and targets longer than the model:
one-line UserErrors, each a row of docs/errors.md; one case also through `train` (exit status 2)."""

import dataclasses

import pytest
from test_cli import TINY, jaxlm
from test_errors import cases, documented, user_error
from test_train import write_corpus

from jaxlm.errors import UserError
from jaxlm.inference.decode import SamplingConfig
from jaxlm.inference.seq2seq import generate_seq2seq
from jaxlm.models import ModelConfig

TINY_ENCDEC = ModelConfig(vocab_size=40, family="encdec", d_model=16, num_layers=1, num_heads=2,
                          mlp_dim=16, max_len=8, positions="relative", norm="rmsnorm",
                          use_bias=False)
TINY_GPT = dataclasses.replace(TINY_ENCDEC, family="gpt", positions="learned")


def check_message(case: str, error: UserError) -> None:
  message = str(error)
  assert "\n" not in message and "; " in message, message
  documented(case, f"error: {message}")


@pytest.mark.parametrize("case, base, changes, fragment", cases(
    ("encdec_with_token_types", TINY_ENCDEC, dict(type_vocab_size=2), "is a BERT option"),
    ("encdec_with_a_label_head", TINY_ENCDEC, dict(head="classify", num_labels=2),
     "needs model.family='bert'"),
    ("gpt_with_relative_positions", TINY_GPT, dict(positions="relative"),
     "needs model.family='encdec'"),
    ("gpt_with_decoder_layers", TINY_GPT, dict(num_decoder_layers=2),
     "num_decoder_layers=2 is an encoder-decoder option"),
    ("bert_with_head_size", dataclasses.replace(TINY_GPT, family="bert", norm_position="post"),
     dict(head_size=8), "head_size=8 is an encoder-decoder option"),
    ("negative_decoder_layers", TINY_ENCDEC, dict(num_decoder_layers=-1), "must be >= 0"),
    ("odd_relative_buckets", TINY_ENCDEC, dict(relative_buckets=5),
     "model.relative_buckets=5 must be even"),
))
def test_options_of_the_other_families_are_refused(case, base, changes, fragment):
  with pytest.raises(UserError, match=fragment) as error:
    dataclasses.replace(base, **changes)
  check_message(case, error.value)


@pytest.mark.parametrize("case, sources, max_new_tokens, fragment", cases(
    ("source_longer_than_the_model", [[3] * 9], 4, "a source of 9 tokens is longer"),
    ("target_longer_than_the_model", [[3, 4]], 9, "max_new_tokens=9 exceeds"),
    ("empty_source", [[3, 4], []], 4, "a source is empty"),
))
def test_generation_beyond_the_model_is_refused(case, sources, max_new_tokens, fragment):
  with pytest.raises(UserError, match=fragment) as error:
    generate_seq2seq({}, TINY_ENCDEC, sources, SamplingConfig(max_new_tokens=max_new_tokens))
  check_message(case, error.value)


def train_tiny_gpt(tmp_path, *overrides: str):
  """`train` of test_cli's tiny gpt config on a toy corpus, with `overrides`, as a subprocess."""
  config = tmp_path / "tiny.py"
  config.write_text(TINY.format(path=write_corpus(tmp_path / "corpus")))
  return jaxlm("train", f"--config={config}", f"--workdir={tmp_path / 'run'}", *overrides)


def test_train_refuses_an_encdec_option_on_a_gpt_run(tmp_path):
  result = train_tiny_gpt(tmp_path, "--config.model.positions=relative")
  user_error(result, tmp_path, "gpt_with_relative_positions", "model.positions='relative'",
             logs=True)
  # No checkpoint: the model is refused before anything trains (train has written the tokenizer
  # it trained by then; the model options are checked once its vocabulary is known).
  assert not (tmp_path / "run" / "checkpoints").exists()
