"""Tests for jaxlm.data tokenizers: exact round trips, persistence, errors."""

from __future__ import annotations

import json
import os
import random
import sysconfig

import pytest

from jaxlm.data import (
  load_tokenizer,
  save_tokenizer,
  tokenizer_from_json,
  train_tokenizer,
)
from jaxlm.data.sp_tokenizer import _escape, _unescape
from jaxlm.errors import UserError

# Text that breaks naive tokenizers of source code: newlines, tabs, runs of
# spaces, leading/trailing whitespace, non-NFC and non-BMP unicode, control
# characters, SentencePiece's own space marker and meta-symbol spellings,
# and this package's escape characters.
TRICKY_TEXTS = [
  "",
  "def f(x):\n\treturn x  # comment\n",
  "class A:\n    def g(self):\n        if x:\n            return 1\n\n\n",
  "    leading spaces",
  "\n\nleading newlines",
  "trailing spaces   ",
  "trailing newlines\n\n\n",
  "tabs\t\tand \t mixed\t \n\t",
  "héllo wörld 漢字 🙂 Ω ∑ \U0001f600",
  "e\u0301 (not NFC) and \ufb01 ligature",
  "windows\r\nline\rends\r\n",
  "literal \u2581 space marker \u2581\u2581 a\u2581b",
  "escape chars \ufdd0 \ufdd1 \ufdd0\ufdd1 \ufdd0\ufdd0\u2581 \ufdd1\u2581",
  "controls \x00\x01\x0b\x0c\x1f\x7f\x85\u2028\u2029 spaces \xa0\u3000\u2009",
  "</s> <unk> <s> <pad> <0x0A> \\n",
  " ",
  "\n",
  "\t",
]

_ALPHABET = [
  *"ab xy_\n\t\r ",
  "\u2581",
  "\ufdd0",
  "\ufdd1",
  "é",
  "e\u0301",
  "漢",
  "🙂",
  "\x00",
  "\u3000",
  "<",
  ">",
]


def _fuzz_texts(n: int = 200) -> list[str]:
  rng = random.Random(0)
  return ["".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 40))) for _ in range(n)]


def _stdlib_texts() -> list[str]:
  """~150 KB of real Python source to train on (always present in 3.11)."""
  root = sysconfig.get_paths()["stdlib"]
  names = ["json/decoder.py", "json/encoder.py", "textwrap.py", "string.py", "shlex.py"]
  names += ["csv.py", "abc.py", "bisect.py", "heapq.py", "fnmatch.py"]
  texts = []
  for name in names:
    with open(os.path.join(root, name), encoding="utf-8") as f:
      texts.append(f.read())
  return texts


@pytest.fixture(scope="module")
def train_texts() -> list[str]:
  return _stdlib_texts()


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def sp_model_type(request) -> str:
  return request.param


@pytest.fixture(scope="module")
def sp_tok(sp_model_type, train_texts):
  return train_tokenizer("sentencepiece", train_texts, vocab_size=600, sp_model_type=sp_model_type)


@pytest.fixture(scope="module", params=["byte", "char", "sentencepiece"])
def any_tok(request, train_texts):
  # char must have seen every character to round-trip; sentencepiece must
  # not, to show that byte fallback covers characters unseen in training.
  extra = TRICKY_TEXTS + _fuzz_texts() if request.param == "char" else []
  return train_tokenizer(request.param, train_texts + extra, vocab_size=600)


# --- escaping of U+2581 -------------------------------------------------------


@pytest.mark.parametrize("text", TRICKY_TEXTS + _fuzz_texts())
def test_escape_is_invertible_and_removes_space_marker(text):
  escaped = _escape(text)
  assert "\u2581" not in escaped
  assert _unescape(escaped) == text


# --- all kinds ------------------------------------------------------------------


def test_round_trip_is_exact(any_tok):
  for text in TRICKY_TEXTS + _fuzz_texts() + _stdlib_texts()[:2]:
    assert any_tok.decode(any_tok.encode(text)) == text, repr(text)


def test_encode_adds_no_eos_and_decode_drops_eos(any_tok):
  ids = any_tok.encode("x = 1\n")
  assert any_tok.eos_id not in ids
  assert all(0 <= i < any_tok.vocab_size for i in ids)
  assert any_tok.decode([any_tok.eos_id] + ids + [any_tok.eos_id]) == "x = 1\n"




def test_save_load_gives_identical_tokenizer(any_tok, tmp_path):
  path = tmp_path / "sub" / "tokenizer.json"
  save_tokenizer(any_tok, str(path))
  assert os.listdir(path.parent) == ["tokenizer.json"]  # no temp file left behind
  with open(path, encoding="utf-8") as f:
    state = json.load(f)  # plain JSON, no pickle
  assert state["kind"] == any_tok.kind
  loaded = load_tokenizer(str(path))
  assert (loaded.kind, loaded.vocab_size, loaded.eos_id) == (
    any_tok.kind,
    any_tok.vocab_size,
    any_tok.eos_id,
  )
  for text in TRICKY_TEXTS + _stdlib_texts()[:2]:
    assert loaded.encode(text) == any_tok.encode(text)
  assert tokenizer_from_json(json.loads(json.dumps(any_tok.to_json()))).encode(
    "a\n\tb"
  ) == any_tok.encode("a\n\tb")


