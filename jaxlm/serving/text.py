"""One choice's tokens turned into text deltas: incremental detokenisation and stop strings.

The generated ids are decoded whole after each token (as `jaxlm.sample` decodes them, so the text
is the same), and only what is settled is released:
- a trailing U+FFFD may be the first bytes of a character the next tokens complete, so it is held
  back until a later token settles it, the choice ends, or it is older than the last 3 tokens
  (a UTF-8 character has at most 4 bytes: older bytes are invalid for good);
- text that could be the start of a stop string is held back until the next tokens decide; a stop
  string found ends the choice, and neither it nor anything after it is ever released.
Each token's logprobs are released with the delta that completes its text.
"""

import dataclasses
from collections.abc import Sequence

from jaxlm.data import Tokenizer

REPLACEMENT = "\ufffd"
MAX_CHAR_TOKENS = 3  # a UTF-8 character is at most 4 bytes: 3 may wait for the 4th


def held_back(text: str, stops: Sequence[str]) -> int:
  """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
  longest = 0
  for stop in stops:
    for size in range(min(len(stop) - 1, len(text)), longest, -1):
      if text.endswith(stop[:size]):
        longest = size
        break
  return longest


@dataclasses.dataclass
class Delta:
  text: str
  tokens: list[int]  # the tokens whose text this delta completes
  logprobs: list  # their (logprob, top ids, top logprobs)
  finish_reason: str | None = None  # "stop" | "length" when the choice ends here


class TextStream:
  """Feed tokens with `push`; each returns the Delta that may be released (possibly empty)."""

  def __init__(self, tokenizer: Tokenizer, max_tokens: int, stops: Sequence[str] = (),
               ignore_eos: bool = False):
    self.tokenizer, self.max_tokens, self.ignore_eos = tokenizer, max_tokens, ignore_eos
    self.stops = [s for s in stops if s]
    self.ids: list[int] = []
    self.ends: list[int] = []  # text length after each token
    self.logprobs: list = []
    self.text = ""  # decode(ids)
    self.released = 0  # characters of text released
    self.released_tokens = 0
    self.finish_reason: str | None = None
    self.generated = 0  # tokens generated, an EOS included (usage's completion_tokens)

  def push(self, token: int, logprobs=None) -> Delta:
    self.generated += 1
    if token == self.tokenizer.eos_id and not self.ignore_eos:
      return self._finish("stop", len(self.text))
    self.ids.append(token)
    self.logprobs.append(logprobs)
    self.text = self.tokenizer.decode(self.ids)
    self.ends.append(len(self.text))
    cut = self._stop_position()
    if cut is not None:
      return self._finish("stop", cut)
    if len(self.ids) >= self.max_tokens:
      return self._finish("length", len(self.text))
    # Only the last MAX_CHAR_TOKENS tokens can hold the start of an unfinished character.
    final = self.ends[-MAX_CHAR_TOKENS - 1] if len(self.ends) > MAX_CHAR_TOKENS else 0
    settled = max(len(self.text.rstrip(REPLACEMENT)), min(final, len(self.text)))
    settled -= held_back(self.text[:settled], self.stops)
    return self._release(max(settled, self.released))

  def push_all(self, tokens: Sequence[int], logprobs: Sequence) -> Delta:
    """`push` of each token (with its logprobs) until the choice finishes: the deltas joined.
    Tokens after the one that finishes it are not read."""
    joined = Delta("", [], [])
    for token, token_logprobs in zip(tokens, logprobs):
      delta = self.push(token, token_logprobs)
      joined.text += delta.text
      joined.tokens += delta.tokens
      joined.logprobs += delta.logprobs
      if delta.finish_reason:
        joined.finish_reason = delta.finish_reason
        break
    return joined

  def _stop_position(self) -> int | None:
    """Where the earliest stop string begins, searching only text that may hold a new one."""
    longest = max((len(s) for s in self.stops), default=0)
    start = max(0, self.released - longest)
    found = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
    return min(found) if found else None

  def _finish(self, reason: str, length: int) -> Delta:
    self.finish_reason = reason
    self.text = self.text[:length]
    delta = self._release(length, final=True)
    delta.finish_reason = reason
    return delta

  def _release(self, length: int, final: bool = False) -> Delta:
    text = self.text[self.released:length]
    self.released = length
    # A token is complete when all of its text is released (at the end: when any of it is).
    done = self.released_tokens
    while done < len(self.ids) and (self.ends[done] <= length or (
        final and (self.ends[done - 1] if done else 0) < length)):
      done += 1
    tokens, logprobs = self.ids[self.released_tokens:done], self.logprobs[self.released_tokens:done]
    self.released_tokens = done
    return Delta(text, tokens, logprobs)

