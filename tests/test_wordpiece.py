"""Tests for the WordPiece tokenizer: Hugging Face parity, determinism, persistence, errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import transformers
from conftest import REPO
from test_data import _raises_one_line

from jaxlm.data import (
  load_tokenizer,
  save_tokenizer,
  tokenizer_from_json,
  train_tokenizer,
)
from jaxlm.data.wordpiece_tokenizer import SPECIAL_TOKENS, WordPieceTokenizer

# Texts with what BERT's normaliser and pre-tokenizer must handle: punctuation runs, accents,
# case, CJK, control characters, non-breaking spaces, tabs and newlines.
EXTRA_TEXTS = [
  "def f(x):\n\treturn x  # comment\n",
  "héllo wörld Ünïcode café naïve 漢字 Ω",
  "CamelCase snake_case UPPER_CASE __dunder__ x1y2",
  "controls \x00\x01\x7f spaces \xa0\u3000 tabs\t\tend",
  "a.b,c;d:e!f?g(h)[i]{j}<k>l'm\"n`o~p@q#r$s%t^u&v*w-x+y=z/|\\",
]
PROBE_TEXTS = EXTRA_TEXTS + [
  "an unseen Qzxv word and ÆØÅ letters",
  "averyveryverylongwordthatthevocabularyhasnoneedtohaveseenbeforexyz" * 2,
  "",
  "   ",
]


def _stdlib_texts() -> list[str]:
  root = sysconfig.get_paths()["stdlib"]
  texts = []
  for name in ("textwrap.py", "shlex.py", "glob.py", "bisect.py"):
    with open(os.path.join(root, name), encoding="utf-8") as f:
      texts.append(f.read())
  return texts + EXTRA_TEXTS


@pytest.fixture(scope="module")
def texts() -> list[str]:
  return _stdlib_texts()


@pytest.fixture(scope="module")
def wp(texts) -> WordPieceTokenizer:
  return WordPieceTokenizer.train(texts, 600)


@pytest.fixture(scope="module")
def hf_dir(wp, tmp_path_factory) -> str:
  directory = str(tmp_path_factory.mktemp("hf_wordpiece"))
  wp.save_hf_files(directory, max_len=64)
  return directory


def test_trained_special_ids_and_size(wp):
  assert wp.kind == "wordpiece" and wp.vocab_size == 600
  assert (wp.pad_id, wp.unk_id, wp.cls_id, wp.sep_id, wp.mask_id) == (0, 1, 2, 3, 4)
  assert wp.special_ids == (0, 1, 2, 3, 4)
  assert wp.eos_id == wp.cls_id  # packing starts every document with [CLS]


def test_training_is_case_sensitive_and_adds_no_special_tokens(wp):
  upper, lower = wp.encode("Return"), wp.encode("return")
  assert upper != lower
  ids = wp.encode("x = 1")
  assert not set(ids) & set(wp.special_ids)


def test_training_is_deterministic_across_processes(texts, wp, tmp_path):
  """The `tokenizers` trainer numbers pieces in a per-process hash order; three fresh processes
  (each with its own hash seed) must all learn the vocabulary of this one."""
  corpus = tmp_path / "texts.json"
  corpus.write_text(json.dumps(texts), encoding="utf-8")
  script = (
    "import hashlib, json, sys\n"
    "from jaxlm.data.wordpiece_tokenizer import WordPieceTokenizer\n"
    "texts = json.load(open(sys.argv[1], encoding='utf-8'))\n"
    "print(hashlib.sha1(WordPieceTokenizer.train(texts, 600).definition.encode()).hexdigest())\n"
  )
  env = dict(os.environ, PYTHONPATH=REPO)
  expected = hashlib.sha1(wp.definition.encode()).hexdigest()
  for _ in range(3):
    out = subprocess.run([sys.executable, "-c", script, str(corpus)], env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    assert out == expected
  assert WordPieceTokenizer.train(texts, 600).definition == wp.definition


def test_json_round_trip(wp, tmp_path):
  state = json.loads(json.dumps(wp.to_json()))  # through real JSON text
  again = tokenizer_from_json(state)
  path = str(tmp_path / "tokenizer.json")
  save_tokenizer(wp, path)
  loaded = load_tokenizer(path)
  for other in (again, loaded):
    assert isinstance(other, WordPieceTokenizer)
    assert (other.vocab_size, other.special_ids, other.eos_id) == (wp.vocab_size, wp.special_ids,
                                                                   wp.eos_id)
    assert other.encode_batch(PROBE_TEXTS) == [wp.encode(t) for t in PROBE_TEXTS]
  padded = tokenizer_from_json({**wp.to_json(), "vocab_size": 640})
  assert padded.vocab_size == 640 and padded.word_start()[600:].all()


def test_train_tokenizer_registry(texts, wp):
  assert train_tokenizer("wordpiece", texts, 600).definition == wp.definition


def test_hf_auto_tokenizer_loads_saved_files_with_same_ids(wp, hf_dir):
  assert sorted(os.listdir(hf_dir)) == ["special_tokens_map.json", "tokenizer.json",
                                        "tokenizer_config.json", "vocab.txt"]
  hf = transformers.AutoTokenizer.from_pretrained(hf_dir)
  assert (hf.pad_token_id, hf.unk_token_id, hf.cls_token_id, hf.sep_token_id,
          hf.mask_token_id) == wp.special_ids
  assert hf.model_max_length == 64 and len(hf) == wp.vocab_size
  for text in PROBE_TEXTS:
    ids = wp.encode(text)
    assert hf(text, add_special_tokens=False)["input_ids"] == ids, text
    assert hf(text)["input_ids"] == [wp.cls_id, *ids, wp.sep_id]
  pair = hf("first part", "second one")
  first, second = wp.encode("first part"), wp.encode("second one")
  assert pair["input_ids"] == [wp.cls_id, *first, wp.sep_id, *second, wp.sep_id]
  assert pair["token_type_ids"] == [0] * (len(first) + 2) + [1] * (len(second) + 1)


def test_hf_slow_path_from_vocab_txt_matches(wp, hf_dir, tmp_path):
  """vocab.txt and tokenizer_config.json alone (no tokenizer.json) give the same ids."""
  for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
    shutil.copy(os.path.join(hf_dir, name), tmp_path / name)
  hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  ours = WordPieceTokenizer.from_hf_dir(str(tmp_path))
  assert ours.lowercase is False
  for text in PROBE_TEXTS:
    assert hf(text, add_special_tokens=False)["input_ids"] == wp.encode(text) == ours.encode(text)


TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat",
              "s", "##s", "##at", "c", "m", "##a", "##t", ".", ",", "!", "Cat", "é", "e", "##é",
              "un", "##able", "##e", "a", "t"]


@pytest.mark.parametrize("lower", [True, False, None])
def test_from_hf_dir_vocab_txt_matches_bert_tokenizer_fast(tmp_path, lower):
  """A vocabulary in BERT's id layout ([UNK] not at 1) read from vocab.txt; lower=None: no
  tokenizer_config.json, so BertTokenizer's default (lowercase) applies."""
  vocab = ["[unused0]", *TINY_VOCAB[:1], "[unused1]", *TINY_VOCAB[1:]]
  vocab_file = tmp_path / "vocab.txt"
  vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
  if lower is not None:
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": lower}))
  ours = WordPieceTokenizer.from_hf_dir(str(tmp_path))
  # transformers 5 takes the vocab.txt path as `vocab` (it ignores a `vocab_file` argument).
  reference = transformers.BertTokenizerFast(vocab=str(vocab_file),
                                             do_lower_case=lower is not False)
  assert (ours.pad_id, ours.unk_id, ours.cls_id) == (1, 3, 4)
  assert ours.special_ids == tuple(vocab.index(t) for t in SPECIAL_TOKENS)
  for text in ["The cat sat on the mat.", "Cats, mats! unable", "Écat éé cat", "xyz the",
               "CAT cAt"]:
    assert ours.encode(text) == reference(text, add_special_tokens=False)["input_ids"], text
  start = ours.word_start()
  assert start.tolist() == [not piece.startswith("##") for piece in vocab]


