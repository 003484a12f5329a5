"""What every `python -m jaxlm.<verb>` shares: config overrides, the workdir, and user-facing errors.

A mistake of the user's (bad data, a mesh that does not fit, a missing checkpoint) ends with one line
on stderr saying what is wrong and how to fix it, and exit status 2; `--verbose` adds the traceback.
"""

import json
import os
import sys
import traceback
from typing import Callable

import jax
import ml_collections
from absl import flags, logging

from jaxlm.checkpoint import CheckpointError
from jaxlm.config import ConfigError
from jaxlm.data import DataError
from jaxlm.decode import PromptError
from jaxlm.sharding import ShardingError

flags.DEFINE_bool("verbose", False, "Print the full traceback of errors.")

USER_ERRORS = (ConfigError, DataError, ShardingError, CheckpointError, PromptError,
               PermissionError, FloatingPointError)


def run(fn: Callable[[], object]) -> None:
  """Calls `fn`, turning user errors into a one-line message and exit status 2."""
  if not flags.FLAGS.verbose:
    logging.set_verbosity(logging.ERROR)  # Orbax and grain log every file they touch
  # Reuse compiled steps across runs (JAX_COMPILATION_CACHE_DIR, if set, wins).
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(os.path.expanduser("~"), ".cache", "jaxlm", "xla"))
  try:
    fn()
  except USER_ERRORS as e:
    if flags.FLAGS.verbose:
      traceback.print_exc()
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def require_workdir(workdir: str | None) -> str:
  if not workdir:
    raise ConfigError("--workdir is required: the directory for checkpoints, tokenizer and logs")
  return workdir


def config_from_json(config: dict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(config)


def config_to_json(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON types (tuples become lists)."""
  return json.loads(config.to_json())


def ensure_writable(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise PermissionError(f"cannot create workdir {workdir}: {e.strerror}; choose a writable "
                          "--workdir") from None
  if not os.access(workdir, os.W_OK):
    raise PermissionError(f"workdir {workdir} is not writable; choose a writable --workdir")


def emit_json(record: dict) -> None:
  """The last line of stdout: one JSON object, for scripts."""
  print(json.dumps(record), flush=True)
