"""Incremental detokenisation and stop strings (jaxlm/serving/text.py) against direct string
computations."""

import numpy as np

from jaxlm.data.simple_tokenizers import ByteTokenizer, CharTokenizer
from jaxlm.serving.text import REPLACEMENT, TextStream, held_back

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
