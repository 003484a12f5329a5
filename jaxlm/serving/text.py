"""One choice's tokens turned into text deltas: incremental detokenisation and stop strings.

Each token re-decodes only a window of the last few (`IncrementalText`), so a long output costs the
same per token as a short one, and the text is what decoding all the ids gives (as `jaxlm.sample`
decodes them). Only what is settled is released:
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
# Decoded before the window, so that its first tokens read as they do mid-text (a character's
# first bytes, a word piece's word, a space), and so that a token that rewrites text before it
# is noticed: the window's text must then continue the context's.
CONTEXT_TOKENS = MAX_CHAR_TOKENS + 1
WINDOW_TOKENS = 16  # re-decoded with each token; the window moves on once it holds twice this


def held_back(text: str, stops: Sequence[str]) -> int:
  """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
  longest = 0
  for stop in stops:
    for size in range(min(len(stop) - 1, len(text)), longest, -1):
      if text.endswith(stop[:size]):
        longest = size
        break
  return longest


class IncrementalText:
  """The text of a growing list of ids, each call re-decoding only the tokens of a window.

  The text of the ids before the window is kept; a call decodes the window with CONTEXT_TOKENS
  before it and appends what follows the context's own text. That is the whole decoding wherever
  a token's text depends on at most CONTEXT_TOKENS tokens before it, as it does for every
  tokenizer kind jaxlm has (byte, char, BPE, SentencePiece, WordPiece: tested against decoding
  all ids). Where the window's text does not start with the context's (a character or a piece
  that spans the boundary), the ids are decoded whole for that call, and the window moves on
  only to a boundary where they start alike.
  """

  def __init__(self, tokenizer: Tokenizer):
    self.tokenizer = tokenizer
    self.text = ""
    self._context = 0  # first id decoded for context only
    self._start = 0  # first id of the window; the ids before it give text[:_kept]
    self._kept = 0
    self._context_text = ""  # decode(ids[_context:_start])

  def update(self, ids: Sequence[int]) -> str:
    """The text of `ids`: the previous call's ids with one or more appended."""
    window = self.tokenizer.decode(ids[self._context:])
    if window.startswith(self._context_text):
      self.text = self.text[:self._kept] + window[len(self._context_text):]
    else:
      self.text = self.tokenizer.decode(ids)
    if len(ids) - self._start >= 2 * WINDOW_TOKENS:
      self._move(ids, len(ids) - WINDOW_TOKENS)
    return self.text

  def _move(self, ids: Sequence[int], start: int) -> None:
    context = max(0, start - CONTEXT_TOKENS)
    context_text = self.tokenizer.decode(ids[context:start])
    window = self.tokenizer.decode(ids[context:])
    tail = window[len(context_text):]
    if window.startswith(context_text) and self.text.endswith(tail):
      self._context, self._start, self._context_text = context, start, context_text
      self._kept = len(self.text) - len(tail)


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
    self._decoded = IncrementalText(tokenizer)
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
    self.text = self._decoded.update(self.ids)
    self.ends.append(len(self.text))
    cut = self._stop_position()
    if cut is not None:
      return self._finish("stop", cut)
    if len(self.ids) >= self.max_tokens:
      return self._finish("length", len(self.text))
    # Only the last MAX_CHAR_TOKENS tokens can hold the start of an unfinished character.
    final = self.ends[-MAX_CHAR_TOKENS - 1] if len(self.ends) > MAX_CHAR_TOKENS else 0
    settled = max(len(self.text.rstrip(REPLACEMENT)), min(final, len(self.text)))
    longest = max((len(s) for s in self.stops), default=0)
    settled -= held_back(self.text[max(0, settled - longest):settled], self.stops)
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

