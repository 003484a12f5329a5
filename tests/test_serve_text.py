"""Incremental detokenisation and stop strings (jaxlm/serving/text.py) against direct string
computations."""

import numpy as np
import pytest
import tokenizers

from jaxlm.data.hf_tokenizer import HfTokenizer
from jaxlm.data.simple_tokenizers import ByteTokenizer, CharTokenizer
from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.serving.text import (
  CONTEXT_TOKENS,
  REPLACEMENT,
  WINDOW_TOKENS,
  IncrementalText,
  TextStream,
  held_back,
)

BYTES = ByteTokenizer()


def run(stream: TextStream, ids: list[int]):
  deltas = []
  for token in ids:
    deltas.append(stream.push(token, (0.0, [], [])))
    if deltas[-1].finish_reason:
      break
  return deltas


def test_multibyte_characters_are_never_split_across_deltas():
  text = "naïve 東京 → ok 🙂."
  ids = BYTES.encode(text)
  deltas = run(TextStream(BYTES, max_tokens=len(ids)), ids)
  assert "".join(d.text for d in deltas) == text
  assert not any(REPLACEMENT in d.text for d in deltas)
  assert [d.finish_reason for d in deltas][-1] == "length"
  assert [t for d in deltas for t in d.tokens] == ids  # every token released once, in order


def test_invalid_bytes_are_released_once_no_later_token_can_complete_them():
  ids = [0xE6, 0xE6, 0x80, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x41]
  deltas = run(TextStream(BYTES, max_tokens=100), ids)
  released = "".join(d.text for d in deltas)
  assert BYTES.decode(ids).startswith(released)
  assert len(deltas[5].text + deltas[6].text) > 0  # released before the stream ends


def test_held_back_is_the_longest_suffix_that_starts_a_stop():
  assert held_back("abc", ["cde"]) == 1
  assert held_back("abcd", ["bcdx", "cd"]) == 3
  assert held_back("xab", ["abc"]) == 2
  assert held_back("abc", ["abc"]) == 0  # a whole stop is found by the search, not held back
  assert held_back("abc", ["x"]) == 0


def test_random_texts_and_stops_end_exactly_before_the_first_stop():
  rng = np.random.default_rng(0)
  alphabet = list("ab c\né")
  chars = CharTokenizer(sorted(alphabet))
  for _ in range(300):
    text = "".join(rng.choice(alphabet, size=rng.integers(1, 30)))
    stops = ["".join(rng.choice(alphabet, size=rng.integers(1, 4))) for _ in range(
        rng.integers(1, 3))]
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    expected = text[:min(found)] if found else text
    tokenizer = chars if rng.random() < 0.5 else BYTES
    ids = tokenizer.encode(text)
    deltas = run(TextStream(tokenizer, max_tokens=len(ids), stops=stops), ids)
    released = [d.text for d in deltas]
    assert "".join(released) == expected, (text, stops)
    for i in range(len(released)):  # no stop string ever shows in what was sent
      assert not any(s in "".join(released[:i + 1]) for s in stops)
    assert deltas[-1].finish_reason == ("stop" if found else "length")


def test_eos_ends_the_choice_and_counts_as_a_generated_token():
  stream = TextStream(BYTES, max_tokens=10)
  deltas = run(stream, [*BYTES.encode("hi"), BYTES.eos_id, *BYTES.encode("x")])
  assert "".join(d.text for d in deltas) == "hi" and deltas[-1].finish_reason == "stop"
  assert stream.generated == 3


def test_push_all_releases_what_pushing_each_token_does_and_stops_at_the_finish():
  """A decode call's tokens in one `push_all`: the same text, tokens and finish as pushing them
  one by one, and the tokens computed past the stop are not read."""
  rng = np.random.default_rng(1)
  for _ in range(100):
    ids = BYTES.encode("".join(rng.choice(list("ab c"), size=rng.integers(1, 25))))
    one_by_one = run(TextStream(BYTES, max_tokens=len(ids), stops=["c a"]), ids)
    stream = TextStream(BYTES, max_tokens=len(ids), stops=["c a"])
    joined = []
    for i in range(0, len(ids), 4):  # a call's tokens; past the end, tokens computed anyway
      joined.append(stream.push_all(ids[i:i + 4] + [ord("z")] * (i + 4 > len(ids)),
                                    [(0.0, [], [])] * 4))
      if joined[-1].finish_reason:  # the scheduler frees the slot: no more calls
        break
    assert "".join(d.text for d in joined) == "".join(d.text for d in one_by_one)
    assert [t for d in joined for t in d.tokens] == [t for d in one_by_one for t in d.tokens]
    assert joined[-1].finish_reason == one_by_one[-1].finish_reason
    assert stream.generated == len(one_by_one)


