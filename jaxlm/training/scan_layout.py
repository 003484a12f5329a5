"""A run's parameters in either layer layout: `model.scan_layers` is chosen at run time.

Unscanned, a stack of layers sits under `block_0` ... `block_{L-1}`; scanned, under one `blocks`
whose leaves stack the layers on a leading axis (`models.layers.stack_layers`). A GPT or BERT has
one stack at the top of its parameters, an encoder-decoder one under `encoder` and one under
`decoder`: every dict level holding such keys is converted. A checkpoint holds the layout its run
trained in. A run that uses the other one (a finetune's init_from, a LoRA run's base and adapters,
a trained run loaded by evaluate, sample, serve or convert) restores the checkpoint in its own
layout, then converts on the devices one parameter at a time, each placed by the run's shardings:
the peak is the model plus one stacked parameter, not two models.
"""

import re
import sys
from collections.abc import Callable, Iterable, Mapping

import jax
from jax.sharding import NamedSharding, PartitionSpec

from jaxlm.models.layers import stack_layers, unstack_layers
from jaxlm.training import checkpoint

BLOCK = re.compile(r"block_\d+")
Path = tuple[str, ...]


def flat(tree) -> list[tuple[Path, object]]:
  """(path of keys, leaf) of every leaf of a nested dict."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [(tuple(str(key.key) for key in path), leaf) for path, leaf in leaves]


def get(tree, path: Path):
  for key in path:
    tree = tree[key]
  return tree


def put(tree: dict, path: Path, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def is_scanned(paths: Iterable[Path]) -> bool | None:
  """Whether parameter paths are in the scanned layout (None: they hold no layer)."""
  for path in paths:
    if "blocks" in path:
      return True
    if any(BLOCK.fullmatch(key) for key in path):
      return False
  return None


def tree_is_scanned(tree) -> bool | None:
  return is_scanned(path for path, _ in flat(tree))


def canonical(path: Path) -> Path:
  """`path` without its layer index: the same parameter's path in either layout."""
  return tuple("blocks" if BLOCK.fullmatch(key) else key for key in path)


def _layer_keys(level: Mapping) -> list[str]:
  """The `block_i` keys of a dict level, in layer order."""
  return sorted((key for key in level if BLOCK.fullmatch(key)), key=lambda key: int(key[6:]))


def _length(blocks) -> int:
  """The layer count of a `blocks` subtree: its leaves' leading axis."""
  return jax.tree.leaves(blocks)[0].shape[0]


def _walk(tree, scanned: bool, stack: Callable, unstack: Callable, path: Path = ()):
  """`tree` with every dict level that holds layers in the `scanned` layout: `stack(layers,
  path)` makes a level's `blocks` of its `{block_i: subtree}`, `unstack(blocks, path)` the
  `{block_i: subtree}` of its `blocks`; `path` is the level's."""
  if not isinstance(tree, Mapping):
    return tree
  layers = _layer_keys(tree)
  if scanned and layers:
    rest = {key: value for key, value in tree.items() if key not in layers}
    converted = {"blocks": stack({key: tree[key] for key in layers}, path)}
  elif not scanned and "blocks" in tree:
    rest = {key: value for key, value in tree.items() if key != "blocks"}
    converted = unstack(tree["blocks"], path)
  else:
    rest, converted = tree, {}
  return {**{key: _walk(value, scanned, stack, unstack, (*path, key))
             for key, value in rest.items()}, **converted}


def in_layout(tree, scanned: bool):
  """`tree` in the `scanned` layout, by stack_layers / unstack_layers: on the host, or traced."""
  return _walk(tree, scanned, lambda layers, _: stack_layers(layers, len(layers))["blocks"],
               lambda blocks, _: unstack_layers({"blocks": blocks}, _length(blocks)))


def _respec(sharding, change: Callable[[tuple], tuple]):
  """A NamedSharding with its PartitionSpec changed (other shardings fit any shape as they are)."""
  if isinstance(sharding, NamedSharding):
    return NamedSharding(sharding.mesh, PartitionSpec(*change(tuple(sharding.spec))))
  return sharding


