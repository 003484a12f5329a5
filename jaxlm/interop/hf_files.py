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


def read_hf_weights(model_dir: str) -> dict[str, np.ndarray]:
  """Every tensor of model.safetensors (or of the shards its index names), as float32 numpy."""
  index = os.path.join(model_dir, WEIGHTS_INDEX)
  if os.path.exists(os.path.join(model_dir, WEIGHTS)):
    files = [WEIGHTS]
  elif os.path.exists(index):
    files = sorted(set(read_json(index)["weight_map"].values()))
  else:
    raise UserError(f"{model_dir} has no {WEIGHTS}; jaxlm reads safetensors only (never pickled "
                      "pytorch_model.bin): download the model's model.safetensors")
  tensors = {}
  for name in files:
    # The flax reader understands bfloat16 and float16 files, which numpy's cannot.
    with safetensors.safe_open(os.path.join(model_dir, name), framework="flax") as f:
      for key in f.keys():  # noqa: SIM118 (a safe_open file is not iterable)
        tensors[key] = np.asarray(f.get_tensor(key), np.float32)
  return tensors


def params_from_table(tensors: dict[str, np.ndarray], table: list[Tensor]) -> dict:
  """jaxlm's parameter tree (float32 numpy) of a state dict whose names are the table's; every
  tensor must be used, with its shape (one UserError lists every problem)."""
  unused = dict(tensors)
  parts, wrong = {}, []  # parts: path -> {index: value}, stacked once all are read
  for t in table:
    value = unused.pop(t.hf_name, None)
    if value is None or tuple(value.shape) != t.hf_shape:
      wrong.append(f"{t.hf_name} {'missing' if value is None else tuple(value.shape)} "
                   f"(expected {t.hf_shape})")
      continue
    value = np.asarray(value, np.float32)
    parts.setdefault(t.path, {})[t.part[1] if t.part else None] = (
        (value.T if t.transpose else value).reshape(t.shape))
  if wrong or unused:
    raise UserError("the weights do not match config.json: " + "; ".join(
        wrong + [f"unexpected {name}" for name in sorted(unused)]))
  axes = {t.path: t.part[0] for t in table if t.part}
  params = {}
  for path, values in parts.items():
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = (np.stack([values[i] for i in sorted(values)], axis=axes[path])
                      if path in axes else values[None])
  return params


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
