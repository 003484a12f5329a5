"""Orbax checkpoints of a run: state, config, tokenizer and data position, in `WORKDIR/checkpoints`.

Each step is one directory with four items:
  state      params, optimizer state and step (tensorstore arrays, restored onto any mesh)
  config     the run's full config as JSON (architecture, tokenizer and data settings)
  tokenizer  the trained tokenizer as JSON, so evaluate/sample never retrain it
  data       the training iterator's position (grain iterator state)
Orbax writes into a temporary directory and renames it when complete, so a save that dies half-way
is never taken as the latest step. Nothing here unpickles or executes code.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

ITEMS = ("state", "config", "tokenizer", "data")


class CheckpointError(ValueError):
  """A checkpoint directory that cannot be used; the message says why."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def manager(workdir: str, keep: int | None = None, read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                         read_only=read_only, cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=ITEMS)


def save(mngr: ocp.CheckpointManager, step: int, state: Any, config: dict, tokenizer: dict,
         data_state: dict) -> None:
  """Starts an asynchronous save; `mngr.wait_until_finished()` blocks until it is on disk."""
  mngr.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      config=ocp.args.JsonSave(config),
      tokenizer=ocp.args.JsonSave(tokenizer),
      data=ocp.args.JsonSave(data_state)), force=True)


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
    raise CheckpointError(f"no checkpoint in {checkpoint_dir(workdir)}; train first with "
                          f"`python -m jaxlm.train --workdir={workdir}`")
  with manager(workdir, read_only=True) as mngr:
    step = _resolve_step(mngr, workdir, step)
    restored = mngr.restore(step, args=ocp.args.Composite(
        config=ocp.args.JsonRestore(), tokenizer=ocp.args.JsonRestore()))
    return step, dict(restored["config"]), dict(restored["tokenizer"])


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
  """State placed by `abstract_state`'s shardings (any mesh), and the data iterator state."""
  restored = mngr.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
  return restored["state"], dict(restored["data"])


def restore_params(workdir: str, step: int, abstract_params: Any) -> Any:
  """Only the parameters of a checkpoint's state (no optimizer state is read), placed by the
  shardings in `abstract_params`."""
  with manager(workdir, read_only=True) as mngr:
    step = _resolve_step(mngr, workdir, step)
    target = {"params": abstract_params}
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), target)
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True)))
  return restored["state"]["params"]


def _resolve_step(mngr: ocp.CheckpointManager, workdir: str, step: int | None) -> int:
  steps = mngr.all_steps()
  if not steps:
    raise CheckpointError(f"no checkpoint in {checkpoint_dir(workdir)}; train first with "
                          f"`python -m jaxlm.train --workdir={workdir}`")
  if step is None:
    return max(steps)
  if step not in steps:
    raise CheckpointError(f"no checkpoint for step {step} in {checkpoint_dir(workdir)}; "
                          f"available: {sorted(steps)}")
  return step
