"""The HTTP API: OpenAI's /v1/models, /v1/completions and /v1/chat/completions, plus /health and
/metrics, on Starlette (served by uvicorn).

Every error is OpenAI's error JSON with its status: 400 for a malformed or impossible request, 401
without the API key, 404 for an unknown model or route, 413 for a body over the limit, 429 when
the queue is full, 503 while the model loads or the server drains. A client that disconnects
cancels its choices, which frees their slots before the next decode step.
"""

import asyncio
import dataclasses
import hmac
import json
import logging

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from jaxlm.data import chat
from jaxlm.serving.metrics import Metrics
from jaxlm.serving.protocol import ChatRequest, CompletionRequest
from jaxlm.serving.responses import Choice, Format
from jaxlm.serving.service import ApiError, Generation, Service

log = logging.getLogger("jaxlm.serve")
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclasses.dataclass
class AppState:
  api_key: str | None
  max_body_bytes: int
  metrics: Metrics
  service: Service | None = None  # None while loading
  draining: bool = False


def _state(request: Request) -> AppState:
  return request.app.state.serving


def _service(request: Request) -> Service:
  state = _state(request)
  if state.api_key is not None:
    given = request.headers.get("authorization", "")
    expected = f"Bearer {state.api_key}"
    if not hmac.compare_digest(given.encode(), expected.encode()):
      raise ApiError(401, "a valid API key is required: send 'Authorization: Bearer KEY'",
                     code="invalid_api_key")
  if state.draining:
    raise ApiError(503, "the server is shutting down", "server_unavailable")
  if state.service is None:
    raise ApiError(503, "the model is still loading; retry shortly", "server_unavailable")
  return state.service


