"""How a jaxlm GPT and a Hugging Face Llama-family decoder (`LlamaForCausalLM`,
`Qwen2ForCausalLM`) describe the same network.

Pure mappings, no I/O (`convert.py` reads and writes the files). These models are jaxlm's GPT with
RoPE (rotate-half, `rope_theta`, optional Llama 3 scaling), RMSNorm, SwiGLU, no biases (Qwen2: on
q/k/v only) and grouped-query attention. Their projections are nn.Linear weights `[out, in]`, the
transpose of jaxlm's kernels: q_proj `[heads*head_dim, D]` is the `q` kernel `[D, heads, head_dim]`
(or part 0 of the fused `qkv` kernel `[D, 3, heads, head_dim]` when kv heads = heads); k_proj and
v_proj are parts 0 and 1 of the `kv` kernel `[D, 2, kv_heads, head_dim]`; gate_proj and up_proj
parts 0 and 1 of the SwiGLU `wi` kernel `[D, 2, mlp]`.
"""

from jaxlm.errors import UserError
from jaxlm.interop.hf_files import Tensor, params_from_table, params_to_table
from jaxlm.models import ModelConfig

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
# Features of these configs that jaxlm does not have, with the value it supports.
UNSUPPORTED = {"attention_bias": False, "mlp_bias": False, "use_sliding_window": False,
               "pretraining_tp": 1, "hidden_act": "silu"}
ROPE_KEYS = ("rope_type", "type", "factor", "low_freq_factor", "high_freq_factor",
             "original_max_position_embeddings", "rope_theta")


def projection_parts(cfg: ModelConfig) -> list[tuple[str, tuple[str, ...], tuple[int, int] | None,
                                                    int]]:
  """(HF name, jaxlm module path, part on the kernel's output axis 1, heads) for q, k and v."""
  if cfg.fused_qkv:
    return [(name, ("attn", "qkv"), (1, i), cfg.num_heads)
            for i, name in enumerate(("q_proj", "k_proj", "v_proj"))]
  return [("q_proj", ("attn", "q"), None, cfg.num_heads),
          ("k_proj", ("attn", "kv"), (1, 0), cfg.kv_heads),
          ("v_proj", ("attn", "kv"), (1, 1), cfg.kv_heads)]


def layout(cfg: ModelConfig) -> list[Tensor]:
  """Every parameter of a Llama-expressible `cfg`, with its Hugging Face name and shapes."""
  d, head_dim, mlp = cfg.d_model, cfg.head_dim, cfg.mlp_dim
  tensors = [Tensor(("embedding",), "model.embed_tokens.weight", (cfg.vocab_size, d),
                    (cfg.vocab_size, d))]
  for i in range(cfg.num_layers):
    block, hf = f"block_{i}", f"model.layers.{i}"
    for name, path, part, heads in projection_parts(cfg):
      tensors.append(Tensor((block, *path, "kernel"), f"{hf}.self_attn.{name}.weight",
                            (d, heads, head_dim), (heads * head_dim, d), transpose=True,
                            part=part))
      if cfg.qkv_bias:
        tensors.append(Tensor((block, *path, "bias"), f"{hf}.self_attn.{name}.bias",
                              (heads, head_dim), (heads * head_dim,),
                              part=(0, part[1]) if part else None))
    tensors += [
        Tensor((block, "attn", "out", "kernel"), f"{hf}.self_attn.o_proj.weight",
               (cfg.num_heads, head_dim, d), (d, cfg.num_heads * head_dim), transpose=True),
        Tensor((block, "mlp", "wi", "kernel"), f"{hf}.mlp.gate_proj.weight", (d, mlp), (mlp, d),
               transpose=True, part=(1, 0)),
        Tensor((block, "mlp", "wi", "kernel"), f"{hf}.mlp.up_proj.weight", (d, mlp), (mlp, d),
               transpose=True, part=(1, 1)),
        Tensor((block, "mlp", "wo", "kernel"), f"{hf}.mlp.down_proj.weight", (mlp, d), (d, mlp),
               transpose=True),
        Tensor((block, "ln_attn", "scale"), f"{hf}.input_layernorm.weight", (d,), (d,)),
        Tensor((block, "ln_mlp", "scale"), f"{hf}.post_attention_layernorm.weight", (d,), (d,))]
  tensors.append(Tensor(("ln_final", "scale"), "model.norm.weight", (d,), (d,)))
  if not cfg.tie_embeddings:
    tensors.append(Tensor(("head",), "lm_head.weight", (d, cfg.vocab_size), (cfg.vocab_size, d),
                          transpose=True))
  return tensors


