"""How a jaxlm model and a Hugging Face GPT-2 (`GPT2LMHeadModel`) describe the same network.

Pure mappings, no I/O (`convert.py` reads and writes the files):
- the architecture: GPT-2's config.json <-> `ModelConfig` fields;
- the parameters: one table (`layout`) pairs each jaxlm parameter with its Hugging Face tensor.

GPT-2 stores its dense layers as Conv1D weights `[in, out]`, which are jaxlm's kernels with the head
axes flattened: `c_attn.weight [D, 3D]` is `qkv/kernel [D, 3, heads, head_dim]` (HF splits the 3D
outputs into q, k, v, each viewed as [heads, head_dim]), and `c_proj.weight [D, D]` is
`out/kernel [heads, head_dim, D]`. Only an untied output head is transposed (nn.Linear is
[out, in]).
"""

import numpy as np

from jaxlm.errors import UserError
from jaxlm.interop.hf_files import Tensor, params_from_table, params_to_table
from jaxlm.models import ModelConfig

# GELU with the tanh approximation, under the names transformers gives it.
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
# Buffers some GPT-2 files carry (the causal mask); they are not parameters.
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def layout(cfg: ModelConfig) -> list[Tensor]:
  """Every parameter of a GPT-2-expressible `cfg`, with its Hugging Face name and shapes."""
  d, heads, head_dim, mlp = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.mlp_dim

  def norm(path, hf):
    return [Tensor((*path, "scale"), f"{hf}.weight", (d,), (d,)),
            Tensor((*path, "bias"), f"{hf}.bias", (d,), (d,))]

  def dense(path, hf, kernel, hf_kernel, bias):
    return [Tensor((*path, "kernel"), f"{hf}.weight", kernel, hf_kernel),
            Tensor((*path, "bias"), f"{hf}.bias", bias, (int(np.prod(bias)),))]

  tensors = [Tensor(("embedding",), "transformer.wte.weight", (cfg.vocab_size, d),
                    (cfg.vocab_size, d)),
             Tensor(("pos_embedding",), "transformer.wpe.weight", (cfg.max_len, d),
                    (cfg.max_len, d))]
  for i in range(cfg.num_layers):
    block, hf = f"block_{i}", f"transformer.h.{i}"
    tensors += norm((block, "ln_attn"), f"{hf}.ln_1")
    tensors += dense((block, "attn", "qkv"), f"{hf}.attn.c_attn", (d, 3, heads, head_dim),
                     (d, 3 * d), (3, heads, head_dim))
    tensors += dense((block, "attn", "out"), f"{hf}.attn.c_proj", (heads, head_dim, d), (d, d),
                     (d,))
    tensors += norm((block, "ln_mlp"), f"{hf}.ln_2")
    tensors += dense((block, "mlp", "wi"), f"{hf}.mlp.c_fc", (d, mlp), (d, mlp), (mlp,))
    tensors += dense((block, "mlp", "wo"), f"{hf}.mlp.c_proj", (mlp, d), (mlp, d), (d,))
  tensors += norm(("ln_final",), "transformer.ln_f")
  if not cfg.tie_embeddings:
    tensors.append(Tensor(("head",), "lm_head.weight", (d, cfg.vocab_size), (cfg.vocab_size, d),
                          transpose=True))
  return tensors


def model_fields(hf_settings: dict) -> dict:
  """`ModelConfig` fields (all but vocab_size, dropout, dtype) of a GPT-2 config.json."""
  problems = []
  if hf_settings.get("model_type") != "gpt2":
    problems.append(f"model_type is {hf_settings.get('model_type')!r}, not 'gpt2'")
  activation = hf_settings.get("activation_function", "gelu_new")
  if activation not in TANH_GELUS:
    problems.append(f"activation_function={activation!r} (jaxlm has GELU-tanh: {TANH_GELUS})")
  for key, supported in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                         ("add_cross_attention", False)):
    if hf_settings.get(key, supported) != supported:
      problems.append(f"{key}={hf_settings[key]!r} (jaxlm supports {supported})")
  if problems:
    raise UserError("this Hugging Face model is not a GPT-2 jaxlm can express: " +
                      "; ".join(problems))
  d_model = hf_settings["n_embd"]
  return {"family": "gpt", "head": "lm", "num_labels": 0, "norm_position": "pre",
          "type_vocab_size": 0, "d_model": d_model, "num_layers": hf_settings["n_layer"],
          "num_heads": hf_settings["n_head"], "mlp_dim": hf_settings.get("n_inner") or 4 * d_model,
          "max_len": hf_settings["n_positions"],
          "positions": "learned", "norm": "layernorm", "mlp": "gelu",
          "tie_embeddings": hf_settings.get("tie_word_embeddings", True), "use_bias": True,
          "norm_eps": hf_settings.get("layer_norm_epsilon", 1e-5)}


def inexpressible(cfg: ModelConfig) -> list[str]:
  """The options of `cfg` that a GPT-2 cannot express (empty when it can be exported)."""
  wanted = {"family": "gpt", "norm_position": "pre", "type_vocab_size": 0, "positions": "learned",
            "norm": "layernorm", "mlp": "gelu", "use_bias": True}
  return [f"model.{key}={getattr(cfg, key)!r} (GPT-2 has {value!r})"
          for key, value in wanted.items() if getattr(cfg, key) != value]


def hf_settings(cfg: ModelConfig, eos_id: int) -> dict:
  """The config.json of the GPT2LMHeadModel equal to `cfg`."""
  return {
      "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
      "vocab_size": cfg.vocab_size, "n_positions": cfg.max_len, "n_embd": cfg.d_model,
      "n_layer": cfg.num_layers, "n_head": cfg.num_heads, "n_inner": cfg.mlp_dim,
      "activation_function": "gelu_new", "layer_norm_epsilon": cfg.norm_eps,
      "tie_word_embeddings": cfg.tie_embeddings,
      # jaxlm drops out embeddings and residual branches, never attention probabilities.
      "embd_pdrop": cfg.dropout, "resid_pdrop": cfg.dropout, "attn_pdrop": 0.0,
      "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
      "reorder_and_upcast_attn": False, "initializer_range": 0.02, "use_cache": True,
      "bos_token_id": eos_id, "eos_token_id": eos_id, "dtype": "float32",
  }


def canonical_name(name: str) -> str:
  """GPT2LMHeadModel's name for a tensor saved by GPT2Model too (no "transformer." prefix)."""
  return name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"


def params_from_hf(tensors: dict[str, np.ndarray], cfg: ModelConfig) -> dict:
  """jaxlm's parameter tree (float32 numpy) from a GPT-2 state dict; every tensor must be used."""
  by_name = {canonical_name(k): v for k, v in tensors.items() if not k.endswith(BUFFER_SUFFIXES)}
  if cfg.tie_embeddings:
    by_name.pop("lm_head.weight", None)  # a copy of wte where it is saved at all
  return params_from_table(by_name, layout(cfg))


def params_to_hf(params: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """The GPT2LMHeadModel state dict (float32, contiguous) of jaxlm parameters."""
  return params_to_table(params, layout(cfg))
