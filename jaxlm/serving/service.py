"""What the HTTP handlers ask of the model: prompts checked and tokenized, choices submitted to
the scheduler, and their pieces handed back in order of arrival.

A request's prompts become `[EOS] + tokens` (as `jaxlm.sample` feeds them); an encoder-decoder's
(`seq2seq`) are sources, `tokens + [EOS]` (as `jaxlm.sample --source` feeds them and training
packs them), read by the encoder: they may fill its `max_len` positions, and the completion may
have as many (the decoder's). Choice c of the request draws its tokens from the key `(seed, c)`,
so equal requests with a seed get equal output whatever else the server is doing.
"""

import asyncio
import dataclasses
import secrets
from collections.abc import AsyncIterator

from jaxlm.data import Tokenizer
from jaxlm.serving.engine import request_key
from jaxlm.serving.metrics import Metrics
from jaxlm.serving.protocol import Sampling
from jaxlm.serving.scheduler import Request, Scheduler
from jaxlm.serving.sinks import ChoiceSink, EngineFailed, Piece
from jaxlm.serving.text import TextStream


class ApiError(Exception):
  """An error answered in OpenAI's format: {"error": {"message", "type", "param", "code"}}."""

  def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
               param: str | None = None, code: str | None = None):
    super().__init__(message)
    self.status, self.message, self.type, self.param, self.code = (status, message, type_, param,
                                                                  code)

  def body(self) -> dict:
    return {"error": {"message": self.message, "type": self.type, "param": self.param,
                      "code": self.code}}


@dataclasses.dataclass(frozen=True)
class Prompt:
  ids: list[int]  # what the model reads: [EOS] + the prompt's tokens (a source: tokens + [EOS])
  text: str  # the prompt as text (what echo returns)


@dataclasses.dataclass
class Generation:
  """The submitted choices of one request."""
  queue: asyncio.Queue
  sinks: list[ChoiceSink]
  prompts: list[Prompt]

  async def pieces(self) -> AsyncIterator[Piece]:
    """Every piece of every choice, as they come, until all choices are finished."""
    unfinished = len(self.sinks)
    while unfinished:
      piece = await self.queue.get()
      if isinstance(piece, EngineFailed):
        raise ApiError(500, str(piece), "server_error")
      unfinished -= piece.finish_reason is not None
      yield piece

  def usage(self) -> dict:
    prompt = sum(len(p.ids) for p in self.prompts)
    completion = sum(s.stream.generated for s in self.sinks)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


