"""OpenAI's response objects: completions and chat completions, whole or as stream chunks."""

import dataclasses
import time
import uuid

from jaxlm.serving.service import Generation, Service
from jaxlm.serving.sinks import Piece


@dataclasses.dataclass
class Choice:
  """A whole choice, gathered from its pieces."""
  index: int
  text: str = ""
  tokens: list = dataclasses.field(default_factory=list)
  logprobs: list = dataclasses.field(default_factory=list)
  finish_reason: str | None = None

  def add(self, piece: Piece) -> None:
    self.text += piece.text
    self.tokens += piece.tokens
    self.logprobs += piece.logprobs
    self.finish_reason = piece.finish_reason or self.finish_reason


class Format:
  """The fields every response of one request shares."""

  def __init__(self, service: Service, kind: str, logprobs: int | None):
    self.service, self.kind, self.logprobs = service, kind, logprobs
    prefix = "cmpl" if kind == "completion" else "chatcmpl"
    self.id, self.created = f"{prefix}-{uuid.uuid4().hex}", int(time.time())
    self.offsets: dict[int, int] = {}  # each choice's text length so far, for text_offset

  def _head(self, object_: str) -> dict:
    return {"id": self.id, "object": object_, "created": self.created,
            "model": self.service.model_name}

  def completion_logprobs(self, index: int, tokens, logprobs) -> dict | None:
    """Legacy completions logprobs of `tokens`, offsets continuing the choice's text."""
    if self.logprobs is None:
      return None
    text_of = self.service.token_text
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    offset = self.offsets.get(index, 0)
    for token, entry in zip(tokens, logprobs):
      text = text_of(token)
      out["tokens"].append(text)
      out["text_offset"].append(offset)
      offset += len(text)
      out["token_logprobs"].append(None if entry is None else entry[0])
      out["top_logprobs"].append(None if entry is None else {
          text_of(t): lp for t, lp in zip(entry[1][:self.logprobs], entry[2])})
    self.offsets[index] = offset
    return out

  def chat_logprobs(self, tokens, logprobs) -> dict | None:
    if self.logprobs is None:
      return None
    text_of = self.service.token_text

    def item(token, logprob):
      text = text_of(token)
      return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**item(token, entry[0]), "top_logprobs": [
        item(t, lp) for t, lp in zip(entry[1][:self.logprobs], entry[2])]}
        for token, entry in zip(tokens, logprobs)]}

  def whole(self, choices: list[Choice], generation: Generation) -> dict:
    if self.kind == "completion":
      body = [{"index": c.index, "text": c.text, "finish_reason": c.finish_reason,
               "logprobs": self.completion_logprobs(c.index, c.tokens, c.logprobs)}
              for c in choices]
      return {**self._head("text_completion"), "choices": body, "usage": generation.usage()}
    body = [{"index": c.index, "finish_reason": c.finish_reason,
             "message": {"role": "assistant", "content": c.text},
             "logprobs": self.chat_logprobs(c.tokens, c.logprobs)} for c in choices]
    return {**self._head("chat.completion"), "choices": body, "usage": generation.usage()}

  def chunk(self, piece: Piece, first: bool) -> dict:
    if self.kind == "completion":
      choice = {"index": piece.index, "text": piece.text, "finish_reason": piece.finish_reason,
                "logprobs": self.completion_logprobs(piece.index, piece.tokens, piece.logprobs)}
      return {**self._head("text_completion"), "choices": [choice]}
    delta = {"role": "assistant", "content": piece.text} if first else {"content": piece.text}
    choice = {"index": piece.index, "delta": delta, "finish_reason": piece.finish_reason,
              "logprobs": self.chat_logprobs(piece.tokens, piece.logprobs)}
    return {**self._head("chat.completion.chunk"), "choices": [choice]}

  def usage_chunk(self, generation: Generation) -> dict:
    object_ = "text_completion" if self.kind == "completion" else "chat.completion.chunk"
    return {**self._head(object_), "choices": [], "usage": generation.usage()}
