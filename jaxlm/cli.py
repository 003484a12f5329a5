"""What every `python -m jaxlm.<verb>` shares: config overrides, the workdir, and user-facing errors.

A mistake of the user's (bad data, a mesh that does not fit, a missing checkpoint) ends with one line
on stderr saying what is wrong and how to fix it, and exit status 2; `--verbose` adds the traceback.
"""

import contextlib
import difflib
import json
import os
import sys
import tempfile
import traceback
from typing import Callable

import jax
import ml_collections
from absl import flags, logging

from jaxlm.config import base_config
from jaxlm.errors import UserError
from jaxlm.parallel import distributed, sharding

flags.DEFINE_bool("verbose", False, "Print the full traceback of errors.")

def fail(message: str) -> None:
  """The one-line user error and exit status 2."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def unknown_config_keys(argv: list[str]) -> list[str]:
  """Messages for `--config.a.b=v` arguments that name no option of `jaxlm/config.py`."""
  messages = []
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0]
    node = base_config()
    for depth, name in enumerate(path.split(".")):
      if not isinstance(node, ml_collections.ConfigDict) or name not in node:
        known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {'.'.join(path.split('.')[:depth] + close)}?)" if close else ""
        messages.append(f"--config.{path} is not an option{hint}")
        break
      node = node[name]
  return messages


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with mistakes reported as one line and exit status 2.

  For `app.run(main, flags_parser=cli.parse_flags)`. The config file is loaded here too, so that a
  missing or broken one is reported the same way.
  """
  unknown = unknown_config_keys(argv)
  if unknown:
    fail("; ".join(unknown) + "; every option is listed in jaxlm/config.py")
  try:
    rest = flags.FLAGS(argv)
    if "config" in flags.FLAGS:
      flags.FLAGS.config.to_dict()  # a config file that failed to load raises on first use
  except flags.Error as e:
    fail(f"{e}; see --helpshort")
  except Exception as e:  # noqa: BLE001  (a config file is user code: anything can go wrong)
    lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [""]
    fail(f"cannot load the config file: {type(e).__name__}: {lines[-1]}; check --config")
  return rest


def run(fn: Callable[[], object], multihost: bool = True, cpu_devices: int = 0) -> None:
  """Calls `fn`, turning user errors into a one-line message and exit status 2.

  First splits a CPU host into `cpu_devices` devices (`mesh.cpu_devices`) and, with `multihost`,
  joins a multi-host job if one is configured or detected (see `distributed.py`): both must happen
  before anything touches a device.
  """
  if not flags.FLAGS.verbose:
    logging.set_verbosity(logging.ERROR)  # Orbax and grain log every file they touch
  # Reuse compiled steps across runs (JAX_COMPILATION_CACHE_DIR, if set, wins).
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(os.path.expanduser("~"), ".cache", "jaxlm", "xla"))
  if not flags.FLAGS.verbose:
    # A failed save or restore is reported once, as our own line, not also as Orbax's tracebacks,
    # nor as those of the reads it cut short (tensorstore calling back into a closed event loop).
    logging.get_absl_logger().addFilter(_hide_orbax)
    sys.unraisablehook = lambda _: None
  try:
    sharding.split_cpu_host(cpu_devices)
    if multihost:
      distributed.initialize_from_flags()
    fn()
  except UserError as e:
    if flags.FLAGS.verbose:
      traceback.print_exc()
    _remove_empty_workdirs()
    message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    print(f"error: {message}", file=sys.stderr)
    _quiet_from_here()
    sys.exit(2)


def _quiet_from_here() -> None:
  """Sends what the process writes to stderr after its error line to /dev/null: reads or writes
  that the error cut short (Orbax's tensorstore tasks, asyncio's "exception never retrieved", a
  worker thread) may report themselves while Python shuts down, and the one-line error must stay
  the last line. Shutdown itself (Orbax's finalisers, atexit) still runs."""
  sys.stderr.flush()
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, sys.stderr.fileno())
  os.close(devnull)


def _hide_orbax(record) -> bool:
  return f"{os.sep}orbax{os.sep}" not in record.pathname


def require_workdir(workdir: str | None) -> str:
  if not workdir:
    raise UserError("--workdir is required: the directory for checkpoints, tokenizer and logs")
  return workdir


def config_to_json(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON types (tuples become lists)."""
  return json.loads(config.to_json())


# Workdirs that this process created; a user error that leaves them empty removes them again.
_created_workdirs: list[str] = []


def ensure_writable(workdir: str) -> None:
  """Creates the workdir and proves it writable with a probe file.

  Permission bits do not stop root, so `os.access` is not enough: a read-only filesystem or an
  immutable directory only shows when something is written.
  """
  path = os.path.abspath(workdir)
  top = path  # the highest directory that makedirs will create
  while not os.path.lexists(os.path.dirname(top)) and os.path.dirname(top) != top:
    top = os.path.dirname(top)
  parent = os.path.dirname(top)
  if os.path.lexists(path) and not os.path.isdir(path):
    raise UserError(f"workdir {workdir} is a file, not a directory; choose another --workdir")
  if not os.path.lexists(path) and not os.path.isdir(parent):
    raise UserError(f"cannot create workdir {workdir}: {parent} is a file, not a directory; "
                          "choose another --workdir")
  existed = os.path.lexists(path)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create workdir {workdir}: {e.strerror}; choose a writable "
                          "--workdir") from None
  if not existed:
    _created_workdirs.append(top)
  try:
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as e:
    raise UserError(f"workdir {workdir} is not writable: {e.strerror}; choose a writable "
                          "--workdir") from None


def _remove_empty_workdirs() -> None:
  """Removes the empty directories of workdirs this process created (files are never touched)."""
  for top in _created_workdirs:
    for directory, _, _ in os.walk(top, topdown=False):
      with contextlib.suppress(OSError):
        os.rmdir(directory)


def emit_json(record: dict) -> None:
  """The last line of stdout: one JSON object, for scripts."""
  print(json.dumps(record), flush=True)
