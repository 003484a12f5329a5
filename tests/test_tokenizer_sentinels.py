"""Sentinels of a SentencePiece tokenizer trained for an encoder-decoder run: real ids, never
produced by encoding text (a literal "<extra_id_0>" included), shown by decode, kept by JSON; only
an encdec run's tokenizer gets them (gpt / bert runs train the model they trained before)."""

import pytest
from test_tokenizer import TRICKY_TEXTS, _fuzz_texts, _stdlib_texts

from jaxlm.config import base_config
from jaxlm.data import tokenizer_from_json, train_tokenizer
from jaxlm.data.dataset import DataConfig, make_tokenizer

NUM = 100


@pytest.fixture(scope="module")
def texts():
  return _stdlib_texts()


@pytest.fixture(scope="module")
def tok(texts):
  return train_tokenizer("sentencepiece", texts, vocab_size=600, num_sentinels=NUM)


def test_sentinels_are_real_distinct_ids(tok):
  assert len(tok.sentinel_ids) == NUM == len(set(tok.sentinel_ids))
  assert tok.vocab_size == 600 and all(0 <= i < 600 for i in tok.sentinel_ids)
  assert tok.eos_id not in tok.sentinel_ids
  pieces = [tok._sp.id_to_piece(i) for i in tok.sentinel_ids]
  assert pieces == [f"<extra_id_{k}>" for k in range(NUM)]


def test_text_never_encodes_to_a_sentinel(tok, texts):
  literal = "x = '<extra_id_0>' + \"<extra_id_99>\" <extra_id_5>"
  sentinels = set(tok.sentinel_ids)
  for text in [*texts, *TRICKY_TEXTS, *_fuzz_texts(), literal]:
    ids = tok.encode(text)
    assert not sentinels & set(ids)
    assert tok.decode(ids) == text  # the round trip stays exact
  assert not sentinels & {i for ids in tok.encode_batch(texts) for i in ids}


def test_decode_shows_sentinels_by_name(tok):
  a, b = tok.encode("def f(x):"), tok.encode("  return x")
  ids = [tok.sentinel_ids[0], *a, tok.sentinel_ids[7], *b, tok.eos_id]
  assert tok.decode(ids) == "<extra_id_0>def f(x):<extra_id_7>  return x"


def test_json_keeps_sentinels(tok):
  again = tokenizer_from_json(tok.to_json())
  assert again.sentinel_ids == tok.sentinel_ids


def test_without_sentinels_nothing_changes(texts):
  plain = train_tokenizer("sentencepiece", texts, vocab_size=600)
  assert plain.sentinel_ids == ()
  # The default path (gpt / bert runs) trains the same model as a make_tokenizer without encdec.
  c = base_config().data
  c.update(vocab_size=600, tokenizer_sample_chars=0)
  made = make_tokenizer(DataConfig.from_config(c), texts)
  assert made.model_proto == plain.model_proto
  encdec = make_tokenizer(DataConfig.from_config(c), texts, encdec=True)
  assert len(encdec.sentinel_ids) == base_config().data.num_sentinels