# --- byte -----------------------------------------------------------------------


def test_byte_tokenizer_ids():
  tok = train_tokenizer("byte", [], vocab_size=123)  # vocab_size is ignored
  assert (tok.vocab_size, tok.eos_id) == (257, 256)
  assert tok.encode("aé\n") == [97, 0xC3, 0xA9, 10]
  assert tok.decode([97, 0xC3]) == "a\ufffd"  # invalid UTF-8 is replaced, not an error


# --- char -----------------------------------------------------------------------


def test_char_tokenizer_vocabulary_and_unknown():
  tok = train_tokenizer("char", ["ba\n", "ca"], vocab_size=5000)
  assert tok.chars == ["\n", "a", "b", "c"]
  assert (tok.eos_id, tok.unk_id, tok.vocab_size) == (4, 5, 6)
  assert tok.encode("abc\n") == [1, 2, 3, 0]
  assert tok.encode("aZ🙂") == [1, 5, 5]
  assert tok.decode([1, 5, 4, 2]) == "a\ufffdb"


# --- sentencepiece ----------------------------------------------------------------


def test_sp_round_trip_is_exact_for_bpe_and_unigram(sp_tok, train_texts):
  for text in TRICKY_TEXTS + _fuzz_texts() + train_texts:
    assert sp_tok.decode(sp_tok.encode(text)) == text, repr(text)


def test_sp_encode_batch_matches_encode(sp_tok):
  # Only SentencePiece has its own (multi-threaded) batch path; byte and char encode each text.
  texts = TRICKY_TEXTS + _fuzz_texts(20)
  assert sp_tok.encode_batch(texts) == [sp_tok.encode(t) for t in texts]


def test_sp_vocab_size_eos_and_special_tokens(sp_tok):
  assert sp_tok.vocab_size == 600
  assert 0 <= sp_tok.eos_id < sp_tok.vocab_size
  assert sp_tok.eos_id not in sp_tok.encode("</s>")  # the text "</s>" is not EOS


def test_sp_newline_and_indentation_tokens(sp_tok):
  # "\n" is one dedicated token, and indentation runs are merged, which is
  # what makes SentencePiece worth using on code.
  newline = sp_tok.encode("\n")
  assert len(newline) == 1
  assert sp_tok._sp.id_to_piece(newline[0]) == "\n"  # a real piece, not byte fallback <0x0A>
  assert sp_tok.encode("a\nb").count(newline[0]) == 1
  assert len(sp_tok.encode(" " * 8)) <= 2


def test_sp_compresses_code(sp_tok, train_texts):
  text = train_texts[0]
  assert len(sp_tok.encode(text)) < len(text) / 2


def test_sp_is_trained_only_on_given_texts(train_texts):
  tok = train_tokenizer("sentencepiece", train_texts, vocab_size=600)
  pieces = [tok._sp.id_to_piece(i) for i in range(tok.vocab_size)]
  assert "Ж" not in "".join(pieces)  # never in training text
  assert any("return" in p for p in pieces)


def test_sp_training_is_deterministic(train_texts, sp_tok, sp_model_type):
  again = train_tokenizer("sentencepiece", train_texts, vocab_size=600, sp_model_type=sp_model_type)
  assert again.model_proto == sp_tok.model_proto


def test_sp_vocab_too_large_is_a_one_line_data_error():
  with pytest.raises(
    UserError, match=r"data.vocab_size=5000 is larger than this corpus supports \(max \d+\)"
  ) as e:
    train_tokenizer("sentencepiece", ["def f(x):\n    return x\n"] * 20, vocab_size=5000)
  assert "\n" not in str(e.value)


def test_sp_vocab_too_small_is_a_data_error(train_texts):
  with pytest.raises(UserError, match=r"data.vocab_size=100 is smaller than this corpus needs"):
    train_tokenizer("sentencepiece", train_texts, vocab_size=100)


def test_unknown_kind_and_model_type():
  with pytest.raises(UserError, match="unknown data.tokenizer='unigram_lm'.*wordpiece"):
    train_tokenizer("unigram_lm", ["a"], 10)
  with pytest.raises(UserError, match="sp_model_type='word'"):
    train_tokenizer("sentencepiece", ["a"], 10, sp_model_type="word")
  with pytest.raises(UserError, match="unknown tokenizer kind"):
    tokenizer_from_json({"kind": "nope"})


def test_load_missing_or_corrupt_tokenizer(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    load_tokenizer(str(tmp_path / "missing.json"))
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(UserError, match="not valid JSON"):
    load_tokenizer(str(bad))
