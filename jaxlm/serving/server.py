"""Running the API: the listening socket, uvicorn, loading the model behind it, and draining.

The socket is bound before anything slow, so a port in use is a one-line error. The model loads
on a thread while uvicorn already answers (/health is 503 until it is ready). SIGTERM or Ctrl-C
stops accepting connections and new requests (503), lets the requests in flight finish for up
to `shutdown_timeout` seconds, cancels the rest, and returns normally (exit status 0).
"""

import asyncio
import dataclasses
import logging
import os
import socket
import sys
import threading

import uvicorn

from jaxlm.data import chat
from jaxlm.errors import UserError
from jaxlm.inference import trained
from jaxlm.serving.app import AppState, create_app
from jaxlm.serving.metrics import Metrics
from jaxlm.serving.scheduler import Scheduler
from jaxlm.serving.seq2seq_engine import engine_for
from jaxlm.serving.service import Service

log = logging.getLogger("jaxlm.serve")


@dataclasses.dataclass(frozen=True)
class ServeOptions:
  workdir: str
  step: int | None = None
  host: str = "127.0.0.1"
  port: int = 8000
  slots: int = 16
  api_key: str | None = None
  model_name: str = ""  # default: the workdir's name
  max_tokens: int = 0  # the cap on a request's max_tokens; 0 = the model's context
  max_body_bytes: int = 1 << 20
  max_waiting: int = 256
  prefills_per_step: int = 1
  decode_steps: int = 8  # tokens per slot per compiled decode call
  shutdown_timeout: float = 30.0
  overrides: dict = dataclasses.field(default_factory=dict)  # --config.* (mesh, dtype)

  def check(self) -> None:
    for name, low in (("port", 0), ("slots", 1), ("max_body_bytes", 1), ("max_waiting", 1),
                      ("prefills_per_step", 1), ("decode_steps", 1), ("max_tokens", 0),
                      ("shutdown_timeout", 0)):
      if getattr(self, name) < low:
        raise UserError(f"--{name}={getattr(self, name)} is below its minimum; give {low} or more")
    if self.port > 65535:
      raise UserError(f"--port={self.port} is not a TCP port; use 1..65535 (0 = any free one)")
    if self.api_key is not None and not self.api_key.strip():
      raise UserError("the API key is empty; give a non-empty --api_key (or JAXLM_API_KEY), or "
                      "none to serve without one")


def bind(host: str, port: int) -> socket.socket:
  try:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
  except OSError as e:
    raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port "
                    "or --host") from None
  sock.set_inheritable(True)
  return sock


class DrainingServer(uvicorn.Server):
  """uvicorn, except that a signal drains the API and then returns instead of re-raising."""

  def __init__(self, config: uvicorn.Config, state: AppState):
    super().__init__(config)
    self.state = state

  def handle_exit(self, sig, frame) -> None:
    self.state.draining = True
    if self.should_exit:
      self.force_exit = True
    self.should_exit = True


def load_service(options: ServeOptions, metrics: Metrics, tokenizer_json: dict) -> Service:
  run = trained.load(options.workdir, options.step, options.overrides)
  scheduler = Scheduler(engine_for(run.model_cfg, options.slots), run.params, options.max_waiting,
                        options.prefills_per_step, options.decode_steps)
  scheduler.warm_up()
  metrics.watch(scheduler)
  name = options.model_name or os.path.basename(os.path.normpath(options.workdir))
  template = (tokenizer_json.get("chat_template") or run.config.data.get("chat_template")
              or chat.DEFAULT_TEMPLATE)
  cap = options.max_tokens or run.model_cfg.max_len
  return Service(run.tokenizer, scheduler.start(), run.model_cfg.max_len, name, cap, template,
                 metrics, seq2seq=run.model_cfg.family == "encdec",
                 target_tokenizer=run.target_tokenizer)


def serve(options: ServeOptions) -> None:
  options.check()
  sock = bind(options.host, options.port)
  step, _, tokenizer_json = trained.check_generative(options.workdir, options.step)
  state = AppState(options.api_key, options.max_body_bytes, Metrics())
  config = uvicorn.Config(create_app(state), log_level="warning", lifespan="off",
                          timeout_graceful_shutdown=options.shutdown_timeout)
  server = DrainingServer(config, state)
  failure: list[UserError] = []

  def load():
    try:
      state.service = load_service(options, state.metrics, tokenizer_json)
    except UserError as e:
      failure.append(e)
      server.should_exit = True
      return
    host, port = sock.getsockname()[:2]
    rows = state.service.scheduler.row_counts
    print(f"serving {state.service.model_name} (step {step}) on http://{host}:{port}/v1 with "
          f"{options.slots} slots (decode calls of {options.decode_steps} tokens on "
          f"{', '.join(map(str, rows))} rows)", flush=True)

  print(f"loading {options.workdir} step {step}", file=sys.stderr, flush=True)
  loader = threading.Thread(target=load, name="jaxlm-load", daemon=True)
  loader.start()
  try:
    asyncio.run(server.serve(sockets=[sock]))
  finally:
    loader.join()
    if state.service is not None:
      state.service.scheduler.stop()
  if failure:
    raise failure[0]
  print("stopped", file=sys.stderr, flush=True)
