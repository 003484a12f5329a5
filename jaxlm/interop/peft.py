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
  if family in ("bert", "t5"):
    raise UserError("--peft exports the adapters of GPT-2 and Llama-family runs; this run is a "
                    f"{family.upper()}: export it merged (without --peft)")


def read_peft_config(settings: dict) -> tuple[int, float]:
  """(r, lora_alpha) of an adapter_config.json jaxlm can import; other features are refused."""
  problems = [f"{key}={settings[key]!r}" for key, plain in
              (("peft_type", "LORA"), ("use_dora", False), ("use_rslora", False),
               ("bias", "none"), ("modules_to_save", None)) if settings.get(key, plain) != plain]
  if settings.get("rank_pattern") or settings.get("alpha_pattern"):
    problems.append("per-module ranks or alphas (rank_pattern / alpha_pattern)")
  if problems:
    raise UserError("this PEFT adapter has features jaxlm's LoRA lacks: " + ", ".join(problems) +
                    "; only plain LoRA adapters (A and B per module, one r and alpha) import")
  return int(settings["r"]), float(settings["lora_alpha"])


def in_dims_of(t: Tensor) -> int:
  """How many leading axes of the jaxlm kernel (part) `t.shape` are its inputs."""
  # nn.Linear weights are [out, in]; GPT-2's Conv1D [in, out].
  features = t.hf_shape[1] if t.transpose else t.hf_shape[0]
  size, dims = 1, 0
  while size < features:
    size *= t.shape[dims]
    dims += 1
  return dims


def adapters_from_peft(tensors: dict[str, np.ndarray], table: list[Tensor],
                       r: int) -> tuple[dict, int, list[str]]:
  """(jaxlm adapters, their rank, adapted module paths) of a PEFT state dict.

  PEFT gives each Hugging Face module its own A; a fused jaxlm kernel (q/k/v, gate/up) takes the
  parts' A side by side (rank r x parts) and their Bs block by block, the same sum of products.
  Every adapter is padded with zeros to the largest such rank (zero columns of A and rows of B add
  nothing)."""
  found = {}  # jaxlm module path -> [(tensor, A [in, r], B [r, out])]
  unused = set(tensors)
  for t in table:
    name = f"{PREFIX}{t.hf_name.removesuffix('.weight')}"
    if t.path[-1] != "kernel" or f"{name}.lora_A.weight" not in tensors:
      continue
    unused -= {f"{name}.lora_A.weight", f"{name}.lora_B.weight"}
    found.setdefault(t.path[:-1], []).append(
        (t, tensors[f"{name}.lora_A.weight"].T, tensors[f"{name}.lora_B.weight"].T))
  if unused or not found:
    raise UserError("the adapter's tensors do not match the base model's modules: " + (
        ", ".join(sorted(unused)[:5]) if unused else "none of them is one of its projections"))
  rank = r * max(len(parts) for parts in found.values())
  adapters = {}
  for path, parts in found.items():
    t0 = parts[0][0]
    dims = in_dims_of(t0)
    in_shape = t0.shape[:dims]
    out_shape = (t0.shape[dims:] if t0.part is None else
                 (*t0.shape[dims:dims + t0.part[0] - 1], _parts(table, t0),
                  *t0.shape[dims + t0.part[0] - 1:]))
    a = np.zeros((int(np.prod(in_shape)), rank), np.float32)
    b = np.zeros((rank, *out_shape), np.float32)
    for j, (t, part_a, part_b) in enumerate(parts):
      a[:, j * r:(j + 1) * r] = part_a
      block = part_b.reshape(r, *t.shape[dims:])
      if t.part is None:
        b[j * r:(j + 1) * r] = block
      else:
        index = [slice(j * r, (j + 1) * r)] + [slice(None)] * (t.part[0] - 1) + [t.part[1]]
        b[tuple(index)] = block
    node = adapters
    for key in path:
      node = node.setdefault(key, {})
    node["lora_a"], node["lora_b"] = a.reshape(*in_shape, rank), b
  return adapters, rank, ["/".join(path) for path in found]


def _parts(table: list[Tensor], t: Tensor) -> int:
  """How many parts the kernel of `t` is stacked from."""
  return sum(1 for other in table if other.path == t.path)
