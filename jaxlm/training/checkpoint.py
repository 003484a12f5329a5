"""Orbax checkpoints of a run: state, config, tokenizer and data position, in `WORKDIR/checkpoints`.

Each step is one directory with four items:
  state      params, optimizer state and step (tensorstore arrays, restored onto any mesh)
  config     the run's full config as JSON (architecture, tokenizer and data settings)
  tokenizer  the trained tokenizer as JSON, so evaluate/sample never retrain it
  data       the training iterator's position (grain iterator state)
Orbax writes into a temporary directory and renames it when complete, so a save that dies half-way
is never taken as the latest step. Nothing here unpickles or executes code.

Failures are `UserError`s with a one-line message: a save that cannot be written (a full disk,
say) names the step and the step a rerun resumes from, and leaves no temporary directory behind; a
step that cannot be read back (truncated or garbled files) is named, with the advice to delete it so
that the previous one is used.
"""

import contextlib
import errno
import glob
import os
import re
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxlm.errors import UserError

ITEMS = ("state", "config", "tokenizer", "data")




def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


class Manager(ocp.CheckpointManager):
  """Orbax's manager, with a failed asynchronous save reported as a `UserError`.

  A background write that fails surfaces in `wait_until_finished`, which `close`, Orbax's own
  `save` and the next `checkpoint.save` all call first, so the error names the step being written.
  """

  pending_step: int | None = None  # the step of the last save started

  def wait_until_finished(self):
    try:
      super().wait_until_finished()
    except UserError:
      raise
    except Exception as e:  # only write errors are converted; others re-raise
      error = _save_error(str(self.directory), self.pending_step, e)
      if error is None:
        raise
      raise error from e


def manager(workdir: str, keep: int | None = None, read_only: bool = False,
            state_handler: ocp.StandardCheckpointHandler | None = None) -> Manager:
  """The run's checkpoint manager (`state_handler`: how the state item is written, by default
  Orbax's)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                         read_only=read_only, cleanup_tmp_directories=not read_only)
  if state_handler is None:
    return Manager(checkpoint_dir(workdir), options=options, item_names=ITEMS)
  handlers = {"state": state_handler, **{item: ocp.JsonCheckpointHandler() for item in ITEMS[1:]}}
  return Manager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def save(mngr: Manager, step: int, state: Any, config: dict, tokenizer: dict,
         data_state: dict) -> None:
  """Starts an asynchronous save; `mngr.wait_until_finished()` blocks until it is on disk.

  Raises UserError if this save cannot be written, or if the previous one failed (Orbax's
  `save` waits for it first, through `Manager.wait_until_finished`, which names its step).
  """
  try:
    mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        config=ocp.args.JsonSave(config),
        tokenizer=ocp.args.JsonSave(tokenizer),
        data=ocp.args.JsonSave(data_state)), force=True)
  except UserError:
    raise
  except Exception as e:  # only write errors are converted; others re-raise
    error = _save_error(str(mngr.directory), step, e)
    if error is None:
      raise
    raise error from e
  mngr.pending_step = step


def write_once(workdir: str, step: int, state: Any, config: dict, tokenizer: dict,
               data_state: dict, keep: int | None = None) -> None:
  """Saves `state` as `step` of `workdir` and waits until it is on disk, with no more bytes being
  written at once than its largest array holds, so the host holds about that array beside the
  state (for a whole model written in one go: an import's step 0).

  Orbax starts every array's write at once by default, and OCDBT holds all their compressed
  chunks in host memory, in data files of up to 2 GiB, until each file is written: nearly a second
  copy of the model. Bounded, each write waits for room, and they reach the disk in smaller data
  files; the format is the same. Periodic training saves keep the default, which overlaps them.
  """
  largest = max((_write_bytes(x) for x in jax.tree.leaves(state)), default=0)
  # Orbax refuses a write at or above its limit, in bytes (given in GB, multiplied back by 1e9).
  handler = ocp.StandardCheckpointHandler(save_concurrent_gb=(largest + 2**20) / 1e9)
  mngr = manager(workdir, keep=keep, state_handler=handler)
  save(mngr, step, state, config, tokenizer, data_state)
  mngr.wait_until_finished()
  mngr.close()


def _write_bytes(x: Any) -> int:
  """The bytes of the largest piece Orbax writes of `x` at once: an array's shard on this host."""
  if isinstance(x, jax.Array):
    return max((shard.data.nbytes for shard in x.addressable_shards), default=0)
  return np.asarray(x).nbytes


def latest_steps(workdir: str) -> list[int]:
  """Steps of the complete checkpoints in the workdir (none if there is no checkpoint directory)."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return []
  with manager(workdir, read_only=True) as mngr:
    return list(mngr.all_steps())


def latest_step(workdir: str) -> int | None:
  return max(latest_steps(workdir), default=None)


def restore_metadata(workdir: str, step: int | None = None) -> tuple[int, dict, dict]:
  """(step, config dict, tokenizer dict) of a checkpoint, without touching any array."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    raise UserError(f"no checkpoint in {checkpoint_dir(workdir)}; train first with "
                          f"`python -m jaxlm.train --workdir={workdir}`")
  with manager(workdir, read_only=True) as mngr:
    step = _resolve_step(mngr, workdir, step)
    with _reading(mngr, step):
      restored = mngr.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore(), tokenizer=ocp.args.JsonRestore()))
      return step, dict(restored["config"]), dict(restored["tokenizer"])


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
  """State placed by `abstract_state`'s shardings (any mesh), and the data iterator state."""
  with _reading(mngr, step):
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["data"])


