"""Stopping cleanly when asked: SIGTERM (a preempted VM, a scheduler) or a first Ctrl-C.

The training loop finishes its current step, saves a checkpoint and exits 0; rerunning the same
command resumes from it. A second Ctrl-C exits at once: the checkpoint being written, if any, is
never taken as the latest, so the last complete one stays intact.

In a multi-host run every process must stop at the same step. JAX's own preemption service does
that: its runtime catches SIGTERM on any host, tells the others, and agrees on the step at which
all save (`multihost_utils.reached_preemption_sync_point`, asked once per step). A Ctrl-C on one
host is turned into that same notice, by sending this process a SIGTERM.
"""

import os
import signal
import sys
import threading

import jax
from jax.experimental import multihost_utils


class Preemption:
  """A context that turns SIGTERM / SIGINT into a request to stop after the current step."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self) -> "Preemption":
    if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
      # With several processes JAX's runtime owns SIGTERM (see the module docstring).
      signals = (signal.SIGTERM, signal.SIGINT) if jax.process_count() == 1 else (signal.SIGINT,)
      for signum in signals:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def _handle(self, signum, frame) -> None:
    del frame
    if self.requested and signum == signal.SIGINT:
      print("\ninterrupted again: exiting now; the last complete checkpoint is kept",
            file=sys.stderr)
      os._exit(130)
    self.requested = True
    print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step "
          "(Ctrl-C again to quit at once)", file=sys.stderr)
    if jax.process_count() > 1:
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption notice, seen by every process

  def agreed(self, step: int) -> bool:
    """Whether to stop after `step` (called once per step, with the same steps on every process)."""
    if jax.process_count() == 1:
      return self.requested
    return multihost_utils.reached_preemption_sync_point(step)
