"""SentencePiece (BPE or unigram) tokenizer that round-trips source code exactly.

How exact round trips are achieved (decode(encode(t)) == t for any text):
- Documents are encoded whole, newlines included; only training is fed
  lines (see `_sample_lines`). "\\n" is a user-defined symbol, so it is one
  dedicated token (the trainer never learns it as a character, so it would
  otherwise be encoded by byte fallback as <0x0A>).
- The "identity" normalisation rule, no extra-whitespace removal and no dummy
  prefix keep tabs, runs of spaces and leading spaces as they are;
  byte_fallback encodes any character not in the vocabulary as UTF-8 bytes.
- SentencePiece writes spaces as U+2581 ("▁") and decodes every U+2581 back to
  a space, so a literal U+2581 in the text would come back as a space. We
  escape it (and the escape character) before encoding, see `_escape`.
"""

from __future__ import annotations

import base64
import io
import os
import re
from collections.abc import Iterator, Sequence

import numpy as np
import sentencepiece as spm

from jaxlm.errors import UserError

# U+FDD0 is a Unicode noncharacter, reserved for process-internal use, so it
# is (almost) never in real text; it escapes itself and U+2581.
_ESC = "\ufdd0"
_ESCAPES = {_ESC: _ESC + _ESC, "\u2581": _ESC + "\ufdd1"}
_UNESCAPE = re.compile(_ESC + "([\ufdd0\ufdd1])")
_UNESCAPES = {"\ufdd0": _ESC, "\ufdd1": "\u2581"}

# Training reads a random sample of lines of about this many characters:
# ~10 s for unigram and ~2 s for BPE on 2 cores, and training on all 11 MB of
# the stdlib instead compresses within 1% of it.
_SAMPLE_CHARS = 4_000_000
_SAMPLE_SEED = 0
# Fixed because unigram's result depends on the thread count (BPE's does
# not): the same data must give the same model on every machine.
_TRAIN_THREADS = 4

_UNK_ID, _EOS_ID = 0, 1
# Sentinels of span corruption (T5's names). Control symbols, not user-defined ones: SentencePiece
# never produces a control symbol from text (a literal "<extra_id_0>" in a document is encoded as
# its characters), and they have ids of their own right after <unk> and </s>.
SENTINEL = "<extra_id_{}>"


def usable_cores() -> int:
  """The cores this process may run on (its affinity where the OS has one), at least 1."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0)) or 1
  return os.cpu_count() or 1


def _escape(text: str) -> str:
  if _ESC in text or "\u2581" in text:
    text = text.replace(_ESC, _ESCAPES[_ESC]).replace("\u2581", _ESCAPES["\u2581"])
  return text


def _unescape(text: str) -> str:
  if _ESC in text:
    text = _UNESCAPE.sub(lambda m: _UNESCAPES[m.group(1)], text)
  return text


def _lines(text: str) -> list[str]:
  """Lines of `text`, each keeping its "\\n" (the last may have none)."""
  lines = [line + "\n" for line in text.split("\n")]
  lines[-1] = lines[-1][:-1]
  return [line for line in lines if line]


def _sample_lines(texts: Sequence[str], max_chars: int, seed: int) -> Iterator[str]:
  """Yields a seeded random sample of about `max_chars` characters of lines.
  Lines, not documents, because SentencePiece skips sentences longer than
  max_sentence_length (4192 bytes)."""
  keep_prob = min(1.0, max_chars / max(1, sum(len(t) for t in texts)))
  rng = np.random.default_rng(seed)
  for text in texts:
    lines = _lines(_escape(text))
    keep = rng.random(len(lines)) < keep_prob  # [num_lines]
    yield from (line for line, k in zip(lines, keep, strict=True) if k)


def _vocab_error(err: RuntimeError, vocab_size: int) -> UserError:
  """Turns SentencePiece's vocabulary-size failures into a one-line UserError."""
  msg = str(err)
  too_high = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", msg)
  if too_high:
    return UserError(
      f"data.vocab_size={vocab_size} is larger than this corpus supports (max {too_high.group(1)}); "
      "lower --config.data.vocab_size"
    )
  too_low = re.search(r"smaller than required_chars\. \d+ vs (\d+)", msg)
  if too_low:
    return UserError(
      f"data.vocab_size={vocab_size} is smaller than this corpus needs (min {too_low.group(1)}); "
      "raise --config.data.vocab_size"
    )
  return UserError(f"SentencePiece training failed: {msg.splitlines()[0]}; check data.vocab_size")


