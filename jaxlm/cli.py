"""What every `python -m jaxlm.<verb>` shares: config overrides, the workdir, and user-facing errors.

A mistake of the user's (bad data, a mesh that does not fit, a missing checkpoint) ends with one line
on stderr saying what is wrong and how to fix it, and exit status 2; `--verbose` adds the traceback.
"""

import difflib
import json
import os
import sys
import traceback
from typing import Callable

import jax
import ml_collections
from absl import flags, logging

from jaxlm import distributed
from jaxlm.checkpoint import CheckpointError
from jaxlm.config import ConfigError, base_config
from jaxlm.data import DataError
from jaxlm.decode import PromptError
from jaxlm.sharding import ShardingError

flags.DEFINE_bool("verbose", False, "Print the full traceback of errors.")

USER_ERRORS = (ConfigError, DataError, ShardingError, CheckpointError, PromptError,
               PermissionError, FloatingPointError)


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


def run(fn: Callable[[], object], multihost: bool = True) -> None:
  """Calls `fn`, turning user errors into a one-line message and exit status 2.

  With `multihost`, first joins a multi-host job if one is configured or detected (see
  `distributed.py`): that must happen before anything touches a device.
  """
  if not flags.FLAGS.verbose:
    logging.set_verbosity(logging.ERROR)  # Orbax and grain log every file they touch
  # Reuse compiled steps across runs (JAX_COMPILATION_CACHE_DIR, if set, wins).
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(os.path.expanduser("~"), ".cache", "jaxlm", "xla"))
  try:
    if multihost:
      distributed.initialize_from_flags()
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
