"""GPT-2 byte-level BPE (data.tokenizer="gpt2_bpe"): exact round trips, EOS, JSON persistence."""

import json

import pytest
import tokenizers
from tokenizers import models

from jaxlm.data import (
  load_tokenizer,
  save_tokenizer,
  tokenizer_from_json,
  train_tokenizer,
)
from jaxlm.data.gpt2_tokenizer import EOS_TOKEN, Gpt2BpeTokenizer
from jaxlm.errors import UserError

TEXTS = ["def f(x):\n    return x + 1\n", "the cat sat on the mat\n\n", "\ttabs and  spaces  \r\n"] * 40
HARD = ["héllo wörld 日本語 🙂", "a literal <|endoftext|> stays text", "\x00\x7f\u2581\ufdd0 ", ""]


@pytest.fixture(scope="module")
def tok() -> Gpt2BpeTokenizer:
  return train_tokenizer("gpt2_bpe", TEXTS, 280)


def test_training_gives_the_requested_vocabulary_with_eos_and_is_deterministic(tok):
  assert tok.kind == "gpt2_bpe" and tok.vocab_size == 280
  assert tok.decode([tok.eos_id]) == "" and tok._tok.id_to_token(tok.eos_id) == EOS_TOKEN
  assert train_tokenizer("gpt2_bpe", TEXTS, 280).definition == tok.definition
  assert len(tok.encode(TEXTS[1])) <= len(TEXTS[1]) // 2  # merges were learnt


@pytest.mark.parametrize("text", TEXTS[:3] + HARD)
def test_any_text_round_trips_exactly_and_never_contains_eos(tok, text):
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert tok.eos_id not in ids and all(0 <= i < tok.vocab_size for i in ids)


def test_decode_drops_eos_between_documents(tok):
  ids = [tok.eos_id, *tok.encode("ab"), tok.eos_id, *tok.encode("cd")]
  assert tok.decode(ids) == "abcd"


def test_encode_batch_equals_encoding_each(tok):
  assert tok.encode_batch(HARD + TEXTS[:3]) == [tok.encode(t) for t in HARD + TEXTS[:3]]


def test_json_round_trip_is_self_contained(tok, tmp_path):
  state = tok.to_json()
  assert json.loads(state["definition"])["model"]["type"] == "BPE"  # the definition is embedded
  path = str(tmp_path / "tokenizer.json")
  save_tokenizer(tok, path)
  again = load_tokenizer(path)
  assert isinstance(again, Gpt2BpeTokenizer) and again.eos_id == tok.eos_id
  assert again.encode(HARD[0]) == tok.encode(HARD[0])


def test_a_padded_model_vocabulary_is_kept(tok):
  padded = tokenizer_from_json({**tok.to_json(), "vocab_size": 300})
  assert padded.vocab_size == 300 and padded.decode(tok.encode("cat") + [299]) == "cat"
  with pytest.raises(UserError, match="smaller than the tokenizer's 280 ids"):
    Gpt2BpeTokenizer(tok.definition, 200)


def test_gpt2_file_pair_gives_the_same_tokenizer(tok, tmp_path):
  tok.save_hf_files(str(tmp_path), max_len=64)
  (tmp_path / "tokenizer.json").unlink()  # leaves vocab.json + merges.txt, as GPT-2 ships them
  from_pair = Gpt2BpeTokenizer.from_hf_dir(str(tmp_path))
  assert from_pair.eos_id == tok.eos_id and from_pair.vocab_size == tok.vocab_size
  for text in TEXTS[:3] + HARD:
    assert from_pair.encode(text) == tok.encode(text)


def test_bad_inputs_are_data_errors(tmp_path):
  with pytest.raises(UserError, match="too small for byte-level BPE"):
    train_tokenizer("gpt2_bpe", TEXTS, 100)
  no_eos = tokenizers.Tokenizer(models.BPE()).to_str()
  with pytest.raises(UserError, match="no <\\|endoftext\\|> token"):
    Gpt2BpeTokenizer(no_eos)
  with pytest.raises(UserError, match="not a valid tokenizers definition"):
    Gpt2BpeTokenizer("{not json")
  with pytest.raises(UserError, match="no tokenizer.json nor vocab.json"):
    Gpt2BpeTokenizer.from_hf_dir(str(tmp_path))
