"""Batches prepared ahead on a background thread, so the training loop does not wait for data.

Getting a batch onto the devices (grain's next batch, then its transfer) takes a few milliseconds of
host time; done in the loop, that time is part of every step on a small model. Here a thread
prepares the next `depth` batches while the devices compute. The data iterator runs ahead of
training by up to `depth` + 1 batches, so `state()` returns the iterator state *after the last
batch handed out*, which is what a checkpoint must store for an exact resume.
"""

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any


class Prefetch:
  """Iterates `prepare(rows)` over `iterator` (a grain iterator with get_state) on a thread."""

  def __init__(self, iterator: Iterator, prepare: Callable[[Any], Any], depth: int = 2):
    self._iterator, self._prepare = iterator, prepare
    self._state = iterator.get_state()
    self._queue: queue.Queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  def _produce(self) -> None:
    try:
      while not self._stop.is_set():
        rows = next(self._iterator)
        item = (self._prepare(rows), self._iterator.get_state(), None)
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
    except BaseException as e:  # handed to the training loop, which raises it
      self._queue.put((None, None, e))

  def __iter__(self):
    return self

  def __next__(self) -> Any:
    if self._thread is None:
      self._thread = threading.Thread(target=self._produce, name="jaxlm-prefetch", daemon=True)
      self._thread.start()
    batch, state, error = self._queue.get()
    if error is not None:
      raise error
    self._state = state
    return batch

  def state(self) -> dict:
    """The data iterator's state after the last batch that `next` returned."""
    return self._state

  def close(self) -> None:
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
