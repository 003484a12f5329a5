"""Reading a Hugging Face model directory: its JSON files and safetensors weights (never pickle)."""

import json
import os

import numpy as np
import safetensors

from jaxlm.errors import UserError

WEIGHTS, WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"


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

