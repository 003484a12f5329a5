"""Continuous batching's host side: a thread that admits requests into free slots and steps them.

Each loop iteration admits waiting requests into free slots (while other slots are generating,
at most `prefills_per_step` per token of a decode call, so a burst of long prompts does not stall
every stream), then starts one decode call of `decode_steps` tokens for the occupied slots and,
while it runs, hands each request its tokens of the call before. A request that finishes (its
sink says so: EOS, a stop string, max_tokens) or is cancelled frees its slot when that call's
tokens are handed out; the tokens its row computed past its end are dropped. A call runs the
fewest rows (`row_counts`) that reach the last occupied slot, and no more tokens than the
requests' max_tokens leave.
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

from jaxlm.serving import row_counts
from jaxlm.serving.engine import Engine, Logprobs, pad_prompt, sampling_row

log = logging.getLogger("jaxlm.serve")


class Sink(Protocol):
  def on_tokens(self, tokens: list[int],
                logprobs: list[tuple[float, list[int], list[float]]]) -> bool:
    """Takes the next generated tokens (each with its logprob and the top alternatives), in
    order; True = finished (the tokens after the one that finished it are to be ignored)."""

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
  # The most tokens the sink takes: it finishes by that token at the latest, and no call
  # computes more for it (None: as many as come).
  max_tokens: int | None = None
  scheduled: int = 0  # tokens computed or dispatched for it so far
  prompt_logprob_values: Any = None  # set after prefill when asked: a host `Logprobs`
  cancelled: bool = False  # set by any thread; the slot is freed before the next step
  submitted: float = dataclasses.field(default_factory=time.monotonic)


def rows_of(tokens: np.ndarray, logprobs: Logprobs) -> tuple[list, list]:
  """Host tokens `[count, rows]` and their logprobs as each row's lists: tokens `[rows][count]`,
  logprobs `[rows][count]` of (logprob, top ids, top logprobs)."""
  chosen, top_ids, top_logprobs = (np.moveaxis(np.asarray(x), 0, 1).tolist() for x in logprobs)
  return np.asarray(tokens).T.tolist(), [list(zip(*row)) for row in zip(chosen, top_ids,
                                                                          top_logprobs)]


class Scheduler:
  """Owns the decode state and the thread that advances it."""

  def __init__(self, engine: Engine, params: Any, max_waiting: int = 256,
               prefills_per_step: int = 1, decode_steps: int = 1, on_step=None):
    self.engine, self.params = engine, params
    self.max_waiting, self.prefills_per_step = max_waiting, prefills_per_step
    self.decode_steps = decode_steps  # tokens per slot per decode call
    self.row_counts = [engine.slots]  # rows a decode call may run (warm_up finds more)
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
    """Compiles the prefill of the shortest prompts and a decode call of each row count, and
    keeps the row counts that give every request the output of a call over all slots
    (`row_counts`). Calls at the end of a request, with fewer tokens, compile when first needed."""
    self.row_counts, state = row_counts.invariant_row_counts(self.engine, self.params,
                                                             self.state, self.decode_steps)
    for rows in self.row_counts:  # compiled for a call's output, as the loop runs them
      state, tokens, _ = self.engine.steps(self.params, state, self.decode_steps, rows)
    jax.block_until_ready(tokens)
    self.state = state

  def _prefill(self, request: Request):
    tokens = pad_prompt(request.prompt, self.engine.cfg.max_len)
    sampling = sampling_row(request.key_data, request.temperature, request.top_k, request.top_p)
    return self.engine.prefill(self.params, tokens, len(request.prompt), request.prompt_logprobs,
                               sampling), sampling

  def _admit(self, slot: int, request: Request):
    """Prefills the request into `slot` (dispatched, not waited for); its first token's arrays."""
    (prefix, sampling) = self._prefill(request)
    self.state = self.engine.insert(self.state, prefix, slot,
                                    self.engine.cache_length(len(request.prompt)), sampling)
    self.slots[slot] = request
    request.scheduled = 1
    return prefix

  def _deliver_first(self, slot: int, request: Request, prefix) -> None:
    """Hands a new request its first token, the prefill's."""
    token, logprobs = jax.device_get((prefix.token, prefix.logprobs))
    if request.prompt_logprobs:
      request.prompt_logprob_values = jax.device_get(prefix.prompt_logprobs)
    if self.slots[slot] is request:
      tokens, logprobs = rows_of(token[None], jax.tree.map(lambda x: x[None], logprobs))
      self._deliver(slot, tokens[0], logprobs[0])

  def _deliver(self, slot: int, tokens: list[int], logprobs: list) -> None:
    request = self.slots[slot]
    if request.cancelled or request.sink.on_tokens(tokens, logprobs):
      self.slots[slot] = None

  def _next_admissions(self, block: bool) -> list[tuple[int, Request]]:
    with self.wake:
      while block and self.running and not self.waiting and not self.active:
        self.wake.wait()
      # Per decode call, as many prefills as its tokens allow: the streams' share of the
      # device stays that of one-token calls.
      budget = (self.prefills_per_step * self.decode_steps if self.active
                else len(self.slots))
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

  def _dispatch(self) -> tuple[Any, Any, list[Request | None]] | None:
    """Starts one decode call (JAX dispatches it asynchronously); what `_deliver_step` needs.
    None when no slot needs another token: each active request's max_tokens is already computed
    or in flight."""
    occupants = list(self.slots)
    active = [r for r in occupants if r is not None]
    needed = max((r.max_tokens - r.scheduled for r in active if r.max_tokens is not None),
                 default=0)
    if any(r.max_tokens is None for r in active):
      needed = self.decode_steps
    if needed <= 0:
      return None
    # Fewer tokens (a power of two: few compilations) when every request ends sooner.
    count = min(self.decode_steps, 1 << (needed - 1).bit_length())
    for request in active:
      request.scheduled += count
    self.state, tokens, logprobs = self.engine.steps(self.params, self.state, count,
                                                     self.rows_to_run())
    return tokens, logprobs, occupants

  def rows_to_run(self) -> int:
    """Slots a decode call runs: the fewest of `row_counts` that reach the last occupied one.
    Admission fills the lowest free slot, so a few requests run a few rows."""
    last = max(slot for slot, r in enumerate(self.slots) if r is not None)
    return next(rows for rows in self.row_counts if rows > last)

  def _deliver_step(self, tokens, logprobs, occupants: list[Request | None]) -> None:
    """Hands each request of a decode call its tokens. A request that finished (or whose slot
    was taken over) since the call was dispatched gets nothing: that row's tokens are dropped."""
    tokens, logprobs = rows_of(*jax.device_get((tokens, logprobs)))
    for slot, request in enumerate(occupants):
      if request is not None and self.slots[slot] is request:
        self._deliver(slot, tokens[slot], logprobs[slot])

  def _loop(self) -> None:
    # One call stays in flight: call t+1 is dispatched before call t's tokens are delivered, so
    # the host's work per token (fetch, detokenise, stop strings, SSE) overlaps the device's next
    # call instead of adding to it. A request that finishes in call t costs its row the rest of
    # call t and call t+1; its output is unchanged (each slot feeds its own token on the device).
    pending = None
    while self.running:
      admitted: list[tuple[int, Request]] = []
      try:
        admitted = self._next_admissions(block=pending is None)
        prefixes = [self._admit(slot, request) for slot, request in admitted]
        # The next call is dispatched before the prefills' tokens are fetched: the device
        # goes on from the prefills to it without waiting for the host.
        dispatched = self._dispatch() if self.active else None
        for (slot, request), prefix in zip(admitted, prefixes):
          self._deliver_first(slot, request, prefix)
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
