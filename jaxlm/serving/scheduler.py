"""Continuous batching's host side: a thread that admits requests into free slots and steps them.

Each loop iteration admits waiting requests into free slots (at most `prefills_per_step` while
other slots are generating, so a burst of long prompts does not stall every stream), then starts
one decode step for all slots and, while it runs, hands each request its token of the step
before. A request that finishes (its sink says so: EOS, a stop string, max_tokens) or is
cancelled frees its slot at once.
Sinks are called on this thread; they must be quick and thread-safe (the server's hand tokens to
an asyncio loop).
"""

import collections
import dataclasses
import logging
import threading
import time
from typing import Any, Protocol

import jax
import numpy as np

from jaxlm.serving.engine import Engine, Logprobs, pad_prompt, sampling_row

log = logging.getLogger("jaxlm.serve")


class Sink(Protocol):
  def on_token(self, token: int, logprobs: tuple[float, list[int], list[float]]) -> bool:
    """Takes a generated token (with its logprob and the top alternatives); True = finished."""

  def on_error(self, message: str) -> None:
    """The request cannot complete (an engine failure)."""


@dataclasses.dataclass(eq=False)
class Request:
  prompt: list[int]  # token ids: EOS then the prompt (gpt), or the source then EOS (encdec)
  key_data: np.ndarray  # engine.request_key(seed, choice)
  temperature: float
  top_k: int
  top_p: float
  sink: Sink
  prompt_logprobs: bool = False
  prompt_logprob_values: Any = None  # set after prefill when asked: a host `Logprobs`
  cancelled: bool = False  # set by any thread; the slot is freed before the next step
  submitted: float = dataclasses.field(default_factory=time.monotonic)


def host_logprobs(logprobs: Logprobs, row: int) -> tuple[float, list[int], list[float]]:
  return (float(logprobs.chosen[row]), logprobs.top_ids[row].tolist(),
          logprobs.top_logprobs[row].tolist())


class Scheduler:
  """Owns the decode state and the thread that advances it."""

  def __init__(self, engine: Engine, params: Any, max_waiting: int = 256,
               prefills_per_step: int = 1, on_step=None):
    self.engine, self.params = engine, params
    self.max_waiting, self.prefills_per_step = max_waiting, prefills_per_step
    self.on_step = on_step or (lambda scheduler: None)  # metrics hook, on this thread
    self.state = engine.init_state()
    self.slots: list[Request | None] = [None] * engine.slots
    self.waiting: collections.deque[Request] = collections.deque()
    self.wake = threading.Condition()
    self.running = True
    self.thread = threading.Thread(target=self._loop, name="jaxlm-decode", daemon=True)

  def start(self) -> "Scheduler":
    self.thread.start()
    return self

  def stop(self) -> None:
    with self.wake:
      self.running = False
      self.wake.notify()
    self.thread.join()

  @property
  def active(self) -> int:
    return sum(r is not None for r in self.slots)

  def submit(self, request: Request) -> bool:
    """Queues a request; False when the waiting queue is full."""
    return self.submit_all([request])

  def submit_all(self, requests: list[Request]) -> bool:
    """Queues all the requests, or none (False) when the waiting queue cannot take them."""
    with self.wake:
      if len(self.waiting) + len(requests) > self.max_waiting:
        return False
      self.waiting.extend(requests)
      self.wake.notify()
    return True

  def cancel(self, request: Request) -> None:
    request.cancelled = True
    with self.wake:
      self.wake.notify()

  def warm_up(self) -> None:
    """Compiles the decode step and the smallest prefill before the first request."""
    request = Request([0], np.zeros(2, np.uint32), 0.0, 0, 1.0, sink=None)
    prefix, sampling = self._prefill(request)
    # Twice: the fresh state and the steps' outputs are placed differently (two compilations).
    for _ in range(2):
      state = self.engine.insert(self.state, prefix, 0, self.engine.cache_length(1), sampling)
      self.state, tokens, _ = self.engine.step(self.params, state)
    jax.block_until_ready(tokens)

  def _prefill(self, request: Request):
    tokens = pad_prompt(request.prompt, self.engine.cfg.max_len)
    sampling = sampling_row(request.key_data, request.temperature, request.top_k, request.top_p)
    return self.engine.prefill(self.params, tokens, len(request.prompt), request.prompt_logprobs,
                               sampling), sampling

  def _admit(self, slot: int, request: Request) -> None:
    (prefix, sampling) = self._prefill(request)
    self.state = self.engine.insert(self.state, prefix, slot,
                                    self.engine.cache_length(len(request.prompt)), sampling)
    token, logprobs = jax.device_get((prefix.token, prefix.logprobs))
    if request.prompt_logprobs:
      request.prompt_logprob_values = jax.device_get(prefix.prompt_logprobs)
    self.slots[slot] = request
    self._deliver(slot, int(token[0]), host_logprobs(logprobs, 0))

  def _deliver(self, slot: int, token: int, logprobs) -> None:
    request = self.slots[slot]
    if request.cancelled or request.sink.on_token(token, logprobs):
      self.slots[slot] = None

  def _next_admissions(self, block: bool) -> list[tuple[int, Request]]:
    with self.wake:
      while block and self.running and not self.waiting and not self.active:
        self.wake.wait()
      budget = self.prefills_per_step if self.active else len(self.slots)
      admitted = []
      for slot, occupant in enumerate(self.slots):
        if occupant is not None and occupant.cancelled:
          self.slots[slot] = occupant = None
        while occupant is None and self.waiting and len(admitted) < budget:
          request = self.waiting.popleft()
          if not request.cancelled:
            admitted.append((slot, request))
            occupant = request
      return admitted

  def _dispatch(self) -> tuple[Any, Any, list[Request | None]]:
    """Starts one decode step (JAX dispatches it asynchronously); what `_deliver_step` needs."""
    self.state, tokens, logprobs = self.engine.step(self.params, self.state)
    return tokens, logprobs, list(self.slots)

  def _deliver_step(self, tokens, logprobs, occupants: list[Request | None]) -> None:
    """Hands each request of a step its token. A request that finished (or whose slot was
    taken over) since the step was dispatched gets nothing: that row's token is dropped."""
    tokens, logprobs = jax.device_get((tokens, logprobs))
    for slot, request in enumerate(occupants):
      if request is not None and self.slots[slot] is request:
        self._deliver(slot, int(tokens[slot]), host_logprobs(logprobs, slot))

  def _loop(self) -> None:
    # One step stays in flight: step t+1 is dispatched before step t's tokens are delivered, so
    # the host's work per token (fetch, detokenise, stop strings, SSE) overlaps the device's next
    # step instead of adding to it. A request that finishes at step t costs its row one wasted
    # token of step t+1; its output is unchanged (each slot feeds its own token on the device).
    pending = None
    while self.running:
      admitted: list[tuple[int, Request]] = []
      try:
        admitted = self._next_admissions(block=pending is None)
        for slot, request in admitted:
          self._admit(slot, request)
        dispatched = self._dispatch() if self.active else None
        if pending is not None:
          self._deliver_step(*pending)
        pending = dispatched
        self.on_step(self)
      except Exception as e:  # noqa: BLE001  (a failed step must not hang its clients)
        log.exception("decode step failed")
        pending = None
        self._fail_all(admitted, f"generation failed: {type(e).__name__}: {e}")

  def _fail_all(self, admitted, message: str) -> None:
    failed = {id(r): r for r in [*(r for r in self.slots if r), *(r for _, r in admitted)]}
    self.slots = [None] * len(self.slots)
    self.state = self.engine.init_state()
    for request in failed.values():
      request.sink.on_error(message)
