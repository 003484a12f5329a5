"""The request bodies of the OpenAI API that the server accepts, as strict pydantic models.

Types are strict (a string is not a number, 1 is not a boolean) and unknown fields are refused,
so a malformed request is a 400 naming the field, never a guess. Fields of OpenAI's API that this
server cannot honour are accepted only at their neutral value (penalties 0, no logit bias, best_of
equal to n), so a client that sends the defaults still works.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

INT64 = 2**63
MAX_STOPS = 4
MAX_N = 16
TOP_LOGPROBS = 5

Seed = Annotated[int, Field(ge=-INT64, lt=INT64)]
TokenId = Annotated[int, Field(ge=0, lt=2**31)]


class Strict(BaseModel):
  model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(Strict):
  include_usage: bool = False


class Sampling(Strict):
  """The fields completions and chat share."""
  model: str
  max_tokens: Annotated[int, Field(ge=1)] | None = None
  temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
  top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
  top_k: Annotated[int, Field(ge=-1)] = 0  # 0 or -1 = off (vLLM's extension)
  n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
  stop: str | Annotated[list[str], Field(max_length=MAX_STOPS)] | None = None
  seed: Seed | None = None
  stream: bool = False
  stream_options: StreamOptions | None = None
  user: str | None = None
  presence_penalty: Literal[0, 0.0] = 0
  frequency_penalty: Literal[0, 0.0] = 0
  logit_bias: Annotated[dict[str, float], Field(max_length=0)] | None = None
  ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever (for benchmarks)
  # vLLM's extension: keep only the last k prompt tokens (after the start token). Without it, a
  # prompt that does not fit is an error, never cut silently.
  truncate_prompt_tokens: Annotated[int, Field(ge=1)] | None = None

  @property
  def stops(self) -> list[str]:
    return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

  @model_validator(mode="after")
  def _check(self):
    if self.stream_options is not None and not self.stream:
      raise ValueError("stream_options needs stream=true")
    if any(not s for s in self.stops):
      raise ValueError("stop strings must not be empty")
    return self


class CompletionRequest(Sampling):
  prompt: (str | Annotated[list[str], Field(min_length=1)]
           | Annotated[list[TokenId], Field(min_length=1)]
           | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)])
  logprobs: Annotated[int, Field(ge=0, le=TOP_LOGPROBS)] | None = None
  echo: bool = False
  best_of: Annotated[int, Field(ge=1, le=MAX_N)] | None = None
  suffix: None = None

  @model_validator(mode="after")
  def _best_of(self):
    if self.best_of is not None and self.best_of != self.n:
      raise ValueError("best_of other than n is not supported; leave it out")
    return self

  @property
  def prompts(self) -> list[str] | list[list[int]]:
    """The prompts, each a string or token ids."""
    if isinstance(self.prompt, str) or isinstance(self.prompt[0], int):
      return [self.prompt]
    return list(self.prompt)


class TextPart(Strict):
  type: Literal["text"]
  text: str


class Message(Strict):
  role: Literal["system", "developer", "user", "assistant"]
  content: str | Annotated[list[TextPart], Field(min_length=1)]
  name: str | None = None

  @property
  def text(self) -> str:
    if isinstance(self.content, str):
      return self.content
    return "".join(part.text for part in self.content)


class ChatRequest(Sampling):
  messages: Annotated[list[Message], Field(min_length=1)]
  max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
  logprobs: bool = False
  top_logprobs: Annotated[int, Field(ge=0, le=TOP_LOGPROBS)] | None = None

  @model_validator(mode="after")
  def _limits(self):
    if self.top_logprobs is not None and not self.logprobs:
      raise ValueError("top_logprobs needs logprobs=true")
    if self.max_completion_tokens is not None:
      if self.max_tokens is not None and self.max_tokens != self.max_completion_tokens:
        raise ValueError("max_tokens and max_completion_tokens differ; give one")
      self.max_tokens = self.max_completion_tokens
    return self
