"""The device mesh and how arrays are laid out on it.

The mesh has three axes: `data` (batch split, params replicated), `fsdp` (batch split and params
sharded, gathered per layer by XLA) and `tensor` (heads/MLP split inside each layer). Parameters name
their axes logically (see `model.py`); `rules` maps those names to mesh axes.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxlm.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
Rules = Sequence[tuple[str, Any]]




def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
  """Resolves one -1 entry to the devices left over and checks the product."""
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise UserError("at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if any(s == 0 or s < -1 for s in sizes) or num_devices % known:
    raise UserError(f"mesh data={data} fsdp={fsdp} tensor={tensor} does not fit {num_devices} "
                        f"devices; make mesh.data * mesh.fsdp * mesh.tensor = {num_devices}")
  sizes = [num_devices // known if s == -1 else s for s in sizes]
  if int(np.prod(sizes)) != num_devices:
    raise UserError(f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} uses "
                        f"{int(np.prod(sizes))} devices but there are {num_devices}; make "
                        f"mesh.data * mesh.fsdp * mesh.tensor = {num_devices} (or set one to -1)")
  return tuple(sizes)


def split_cpu_host(devices: int) -> None:
  """Makes JAX's CPU backend `devices` devices (0: leave JAX's default); see `mesh.cpu_devices`.

  Only possible before JAX starts its backends. A process that already started them (a notebook,
  a test) keeps its devices, with a warning if their number differs.
  """
  if devices < 0:
    raise UserError(f"mesh.cpu_devices={devices}; set it to the number of CPU devices wanted "
                        "(0 keeps JAX's default)")
  if devices == 0:
    return
  try:
    jax.config.update("jax_num_cpu_devices", devices)
  except RuntimeError:
    have = len(jax.devices("cpu"))
    if have != devices:
      logging.warning("mesh.cpu_devices=%d ignored: JAX already started with %d CPU devices in "
                      "this process", devices, have)


def make_mesh(data: int, fsdp: int, tensor: int,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(data, fsdp, tensor, len(devices))
  # Auto axes: XLA propagates shardings from the annotated params, batch and activations.
  return jax.make_mesh(shape, MESH_AXES, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def batch_parallelism(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch(global_batch: int, grad_accum_steps: int, mesh: Mesh, name: str) -> tuple[str, ...]:
  """Checks that the batch splits into micro-batches and over `mesh.data`; returns the batch axes.

  The batch is split over data x fsdp. Where fsdp does not divide a micro-batch (nanoGPT's batch
  of 12 on fsdp=8, say) it still shards parameters, and the batch is split over `data` alone.
  """
  if global_batch % grad_accum_steps:
    raise UserError(f"{name}={global_batch} is not divisible by train.grad_accum_steps="
                        f"{grad_accum_steps}")
  micro = global_batch // grad_accum_steps
  data = mesh.shape["data"]
  if micro % data:
    raise UserError(f"{name}={global_batch} (micro-batch {micro}) is not divisible by the "
                        f"{data} data-parallel devices (mesh.data); use a multiple of "
                        f"{data * grad_accum_steps}")
  if micro % batch_parallelism(mesh):
    return ("data",)
  return BATCH_AXES


def logical_shardings(abstract_boxed_tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedShardings for a tree whose leaves are `nn.LogicallyPartitioned` (or plain) arrays.

  An axis whose size the mesh axes do not divide (a 65-character vocabulary over tensor=4, say)
  is replicated instead of failing.
  """
  specs = nn.get_partition_spec(abstract_boxed_tree)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, tuple(rules))
  shapes = jax.tree.leaves(nn.unbox(abstract_boxed_tree))
  leaves, treedef = jax.tree.flatten(shardings)
  return jax.tree.unflatten(treedef, [_divisible(s, x.shape) for s, x in zip(leaves, shapes)])