def restore_params(workdir: str, step: int, abstract_params: Any) -> Any:
  """Only the parameters of a checkpoint's state (no optimizer state is read), placed by the
  shardings in `abstract_params`."""
  with manager(workdir, read_only=True) as mngr:
    step = _resolve_step(mngr, workdir, step)
    target = {"params": abstract_params}
    # The target's dtype: a LoRA run holds its frozen base in train.lora.base_dtype.
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding,
                                                               dtype=x.dtype), target)
    with _reading(mngr, step):
      restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=target, restore_args=restore_args, partial_restore=True)))
  return restored["state"]["params"]


def restore_data_state(mngr: ocp.CheckpointManager, step: int) -> dict:
  """The data iterator state of a checkpoint, alone."""
  with _reading(mngr, step):
    return dict(mngr.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"])


def _state_tree(workdir: str, step: int) -> dict:
  """The tree of a checkpoint's state, from its metadata: no array is loaded."""
  directory = epath.Path(os.path.abspath(os.path.join(checkpoint_dir(workdir), str(step), "state")))
  with manager(workdir, read_only=True) as mngr, _reading(mngr, step):
    return ocp.PyTreeCheckpointHandler().metadata(directory).tree


def holds_optimizer_state(workdir: str, step: int) -> bool:
  """Whether a checkpoint holds a whole training state, or only parameters (the step 0 that
  `convert from-hf` writes: its optimizer state would be zeros, and writing it tripled the
  import's peak memory)."""
  return bool(jax.tree.leaves(_state_tree(workdir, step).get("opt_state")))


def param_paths(workdir: str, step: int) -> set[tuple[str, ...]]:
  """The paths of a checkpoint's parameters (("block_0", "attn", "qkv", "kernel"), ...), read from
  its metadata: no array is loaded."""
  leaves = jax.tree_util.tree_flatten_with_path(_state_tree(workdir, step)["params"])[0]
  return {tuple(str(key.key) for key in path) for path, _ in leaves}


def _resolve_step(mngr: ocp.CheckpointManager, workdir: str, step: int | None) -> int:
  steps = mngr.all_steps()
  if not steps:
    raise UserError(f"no checkpoint in {checkpoint_dir(workdir)}; train first with "
                          f"`python -m jaxlm.train --workdir={workdir}`")
  if step is None:
    return max(steps)
  if step not in steps:
    raise UserError(f"no checkpoint for step {step} in {checkpoint_dir(workdir)}; "
                          f"choose one of the steps there: {sorted(steps)}")
  return step


def _complete_steps(directory: str) -> list[int]:
  """Steps on disk that Orbax finished (a save in progress is still in a `*-tmp` directory)."""
  return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _first_line(e: BaseException, within: str = "", limit: int = 200) -> str:
  """The most specific line of an exception chain (tensorstore's own error sits at its end), with
  paths inside the directory `within` made relative to it."""
  chain = [e]
  while (cause := _cause(chain[-1])) is not None and len(chain) < 10:
    chain.append(cause)
  for error in reversed(chain):
    text = (error.args[0] if isinstance(error, KeyError) and error.args
            and isinstance(error.args[0], str) else str(error))  # str(KeyError) is a repr
    text = re.sub(r' in OCDBT database at local file "[^"]*"|Error opening "\w+" driver: ', "",
                  text.split(" [tensorstore_spec")[0])
    if within:
      text = text.replace(within.rstrip(os.sep) + os.sep, "")
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if line:
      if type(error) not in (Exception, ValueError):
        line = f"{type(error).__name__}: {line}"
      return line if len(line) <= limit else line[:limit - 3] + "..."
  return type(e).__name__


def _os_errno(e: BaseException) -> int | None:
  """The OS error number behind a write failure: an OSError's, or the one in tensorstore's text."""
  while e is not None:
    if isinstance(e, OSError) and e.errno:
      return e.errno
    code = re.search(r"os_error_code='?(\d+)", str(e))
    if code:
      return int(code.group(1))
    if "No space left on device" in str(e):
      return errno.ENOSPC
    e = _cause(e)
  return None


def _cause(e: BaseException) -> BaseException | None:
  """The exception that `e` was raised from or while handling (unless `from None` hid it)."""
  return e.__cause__ or (None if e.__suppress_context__ else e.__context__)


def _save_error(directory: str, step: int | None, e: BaseException) -> UserError | None:
  """A one-line error for a checkpoint write that failed for an OS reason (None for any other
  failure, a bug to be shown with its traceback). The half-written step is removed."""
  code = _os_errno(e)
  if code is None:
    return None
  if jax.process_index() == 0 and step is not None:
    for tmp in glob.glob(os.path.join(glob.escape(directory), f"{step}.orbax-checkpoint-tmp*")):
      shutil.rmtree(tmp, ignore_errors=True)
  steps = _complete_steps(directory) if os.path.isdir(directory) else []
  resume = (f"resume from step {max(steps)}" if steps else
            "start again (there is no complete checkpoint yet)")
  what, fix = "cannot write", f"check the filesystem of {directory}"
  if code in (errno.ENOSPC, errno.EDQUOT):
    what, fix = "disk full", "free space"
  elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
    fix = f"make {directory} writable"
  return UserError(f"{what} while writing checkpoint {step} in {directory}: "
                         f"{os.strerror(code)}; {fix} and rerun to {resume}")


@contextlib.contextmanager
def _reading(mngr: ocp.CheckpointManager, step: int):
  """Turns a failure to read checkpoint `step` into a one-line UserError."""
  try:
    yield
  except (UserError, MemoryError):
    raise
  except Exception as e:  # Orbax and tensorstore raise plain Exception, too
    step_dir = os.path.join(str(mngr.directory), str(step))
    if "tree structures do not match" in str(e):
      fields = re.findall(r"^(\S[^\n]*):$", str(e), re.MULTILINE)[1:]
      raise UserError(
          f"checkpoint {step_dir} holds a train state with other fields than this version of "
          f"jaxlm ({', '.join(fields) or 'structure differs'}); use the jaxlm version that wrote "
          "it, or a new --workdir") from e
    earlier = [s for s in mngr.all_steps() if s < step]
    fallback = (f"to fall back to the previous checkpoint (step {max(earlier)})" if earlier else
                "and train again (there is no earlier checkpoint)")
    raise UserError(f"checkpoint {step_dir} is damaged or incomplete "
                          f"({_first_line(e, within=step_dir)}); "
                          f"delete that directory {fallback}") from e