def _sentinel_ids(sp: spm.SentencePieceProcessor) -> tuple[int, ...]:
  """Ids of the control symbols <extra_id_0>, <extra_id_1>, ... in order, up to the first
  missing one."""
  ids = []
  while True:
    i = sp.piece_to_id(SENTINEL.format(len(ids)))
    if i == sp.unk_id() or not sp.is_control(i):
      return tuple(ids)
    ids.append(i)


class SentencePieceTokenizer:
  """A trained SentencePiece model; EOS is its `</s>` control symbol. `sentinel_ids`: the ids of
  <extra_id_0>, <extra_id_1>, ... (none unless trained with sentinels)."""

  kind = "sentencepiece"

  def __init__(self, model_proto: bytes):
    """`model_proto` is a serialized SentencePiece ModelProto."""
    self.model_proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self._sp.get_piece_size()
    self.eos_id = self._sp.eos_id()
    self.sentinel_ids = _sentinel_ids(self._sp)
    self._sentinel_of = {i: SENTINEL.format(k) for k, i in enumerate(self.sentinel_ids)}

  @classmethod
  def train(cls, texts: Sequence[str], vocab_size: int, model_type: str,
            num_sentinels: int = 0) -> SentencePieceTokenizer:
    """A model of `vocab_size` ids (the `num_sentinels` sentinels among them) learnt from
    `texts`."""
    if model_type not in ("bpe", "unigram"):
      raise UserError(f"data.sp_model_type={model_type!r} is not supported; use bpe or unigram")
    model = io.BytesIO()
    try:
      spm.SentencePieceTrainer.train(
        sentence_iterator=_sample_lines(texts, _SAMPLE_CHARS, _SAMPLE_SEED),
        model_writer=model,
        model_type=model_type,
        vocab_size=vocab_size,
        user_defined_symbols=["\n"],
        control_symbols=[SENTINEL.format(k) for k in range(num_sentinels)],
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        # Indentation runs become single tokens instead of one per space.
        allow_whitespace_only_pieces=True,
        character_coverage=0.9995,
        input_sentence_size=0,  # we sampled already; use every sentence
        shuffle_input_sentence=False,
        unk_id=_UNK_ID,
        eos_id=_EOS_ID,
        bos_id=-1,
        pad_id=-1,
        num_threads=_TRAIN_THREADS,
        minloglevel=2,  # only errors; training logs are very chatty
      )
    except RuntimeError as e:
      raise _vocab_error(e, vocab_size) from None
    return cls(model.getvalue())

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(_escape(text))

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    # One call encodes all texts on every core this process may use (a prepare worker pinned to
    # one core uses one thread, instead of each worker starting a thread per core).
    return self._sp.encode([_escape(t) for t in texts], num_threads=usable_cores())

  def decode(self, ids: Sequence[int]) -> str:
    """The text of `ids`, EOS dropped; a sentinel shows as its name ("<extra_id_0>")."""
    ids = [int(i) for i in ids if i != self.eos_id]
    if not self._sentinel_of or not any(i in self._sentinel_of for i in ids):
      return _unescape(self._sp.decode(ids))
    text, run = [], []
    for i in [*ids, None]:
      if i is None or i in self._sentinel_of:
        text.append(_unescape(self._sp.decode(run)))
        text.append(self._sentinel_of.get(i, ""))
        run = []
      else:
        run.append(i)
    return "".join(text)

  def to_json(self) -> dict:
    return {"kind": self.kind, "model_proto": base64.b64encode(self.model_proto).decode("ascii")}

  @classmethod
  def from_json(cls, state: dict) -> SentencePieceTokenizer:
    return cls(base64.b64decode(state["model_proto"]))
