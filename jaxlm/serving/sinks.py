"""One choice of a request, between the decode thread and the asyncio handler serving it.

The scheduler calls `ChoiceSink.on_tokens` on its thread with the choice's tokens of one decode
call; the sink turns them into text with a `TextStream` and posts what may be released as one
`Piece` to the handler's asyncio queue (one SSE chunk when streaming). The first piece of
an echoing choice carries the prompt (and its logprobs, when asked).
"""

import asyncio
import dataclasses
import time

from jaxlm.serving.scheduler import Request
from jaxlm.serving.text import Delta, TextStream


@dataclasses.dataclass
class Piece:
  index: int  # the choice's index in the response
  text: str
  tokens: list[int]  # the tokens this piece completes (with echo, the prompt's first)
  logprobs: list  # theirs: (logprob, top ids, top logprobs), or None where unknown
  finish_reason: str | None = None


class EngineFailed(Exception):
  pass


class ChoiceSink:
  def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, index: int,
               stream: TextStream, echo: tuple[str, list[int]] | None, metrics):
    self.loop, self.queue, self.index, self.stream = loop, queue, index, stream
    self.echo = echo  # (prompt text, its token ids after the leading EOS)
    self.metrics = metrics
    self.request: Request | None = None  # set before submission
    self.first_token_at: float | None = None

  def on_tokens(self, tokens: list[int], logprobs: list) -> bool:
    before = self.stream.generated
    delta = self.stream.push_all(tokens, logprobs)
    now = time.monotonic()
    if self.first_token_at is None:
      self.first_token_at = now
      self.metrics.ttft.observe(now - self.request.submitted)
      delta = self._with_echo(delta)
    self.metrics.generation_tokens.inc(self.stream.generated - before)
    if delta.finish_reason and self.stream.generated > 1:
      self.metrics.tpot.observe((now - self.first_token_at) / (self.stream.generated - 1))
    if delta.text or delta.tokens or delta.finish_reason:
      self._post(Piece(self.index, delta.text, delta.tokens, delta.logprobs, delta.finish_reason))
    return delta.finish_reason is not None

  def _with_echo(self, delta: Delta) -> Delta:
    if self.echo is None:
      return delta
    text, ids = self.echo
    values = self.request.prompt_logprob_values
    logprobs = [None] * len(ids) if values is None else [
        (float(values.chosen[i]), values.top_ids[i].tolist(), values.top_logprobs[i].tolist())
        for i in range(len(ids))]
    return Delta(text + delta.text, ids + delta.tokens, logprobs + delta.logprobs,
                 delta.finish_reason)

  def on_error(self, message: str) -> None:
    self._post(EngineFailed(message))

  def _post(self, item) -> None:
    try:
      self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
    except RuntimeError:  # the event loop is gone (the server stopped): nobody is listening
      pass