def test_word_start_matches_pieces(wp, hf_dir):
  hf = transformers.AutoTokenizer.from_pretrained(hf_dir)
  pieces = hf.convert_ids_to_tokens(list(range(wp.vocab_size)))
  start = wp.word_start()
  assert start.dtype == bool and start.shape == (wp.vocab_size,)
  np.testing.assert_array_equal(start, [not p.startswith("##") for p in pieces])
  assert not start.all() and start[list(wp.special_ids)].all()


def test_decode_drops_special_tokens_and_joins_pieces(wp):
  ids = wp.encode("return value.strip()")
  assert wp.decode([wp.cls_id, *ids, wp.sep_id, wp.pad_id, wp.mask_id]) == "return value. strip ( )"


def test_literal_special_token_text_is_text(wp):
  assert wp.mask_id not in wp.encode("x [MASK] y") and wp.cls_id not in wp.encode("[CLS]")


def test_errors_are_one_line_user_errors(texts, tmp_path):
  with _raises_one_line(r"data.vocab_size=20 is smaller than this corpus needs \(min \d+"):
    WordPieceTokenizer.train(texts, 20)
  with _raises_one_line("has no tokenizer.json nor vocab.txt"):
    WordPieceTokenizer.from_hf_dir(str(tmp_path))
  (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n", encoding="utf-8")
  with _raises_one_line(r"lacks \[MASK\]"):
    WordPieceTokenizer.from_hf_dir(str(tmp_path))
  with _raises_one_line("not a valid tokenizers definition"):
    WordPieceTokenizer("{not json")
  bpe_definition = train_tokenizer("gpt2_bpe", texts[:1], 300).definition  # valid, not WordPiece
  with _raises_one_line("not a WordPiece one"):
    WordPieceTokenizer(bpe_definition)
