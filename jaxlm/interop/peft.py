"""LoRA adapters as Hugging Face PEFT files: `adapter_model.safetensors` + `adapter_config.json`,
which `peft.PeftModel.from_pretrained(base, DIR)` loads onto the exported base model.

The modules follow the family's kernel table (`layout`): every Hugging Face weight that holds an
adapted jaxlm kernel (or a part of it) becomes a PEFT module, `lora_A.weight  # [rank, in]` and
`lora_B.weight  # [out, rank]`, with PEFT's scale lora_alpha / r equal to jaxlm's alpha / rank. A
jaxlm adapter on a fused kernel (Llama's q/k/v in one `qkv`, gate/up in one `wi`) shares its A
among the parts, so each part's module gets that A and its slice of B: the same product.
"""

import numpy as np

from jaxlm.errors import UserError
from jaxlm.interop.hf_files import Tensor
from jaxlm.models.lora import LoraConfig

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"
PREFIX = "base_model.model."  # PEFT's name for the wrapped model in its state dict


def adapted_tensors(table: list[Tensor], adapters: dict) -> list[Tensor]:
  """The kernel tensors of `table` whose jaxlm module has an adapter."""
  def has(path):
    node = adapters
    for key in path[:-1]:
      node = node.get(key, {})
    return "lora_a" in node
  return [t for t in table if t.path[-1] == "kernel" and has(t.path)]


def adapters_to_peft(adapters: dict, table: list[Tensor]) -> tuple[dict[str, np.ndarray],
                                                                     list[str]]:
  """(PEFT state dict, target module names) of jaxlm adapters (float32 numpy), by `table`."""
  tensors, modules = {}, []
  for t in adapted_tensors(table, adapters):
    node = adapters
    for key in t.path[:-1]:
      node = node[key]
    a, b = np.asarray(node["lora_a"], np.float32), np.asarray(node["lora_b"], np.float32)
    rank = a.shape[-1]
    if t.part:  # the kernel's output axis t.part[0] is B's axis t.part[0] - in_dims + 1 = 1
      b = np.take(b, t.part[1], axis=1)
    module = t.hf_name.removesuffix(".weight")
    tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, rank).T)
    tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b.reshape(rank, -1).T)
    modules.append(module)
  return tensors, modules


def peft_config(lora: LoraConfig, modules: list[str], conv1d: bool, base: str) -> dict:
  """adapter_config.json; `conv1d`: the base stores [in, out] weights (GPT-2's Conv1D)."""
  return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.rank,
          "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "target_modules": modules,
          "fan_in_fan_out": conv1d, "bias": "none", "use_rslora": False, "use_dora": False,
          "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
          "base_model_name_or_path": base}


def check_exportable(family: str) -> None:
  if family == "bert":
    raise UserError("--peft exports the adapters of GPT-2 and Llama-family runs; this run is a "
                    "BERT: export it merged (without --peft)")