def abstract_in(abstract, scanned: bool | None):
  """ShapeDtypeStructs (with shardings) of the same parameters in the `scanned` layout (None:
  `abstract` as it is): a stack leaves its layer axis unsharded, a layer is sharded as the stack's
  other axes."""
  if scanned is None:
    return abstract

  def stack(layers, _):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        (len(layers), *x.shape), x.dtype, sharding=_respec(x.sharding, lambda s: (None, *s))),
        next(iter(layers.values())))

  def unstack(blocks, _):
    layer = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape[1:], x.dtype, sharding=_respec(x.sharding, lambda s: s[1:])), blocks)
    return {f"block_{i}": layer for i in range(_length(blocks))}
  return _walk(abstract, scanned, stack, unstack)


def convert(params, target, free: bool = False):
  """`params` (device arrays) in the layout of `target` (ShapeDtypeStructs with shardings that
  hold every path of `params` in that layout), converted one parameter at a time by a jitted
  stack_layers / unstack_layers placed by `target`'s shardings. `free`: delete each source array
  once converted (the caller's arrays are then gone), so that the peak is the model plus one
  stacked parameter."""
  scanned = tree_is_scanned(target)
  if scanned is None or tree_is_scanned(params) in (None, scanned):
    return params

  def release(arrays) -> None:
    for x in arrays if free else ():
      if isinstance(x, jax.Array):
        x.delete()

  def stack(layers, path):
    out, n = {}, len(layers)
    for leaf_path, _ in flat(layers["block_0"]):
      column = {key: get(layer, leaf_path) for key, layer in layers.items()}
      sharding = get(target, (*path, "blocks", *leaf_path)).sharding
      put(out, leaf_path, jax.jit(lambda c: stack_layers(c, n)["blocks"],
                                  out_shardings=sharding)(column))
      release(column.values())
    return out

  def unstack(blocks, path):
    out, n = {}, _length(blocks)
    for leaf_path, x in flat(blocks):
      shardings = {f"block_{i}": get(target, (*path, f"block_{i}", *leaf_path)).sharding
                   for i in range(n)}
      layers = jax.jit(lambda y: unstack_layers({"blocks": y}, n), out_shardings=shardings)(x)
      for key, layer in layers.items():
        put(out, (key, *leaf_path), layer)
      release([x])
    return out
  return _walk(params, scanned, stack, unstack)


def describe(params, scanned: bool) -> str:
  """What converting `params` (as restored) to the `scanned` layout does, for the log:
  "restored block_0..block_31 as scanned blocks" (an encoder-decoder: each stack named)."""
  def stacks(tree, path: Path = ()) -> list[str]:
    if not isinstance(tree, Mapping):
      return []
    n = _length(tree["blocks"]) if "blocks" in tree else len(_layer_keys(tree))
    if n:
      return ["".join(f"{key}/" for key in path) + f"block_0..block_{n - 1}"]
    return [name for key, value in tree.items() for name in stacks(value, (*path, key))]
  names = ", ".join(stacks(params))
  return (f"restored {names} as scanned blocks" if scanned else
          f"restored scanned blocks as {names}")


def stderr_log(text: str) -> None:
  """The verbs' log (stdout carries their results), from the first process only."""
  if jax.process_index() == 0:
    print(text, file=sys.stderr, flush=True)


def restore_params(workdir: str, step: int, abstract_params,
                   log: Callable[[str], None] = stderr_log):
  """`checkpoint.restore_params` into `abstract_params`' layout whichever layout the checkpoint
  holds: read in its own, then converted on the devices (and `log`ged)."""
  saved = is_scanned(checkpoint.param_paths(workdir, step))
  wanted = tree_is_scanned(abstract_params)
  if saved is None or wanted is None or saved == wanted:
    return checkpoint.restore_params(workdir, step, abstract_params)
  params = checkpoint.restore_params(workdir, step, abstract_in(abstract_params, saved))
  log(f"{workdir} step {step}: {describe(params, wanted)}")
  return convert(params, abstract_params, free=True)