class Service:
  def __init__(self, tokenizer: Tokenizer, scheduler: Scheduler, max_len: int, model_name: str,
               max_tokens_cap: int, chat_template: str, metrics: Metrics, seq2seq: bool = False,
               target_tokenizer: Tokenizer | None = None):
    self.tokenizer, self.scheduler, self.max_len = tokenizer, scheduler, max_len
    # What completions are decoded with: an encdec run with separate vocabularies writes target
    # ids, which the source tokenizer (prompts) cannot read.
    self.target_tokenizer = target_tokenizer or tokenizer
    self.model_name, self.chat_template, self.metrics = model_name, chat_template, metrics
    self.seq2seq = seq2seq
    # A gpt prompt takes one position at least; a source takes none of the decoder's.
    self.max_tokens_cap = min(max_tokens_cap, max_len if seq2seq else max_len - 1)

  def _framed(self, tokens: list[int]) -> list[int]:
    """What the model reads of a prompt's `tokens`."""
    eos = self.tokenizer.eos_id
    return [*tokens, eos] if self.seq2seq else [eos, *tokens]

  def _unframed(self, ids: list[int]) -> list[int]:
    return ids[:-1] if self.seq2seq else ids[1:]

  def text_prompt(self, text: str) -> Prompt:
    return Prompt(self._framed(self.tokenizer.encode(text)), text)

  def token_prompt(self, ids: list[int]) -> Prompt:
    vocab = self.tokenizer.vocab_size
    if max(ids) >= vocab:
      raise ApiError(400, f"prompt token id {max(ids)} is not below the vocabulary size {vocab}",
                     param="prompt")
    return Prompt(self._framed(ids), self.tokenizer.decode(ids))

  def check_model(self, name: str) -> None:
    if name != self.model_name:
      raise ApiError(404, f"the model {name!r} does not exist; this server serves "
                          f"{self.model_name!r}", param="model", code="model_not_found")

  def truncated(self, request: Sampling, prompts: list[Prompt]) -> list[Prompt]:
    """The prompts cut to their last `truncate_prompt_tokens` tokens (and the start token, or a
    source's end token)."""
    keep = request.truncate_prompt_tokens
    if keep is None:
      return prompts
    kept = lambda p: self._unframed(p.ids)[-keep:]  # noqa: E731
    return [Prompt(self._framed(kept(p)), self.tokenizer.decode(kept(p)))
            if len(p.ids) - 1 > keep else p for p in prompts]

  def check_family(self, echo: bool = False, chat: bool = False) -> None:
    """400 for what an encoder-decoder cannot do: its completion is a new text (a target), not
    a continuation of the prompt, so there is nothing to echo it after, and a chat template
    renders a conversation for a decoder to continue."""
    if self.seq2seq and echo:
      raise ApiError(400, "echo is not supported by an encoder-decoder (model.family=encdec): "
                          "its completion is a target generated from the source, not a "
                          "continuation of it; drop echo", param="echo")
    if self.seq2seq and chat:
      raise ApiError(400, "this model is an encoder-decoder (model.family=encdec): it maps a "
                          "source text to a target and has no chat template; send the source "
                          "as the prompt of /v1/completions", param="messages")

  def max_tokens(self, request: Sampling, prompts: list[Prompt], default: int | None) -> int:
    """The request's max_tokens (or the default, clamped to the context), checked."""
    longest = max(len(p.ids) for p in prompts)
    if self.seq2seq and longest > self.max_len:
      raise ApiError(400, f"the source is {longest} tokens (with its end token) and this model's "
                          f"encoder reads {self.max_len}; shorten it (or send "
                          "truncate_prompt_tokens)", param="prompt",
                     code="context_length_exceeded")
    room = self.max_len if self.seq2seq else self.max_len - longest
    if room < 1:
      raise ApiError(400, f"the prompt is {longest} tokens (with the start token) and this "
                          f"model's context is {self.max_len} tokens: no room for a completion; "
                          "shorten the prompt", param="prompt", code="context_length_exceeded")
    if request.max_tokens is None:
      return min(room, default or room, self.max_tokens_cap)
    if request.max_tokens > self.max_tokens_cap:
      raise ApiError(400, f"max_tokens={request.max_tokens} is above this server's limit of "
                          f"{self.max_tokens_cap}", param="max_tokens")
    if request.max_tokens > room:
      raise ApiError(400, f"this model's maximum context length is {self.max_len} tokens; the "
                          f"prompt is {longest} tokens (with the start token) and max_tokens is "
                          f"{request.max_tokens}: lower max_tokens to {room} or shorten the "
                          "prompt", param="max_tokens", code="context_length_exceeded")
    return request.max_tokens

  def start(self, request: Sampling, prompts: list[Prompt], max_tokens: int, echo: bool = False,
            prompt_logprobs: bool = False) -> Generation:
    """Submits n choices per prompt; 429 when the waiting queue cannot take them all."""
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()
    seed = secrets.randbits(63) if request.seed is None else request.seed
    top_k = max(request.top_k, 0)
    sinks, requests = [], []
    for p, prompt in enumerate(prompts):
      for c in range(request.n):
        index = p * request.n + c
        stream = TextStream(self.target_tokenizer, max_tokens, request.stops, request.ignore_eos)
        sink = ChoiceSink(loop, queue, index, stream, (prompt.text, self._unframed(prompt.ids))
                          if echo else None, self.metrics)
        sink.request = Request(prompt.ids, request_key(seed, index), request.temperature, top_k,
                               request.top_p, sink, prompt_logprobs=prompt_logprobs,
                               max_tokens=max_tokens)
        sinks.append(sink)
        requests.append(sink.request)
    if not self.scheduler.submit_all(requests):
      raise ApiError(429, "the server's queue is full; retry later", "server_overloaded",
                     code="queue_full")
    self.metrics.prompt_tokens.inc(sum(len(p.ids) for p in prompts) * request.n)
    return Generation(queue, sinks, prompts)

  def cancel(self, generation: Generation) -> None:
    for sink in generation.sinks:
      self.scheduler.cancel(sink.request)

  def token_text(self, token: int) -> str:
    target = self.target_tokenizer
    return "<eos>" if token == target.eos_id else target.decode([token])
