"""Hugging Face model files: reading a model directory (its JSON files and safetensors weights,
never pickle), and the table type that pairs each jaxlm parameter with its Hugging Face tensor,
with the two loops that turn a state dict into jaxlm parameters and back."""

import dataclasses
import json
import os
from collections.abc import Mapping

import numpy as np
import safetensors

from jaxlm.errors import UserError

WEIGHTS, WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One Hugging Face tensor and the jaxlm parameter (or the part of one) that it holds."""
  path: tuple[str, ...]  # the jaxlm parameter, e.g. ("block_0", "attn", "qkv", "kernel")
  hf_name: str  # the Hugging Face state-dict name
  shape: tuple[int, ...]  # jaxlm's shape (of the part, when `part` is set)
  hf_shape: tuple[int, ...]
  transpose: bool = False  # HF holds the transpose (nn.Linear weights are [out, in])
  # (axis, index): the tensor is `parameter[..., index, ...]` at `axis`; the parts of a parameter
  # (BERT's query, key and value in one qkv kernel) are stacked on that axis.
  part: tuple[int, int] | None = None


def read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except FileNotFoundError:
    raise UserError(f"{path} does not exist; --model must be a Hugging Face model directory "
                      "(config.json, model.safetensors, tokenizer files)") from None
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON ({e.msg}); download it again") from None


def weight_files(model_dir: str) -> list[str]:
  """The safetensors files of a model directory: model.safetensors, or its index's shards."""
  index = os.path.join(model_dir, WEIGHTS_INDEX)
  if os.path.exists(os.path.join(model_dir, WEIGHTS)):
    return [WEIGHTS]
  if os.path.exists(index):
    return sorted(set(read_json(index)["weight_map"].values()))
  raise UserError(f"{model_dir} has no {WEIGHTS}; jaxlm reads safetensors only (never pickled "
                    "pytorch_model.bin): download the model's model.safetensors")


class LazyTensors(Mapping):
  """The tensors of a model directory by name, each read (as float32 numpy) only when asked for,
  so that an import holds one tensor at a time rather than the whole model."""

  def __init__(self, model_dir: str):
    self._where = {}
    for name in weight_files(model_dir):
      path = os.path.join(model_dir, name)
      with safetensors.safe_open(path, framework="flax") as f:
        self._where.update({key: path for key in f.keys()})  # noqa: SIM118

  def __getitem__(self, key: str) -> np.ndarray:
    # numpy's reader (bfloat16 through ml_dtypes) makes one copy out of the file; the flax one
    # made a jax array of it first, about 3 tensors' bytes more at its peak.
    with safetensors.safe_open(self._where[key], framework="numpy") as f:
      return np.asarray(f.get_tensor(key), np.float32)

  def shape(self, key: str) -> tuple[int, ...]:
    with safetensors.safe_open(self._where[key], framework="numpy") as f:
      return tuple(f.get_slice(key).get_shape())

  def __iter__(self):
    return iter(self._where)

  def __len__(self) -> int:
    return len(self._where)


def read_hf_weights(model_dir: str) -> dict[str, np.ndarray]:
  """Every tensor of model.safetensors (or of the shards its index names), as float32 numpy."""
  tensors = LazyTensors(model_dir)
  return {name: tensors[name] for name in tensors}


def params_from_table(tensors: Mapping[str, np.ndarray], table: list[Tensor],
                      place=None, skip: frozenset[str] = frozenset()) -> dict:
  """jaxlm's parameter tree of a state dict whose names are the table's; every tensor but those
  in `skip` must be used, with its shape (one UserError lists every problem).

  Each parameter is assembled as soon as its last part is read and handed to `place(path, value)`
  (default: kept as float32 numpy), so with a lazy `tensors` (LazyTensors) and a `place` that puts
  it on the devices, the host holds about one parameter at a time."""
  names = [t.hf_name for t in table]
  wrong = [f"{t.hf_name} missing (expected {t.hf_shape})" for t in table
           if t.hf_name not in tensors]
  wrong += [f"{t.hf_name} {shape} (expected {t.hf_shape})" for t in table
            if t.hf_name in tensors and (shape := _shape(tensors, t.hf_name)) != t.hf_shape]
  unused = sorted(set(tensors) - set(names) - set(skip))
  if wrong or unused:
    raise UserError("the weights do not match config.json: " + "; ".join(
        wrong + [f"unexpected {name}" for name in unused]))
  remaining = {}  # path -> parts not read yet
  for t in table:
    remaining[t.path] = remaining.get(t.path, 0) + 1
  axes = {t.path: t.part[0] for t in table if t.part}
  parts, params = {}, {}  # parts: path -> {index: value}, stacked once all are read
  for t in table:
    value = tensors[t.hf_name]
    parts.setdefault(t.path, {})[t.part[1] if t.part else None] = (
        (value.T if t.transpose else value).reshape(t.shape))
    del value  # not held through the next read: its part (a view, or a copy) is kept
    remaining[t.path] -= 1
    if remaining[t.path]:
      continue
    values = parts.pop(t.path)
    value = (np.stack([values[i] for i in sorted(values)], axis=axes[t.path])
             if t.path in axes else values[None])
    node = params
    for key in t.path[:-1]:
      node = node.setdefault(key, {})
    node[t.path[-1]] = value if place is None else place(t.path, value)
    del value, values  # placed: the host copy goes before the next tensor is read
  return params


def _shape(tensors: Mapping, name: str) -> tuple[int, ...]:
  if isinstance(tensors, LazyTensors):
    return tensors.shape(name)
  return tuple(tensors[name].shape)


def params_to_table(params: dict, table: list[Tensor]) -> dict[str, np.ndarray]:
  """The state dict (float32, contiguous) of jaxlm parameters, named as the table says."""
  leftover = set(_leaf_paths(params)) - {t.path for t in table}
  if leftover:  # a parameter the table does not know would be silently lost
    raise ValueError(f"parameters without a Hugging Face tensor: {sorted(leftover)}")
  tensors = {}
  for t in table:
    value = params
    for key in t.path:
      value = value[key]
    value = np.asarray(value, np.float32)
    if t.part:
      value = np.take(value, t.part[1], axis=t.part[0])
    # A transposed tensor is 2-D in HF: flatten jaxlm's axes to its [in, out] before transposing.
    value = value.reshape(t.hf_shape[::-1]).T if t.transpose else value.reshape(t.hf_shape)
    tensors[t.hf_name] = np.ascontiguousarray(value)
  return tensors


def _leaf_paths(tree: Mapping, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
  return [path for key, value in tree.items()
          for path in (_leaf_paths(value, (*prefix, key)) if isinstance(value, Mapping)
                       else [(*prefix, key)])]