def _divisible(named: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
  def ways(axes):
    axes = axes if isinstance(axes, tuple) else (axes,)
    return int(np.prod([named.mesh.shape[a] for a in axes if a is not None]))
  spec = [axes if axes is None or size % ways(axes) == 0 else None
          for axes, size in zip(tuple(named.spec), shape)]
  return NamedSharding(named.mesh, P(*spec))


def batch_sharding(mesh: Mesh, axes: tuple[str, ...] = BATCH_AXES,
                   leading_dims: int = 0) -> NamedSharding:
  """Sharding of `[*leading, batch, seq]` arrays: the batch axis over `axes`."""
  return NamedSharding(mesh, P(*([None] * leading_dims), axes))


def with_batch_axes(rules: Rules, axes: tuple[str, ...]) -> tuple:
  """The rules with activations' batch axis ("act_batch") mapped to `axes`."""
  return tuple((name, axes if name == "act_batch" else mapped) for name, mapped in rules)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def process_block(sharding: NamedSharding, rows: int, axis: int) -> tuple[int, int]:
  """(block, blocks): this process feeds block `block` of `blocks` equal, contiguous blocks of the
  `rows` rows along `axis` of an array placed by `sharding`.

  Processes whose devices hold the same rows (the batch replicated over an axis that spans hosts:
  fsdp when it does not divide the batch, or tensor) must feed the same rows, so they share a
  block; with the batch split over every process there are as many blocks as processes.
  """
  shape = tuple(rows if d == axis else 1 for d in range(len(sharding.spec) + 1))
  spans: dict[int, set[tuple[int, int]]] = {}
  for device, index in sharding.devices_indices_map(shape).items():
    start, stop, _ = index[axis].indices(rows)
    spans.setdefault(device.process_index, set()).add((start, stop))
  blocks = {process: _contiguous(sorted(s)) for process, s in spans.items()}
  distinct = sorted(set(blocks.values()) - {None})
  size = rows // max(len(distinct), 1)
  if None in blocks.values() or distinct != [(i * size, (i + 1) * size)
                                             for i in range(len(distinct))]:
    raise UserError(f"the batch of {rows} rows does not split into one contiguous block per "
                        f"process over mesh {dict(sharding.mesh.shape)}; give each host whole "
                        "data/fsdp slices (mesh.data a multiple of the host count) or a batch "
                        "that mesh.data * mesh.fsdp divides")
  return distinct.index(blocks[jax.process_index()]), len(distinct)


def _contiguous(spans: list[tuple[int, int]]) -> tuple[int, int] | None:
  """The one range that `spans` (sorted) cover without a gap, or None."""
  start, stop = spans[0]
  for lo, hi in spans[1:]:
    if lo > stop:
      return None
    stop = max(stop, hi)
  return start, stop


@dataclasses.dataclass(frozen=True)
class BatchFeed:
  """How the batches of one kind (training or evaluation) go from the hosts onto the devices.

  Each process reads block `block` of `blocks` of every global batch (its rows, `rows // blocks`
  of them) and `assemble` places them; processes in the same block read the same rows.
  """
  sharding: NamedSharding  # [batch, seq], or [accum, micro_batch, seq] with accum > 0
  rows: int  # global batch, in rows
  accum: int  # micro-batches per batch (training), 0 for a flat [batch, seq] batch
  block: int
  blocks: int

  @classmethod
  def create(cls, mesh: Mesh, axes: tuple[str, ...], rows: int, accum: int = 0) -> "BatchFeed":
    sharding = batch_sharding(mesh, axes, leading_dims=1 if accum else 0)
    block, blocks = process_block(sharding, rows // max(accum, 1), axis=1 if accum else 0)
    return cls(sharding, rows, accum, block, blocks)

  @property
  def local_rows(self) -> int:
    return self.rows // self.blocks

  def assemble(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows, each field [local_rows, seq], as the global batch on the devices."""
    if self.accum:
      local = {k: v.reshape(self.accum, -1, *v.shape[1:]) for k, v in local.items()}
    out = {}
    for name, rows in local.items():
      shape = list(rows.shape)
      shape[1 if self.accum else 0] *= self.blocks
      out[name] = jax.make_array_from_process_local_data(self.sharding, rows, tuple(shape))
    return out


def sharding_table(params: Any) -> str:
  """A readable table `param path -> shape -> partition spec` for the start-up log."""
  lines = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    spec = leaf.sharding.spec if isinstance(leaf.sharding, NamedSharding) else leaf.sharding
    lines.append(f"  {name:<40} {str(tuple(leaf.shape)):<18} {spec}")
  return "\n".join(lines)