async def _body(request: Request, cls: type[BaseModel]):
  """The JSON body as `cls`, read up to the size limit."""
  limit = _state(request).max_body_bytes
  declared = request.headers.get("content-length", "")
  if declared.isdigit() and int(declared) > limit:
    raise ApiError(413, f"the request body is over {limit} bytes", code="body_too_large")
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size > limit:
      raise ApiError(413, f"the request body is over {limit} bytes", code="body_too_large")
    chunks.append(chunk)
  try:
    body = json.loads(b"".join(chunks).decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ApiError(400, f"the body is not valid JSON in UTF-8: {e}") from None
  try:
    return cls.model_validate(body)
  except ValidationError as e:
    first = e.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    raise ApiError(400, f"{param or 'body'}: {first['msg']}", param=param) from None


async def _until_disconnect(request: Request) -> None:
  while (await request.receive())["type"] != "http.disconnect":
    pass


async def _collect(request: Request, service: Service, generation: Generation) -> list[Choice]:
  """Every choice whole; cancelled (slots freed) if the client leaves first."""
  choices = [Choice(i) for i in range(len(generation.sinks))]

  async def gather():
    async for piece in generation.pieces():
      choices[piece.index].add(piece)

  work, gone = asyncio.ensure_future(gather()), asyncio.ensure_future(_until_disconnect(request))
  try:
    await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    if not work.done():
      raise ApiError(499, "the client disconnected")
    work.result()  # raises what the generation raised
    return choices
  finally:
    gone.cancel()
    work.cancel()
    service.cancel(generation)


def _sse(record: dict | str) -> str:
  return f"data: {record if isinstance(record, str) else json.dumps(record)}\n\n"


async def _stream(service: Service, generation: Generation, form: Format, include_usage: bool):
  started: set[int] = set()
  try:
    async for piece in generation.pieces():
      chunk = form.chunk(piece, first=piece.index not in started)
      started.add(piece.index)
      if include_usage:
        chunk["usage"] = None
      yield _sse(chunk)
    if include_usage:
      yield _sse(form.usage_chunk(generation))
    yield _sse("[DONE]")
  except ApiError as e:
    yield _sse(e.body())
  finally:  # also when the client disconnected: Starlette cancels this generator
    service.cancel(generation)


async def _respond(request: Request, service: Service, generation: Generation, form: Format,
                   body) -> Response:
  if body.stream:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(_stream(service, generation, form, include_usage),
                             media_type="text/event-stream",
                             headers={"cache-control": "no-cache"})
  choices = await _collect(request, service, generation)
  return JSONResponse(form.whole(choices, generation))


async def completions(request: Request) -> Response:
  service = _service(request)
  body = await _body(request, CompletionRequest)
  service.check_model(body.model)
  service.check_family(echo=body.echo)
  prompts = service.truncated(body, [
      service.text_prompt(p) if isinstance(p, str) else service.token_prompt(p)
      for p in body.prompts])
  max_tokens = service.max_tokens(body, prompts, COMPLETIONS_DEFAULT_MAX_TOKENS)
  prompt_logprobs = body.echo and body.logprobs is not None
  generation = service.start(body, prompts, max_tokens, body.echo, prompt_logprobs)
  return await _respond(request, service, generation, Format(service, "completion", body.logprobs),
                        body)


async def chat_completions(request: Request) -> Response:
  service = _service(request)
  body = await _body(request, ChatRequest)
  service.check_model(body.model)
  service.check_family(chat=True)
  messages = [{"role": m.role, "content": m.text} for m in body.messages]
  try:
    ids = chat.encode_prompt(service.tokenizer, service.chat_template, messages)
  except ValueError as e:
    raise ApiError(400, f"the chat template cannot render these messages: {e}",
                   param="messages") from None
  prompt, = service.truncated(body, [dataclasses.replace(service.text_prompt(""), ids=ids)])
  max_tokens = service.max_tokens(body, [prompt], None)
  generation = service.start(body, [prompt], max_tokens)
  top = (body.top_logprobs or 0) if body.logprobs else None
  return await _respond(request, service, generation, Format(service, "chat", top), body)


async def models(request: Request) -> Response:
  service = _service(request)
  return JSONResponse({"object": "list", "data": [
      {"id": service.model_name, "object": "model", "created": 0, "owned_by": "jaxlm",
       "max_model_len": service.max_len}]})


async def health(request: Request) -> Response:
  state = _state(request)
  if state.service is None or state.draining:
    status = "draining" if state.draining else "loading"
    return JSONResponse({"status": status}, status_code=503)
  return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
  return Response(_state(request).metrics.render(),
                  media_type="text/plain; version=0.0.4; charset=utf-8")


def _error_response(status: int, message: str, type_: str) -> JSONResponse:
  return JSONResponse(ApiError(status, message, type_).body(), status_code=status)


def create_app(state: AppState) -> Starlette:
  async def api_error(request: Request, e: ApiError) -> Response:
    return JSONResponse(e.body(), status_code=e.status)

  async def http_error(request: Request, e: HTTPException) -> Response:
    return _error_response(e.status_code, f"{request.method} {request.url.path}: {e.detail}",
                           "invalid_request_error")

  async def server_error(request: Request, e: Exception) -> Response:
    log.exception("unexpected error")
    return _error_response(500, f"internal error: {type(e).__name__}", "server_error")

  routes = [Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"])]
  app = Starlette(routes=routes, exception_handlers={
      ApiError: api_error, HTTPException: http_error, Exception: server_error})
  app.state.serving = state
  return _counting(app, state.metrics, {route.path for route in routes})


def _counting(app, metrics: Metrics, paths: set[str]):
  """The app, counting each response by route and status (unknown paths as one route)."""
  async def counted(scope, receive, send):
    if scope["type"] != "http":
      return await app(scope, receive, send)
    route = scope["path"] if scope["path"] in paths else "other"

    async def send_counted(message):
      if message["type"] == "http.response.start":
        metrics.requests.labels(route, str(message["status"])).inc()
      await send(message)

    await app(scope, receive, send_counted)

  counted.state = app.state
  return counted
