"""Stopping cleanly when asked: SIGTERM (a preempted VM, a scheduler) or a first Ctrl-C.

The training loop finishes its current step, saves a checkpoint and exits 0; rerunning the same
command resumes from it. A second Ctrl-C exits at once: the checkpoint being written, if any, is
never taken as the latest, so the last complete one stays intact.
"""

import os
import signal
import sys
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class Preemption:
  """A context that turns SIGTERM / SIGINT into a request to stop after the current step."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self) -> "Preemption":
    if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def _handle(self, signum, frame) -> None:
    del frame
    if self.requested and signum == signal.SIGINT:
      print("\ninterrupted again: exiting now; the last complete checkpoint is kept", file=sys.stderr)
      os._exit(130)
    self.requested = True
    print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step "
          "(Ctrl-C again to quit at once)", file=sys.stderr)

  def agreed(self) -> bool:
    """Whether to stop now: in a multi-host run, when any process was asked (all stop together)."""
    if jax.process_count() == 1:
      return self.requested
    return bool(multihost_utils.process_allgather(np.int32(self.requested)).any())