def rope_fields(settings: dict, problems: list[str]) -> dict:
  """model.rope_* of config.json's rope_theta and rope_scaling (or transformers 5's
  rope_parameters)."""
  scaling = dict(settings.get("rope_scaling") or settings.get("rope_parameters") or {})
  theta = scaling.get("rope_theta", settings.get("rope_theta", 10000.0))
  kind = scaling.get("rope_type", scaling.get("type", "default"))
  fields = {"rope_theta": float(theta), "rope_scaling": "none"}
  if kind == "llama3":
    fields.update(rope_scaling="llama3", rope_factor=float(scaling["factor"]),
                  rope_low_freq_factor=float(scaling["low_freq_factor"]),
                  rope_high_freq_factor=float(scaling["high_freq_factor"]),
                  rope_original_max_len=int(scaling["original_max_position_embeddings"]))
  elif kind != "default":
    problems.append(f"rope_scaling type {kind!r} (jaxlm has llama3 scaling or none)")
  return fields


def model_fields(settings: dict) -> dict:
  """`ModelConfig` fields (all but vocab_size, dropout, dtype) of a Llama or Qwen2 config.json;
  features jaxlm lacks are named in one error."""
  model_type = settings.get("model_type")
  problems = [f"{key}={settings[key]!r} (jaxlm supports {value!r})"
              for key, value in UNSUPPORTED.items() if settings.get(key, value) != value]
  heads, d = settings["num_attention_heads"], settings["hidden_size"]
  if settings.get("head_dim") not in (None, d // heads):
    problems.append(f"head_dim={settings['head_dim']} (jaxlm has hidden_size / heads = "
                    f"{d // heads})")
  rope = rope_fields(settings, problems)
  if problems:
    raise UserError(f"this {ARCHITECTURES[model_type]} has features jaxlm lacks: " +
                    "; ".join(problems))
  return {"family": "gpt", "head": "lm", "num_labels": 0, "norm_position": "pre",
          "type_vocab_size": 0, "d_model": d, "num_layers": settings["num_hidden_layers"],
          "num_heads": heads, "num_kv_heads": settings.get("num_key_value_heads") or heads,
          "qkv_bias": model_type == "qwen2", "mlp_dim": settings["intermediate_size"],
          "max_len": settings["max_position_embeddings"], "positions": "rope",
          "norm": "rmsnorm", "mlp": "swiglu",
          "tie_embeddings": bool(settings.get("tie_word_embeddings", False)), "use_bias": False,
          "norm_eps": settings.get("rms_norm_eps", 1e-6), **rope}


def inexpressible(cfg: ModelConfig) -> list[str]:
  """The options of `cfg` that a Llama / Qwen2 cannot express (empty when it can be exported)."""
  wanted = {"family": "gpt", "norm_position": "pre", "type_vocab_size": 0, "positions": "rope",
            "norm": "rmsnorm", "mlp": "swiglu", "use_bias": False}
  return [f"model.{key}={getattr(cfg, key)!r} (Llama has {value!r})"
          for key, value in wanted.items() if getattr(cfg, key) != value]


def hf_settings(cfg: ModelConfig, eos_id: int, bos_id: int | None = None) -> dict:
  """The config.json of the Llama (Qwen2 when q/k/v have biases) equal to `cfg`."""
  model_type = "qwen2" if cfg.qkv_bias else "llama"
  rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
  if cfg.rope_scaling == "llama3":
    rope = {"rope_type": "llama3", "rope_theta": cfg.rope_theta, "factor": cfg.rope_factor,
            "low_freq_factor": cfg.rope_low_freq_factor,
            "high_freq_factor": cfg.rope_high_freq_factor,
            "original_max_position_embeddings": cfg.rope_original_max_len}
  settings = {
      "architectures": [ARCHITECTURES[model_type]], "model_type": model_type,
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
      "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.kv_heads,
      "head_dim": cfg.head_dim, "hidden_act": "silu", "max_position_embeddings": cfg.max_len,
      "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
      "rope_scaling": rope if cfg.rope_scaling != "none" else None,
      "tie_word_embeddings": cfg.tie_embeddings, "attention_dropout": 0.0,
      "initializer_range": 0.02, "use_cache": True, "eos_token_id": eos_id,
      "bos_token_id": eos_id if bos_id is None else bos_id, "dtype": "float32",
  }
  if model_type == "llama":
    settings.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
  else:
    settings.update(use_sliding_window=False, sliding_window=None, max_window_layers=0)
  return settings


def params_from_hf(tensors, cfg: ModelConfig, place=None) -> dict:
  """jaxlm's parameter tree from a Llama / Qwen2 state dict (a dict or hf_files.LazyTensors),
  each parameter handed to `place` (see hf_files.params_from_table)."""
  # A tied lm_head, where it is saved at all, is a copy of embed_tokens.
  skip = frozenset({"lm_head.weight"} if cfg.tie_embeddings else ())
  return params_from_table(tensors, layout(cfg), place, skip)


def params_to_hf(params: dict, cfg: ModelConfig) -> dict:
  return params_to_table(params, layout(cfg))