SAMPLE = ("def naïve(x):\n    \"\"\"Return 東京 → x, or 🙂.\"\"\"\n    return x + 1  # it's don't-care\n"
          "class Übung:  pass\n") * 4


def _llama_style_tokenizer(texts: list[str]) -> HfTokenizer:
  """Llama-2's tokenizer.json pipeline: Metaspace, BPE with byte fallback, and its decoders
  (Replace, ByteFallback, Fuse, Strip), whose leading-space strip acts on the whole text."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(byte_fallback=True, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace()
  tok.decoder = tokenizers.decoders.Sequence([
    tokenizers.decoders.Replace("\u2581", " "), tokenizers.decoders.ByteFallback(),
    tokenizers.decoders.Fuse(), tokenizers.decoders.Strip(" ", 1, 0)])
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=400, special_tokens=["<unk>", "</s>", *(f"<0x{b:02X}>" for b in range(256))])
  tok.train_from_iterator(texts, trainer)
  return HfTokenizer(tok.to_str(), eos_id=tok.token_to_id("</s>"))


def _tokenizer(kind: str):
  texts = [SAMPLE, "the quick brown fox, don't stop. 123 + 4.5e6 != 'x'\n" * 20]
  if kind == "hf_llama":
    return _llama_style_tokenizer(texts)
  return train_tokenizer(kind, texts, 400)


@pytest.mark.parametrize("kind", ["byte", "char", "gpt2_bpe", "sentencepiece", "wordpiece",
                                  "hf_llama"])
def test_incremental_text_is_the_whole_decoding_after_every_token(kind):
  """Real output, random ids (special ones, bytes of no character and pieces out of order
  included), and several tokens at a call, each against decoding all ids."""
  tokenizer = _tokenizer(kind)
  rng = np.random.default_rng(0)
  real = tokenizer.encode(SAMPLE)
  dense = tokenizer.encode("x🙂🙂東京ïé→ " * 12)  # characters of 2-4 bytes at every boundary
  noise = [int(i) for i in rng.integers(0, tokenizer.vocab_size, size=300)]
  mixed = [t for a, b in zip(real[::8], noise) for t in (a, b, a)]
  for ids in (real, *(dense[k:] for k in range(4)), noise, mixed):
    text, n = IncrementalText(tokenizer), 0
    while n < len(ids):
      n += int(rng.choice([1, 1, 1, 2, 8]))
      assert text.update(ids[:n]) == tokenizer.decode(ids[:n]), (kind, n)


class _Counting:
  """A tokenizer that records how many ids each decode call was given."""

  def __init__(self, tokenizer):
    self.tokenizer, self.lengths = tokenizer, []

  def decode(self, ids):
    self.lengths.append(len(ids))
    return self.tokenizer.decode(ids)


def test_incremental_text_decodes_a_window_not_the_whole_output():
  counting = _Counting(_tokenizer("gpt2_bpe"))
  ids = counting.tokenizer.encode(SAMPLE * 4)
  assert len(ids) > 500
  text = IncrementalText(counting)
  for n in range(1, len(ids) + 1):
    text.update(ids[:n])
  assert text.text == counting.tokenizer.decode(ids)
  assert max(counting.lengths) <= CONTEXT_TOKENS + 2 * WINDOW_TOKENS


class _Reversed:
  """A decoding that is not local: each token's text moves every earlier token's."""

  def decode(self, ids):
    return "".join(chr(97 + i % 26) for i in ids)[::-1]


def test_incremental_text_decodes_whole_where_the_window_does_not_continue_its_context():
  ids = list(range(100))
  text = IncrementalText(_Reversed())
  assert all(text.update(ids[:n]) == _Reversed().decode(ids[:n]) for n in range(1, 101))
