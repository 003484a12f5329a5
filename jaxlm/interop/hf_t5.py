"""How a jaxlm encdec model and a Hugging Face `T5ForConditionalGeneration` (v1.1 / Flan-T5
layout) describe the same network.

Pure mappings, no I/O (`convert.py` reads and writes the files). T5 v1.1 is jaxlm's encdec with
pre-norm RMSNorm (`layer_norm`, `final_layer_norm`), no biases, relative positions (the bias
table sits in block 0 of each stack and serves all its layers), gated-GELU and an untied
`lm_head` (v1.0-style tied heads are read too: the logits are then scaled by d_model**-0.5 in
both). Projections are nn.Linear weights `[out, in]`, the transpose of jaxlm's kernels: the
self-attention q, k, v `[heads*d_kv, D]` are parts 0, 1, 2 of the fused `attn/qkv` kernel
`[D, 3, heads, d_kv]`; the cross-attention (EncDecAttention) q is `cross_attn/q`, its k and v parts
0 and 1 of `cross_attn/kv`; wi_0 (the GELU gate) and wi_1 parts 0 and 1 of `mlp/wi`.
"""

import dataclasses
import math

from jaxlm.errors import UserError
from jaxlm.interop.hf_files import Tensor, params_from_table, params_to_table
from jaxlm.models import ModelConfig

ARCHITECTURE = "T5ForConditionalGeneration"
# Copies of `shared.weight` that some T5 files also hold.
TIED_COPIES = frozenset({"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"})
# Saved by some original T5 checkpoints, unused by the model (transformers ignores it too).
UNUSED = frozenset({"decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"})
# jaxlm's wanted value of every option a T5 fixes.
T5_OPTIONS = {"family": "encdec", "head": "lm", "norm_position": "pre", "type_vocab_size": 0,
              "positions": "relative", "norm": "rmsnorm", "mlp": "geglu", "use_bias": False,
              "qkv_bias": False}


def _linear(path: tuple[str, ...], hf: str, shape: tuple[int, ...], part=None) -> Tensor:
  """An nn.Linear weight `[out, in]` for a jaxlm kernel `[in, *out]` (`[heads, d_kv, D]` for the
  attention's `out`); `shape` is the kernel's, or its part's."""
  if path[-1] == "out":
    hf_shape = (shape[-1], shape[0] * shape[1])
  else:
    hf_shape = (math.prod(shape[1:]), shape[0])
  return Tensor((*path, "kernel"), f"{hf}.weight", shape, hf_shape, transpose=True, part=part)


def _attention(cfg: ModelConfig, jax_prefix: tuple[str, ...], hf: str, cross: bool) -> list:
  d, heads, head_dim = cfg.d_model, cfg.num_heads, cfg.head_dim
  qkv = (d, heads, head_dim)
  if cross:
    tensors = [_linear((*jax_prefix, "q"), f"{hf}.q", qkv)]
    tensors += [_linear((*jax_prefix, "kv"), f"{hf}.{name}", qkv, (1, i))
                for i, name in enumerate("kv")]
  else:
    tensors = [_linear((*jax_prefix, "qkv"), f"{hf}.{name}", qkv, (1, i))
               for i, name in enumerate("qkv")]
  return tensors + [_linear((*jax_prefix, "out"), f"{hf}.o", (heads, head_dim, d))]


def _block(cfg: ModelConfig, stack: str, i: int) -> list[Tensor]:
  """Block i of the encoder or decoder: layer.0 self-attention, (decoder) layer.1 cross-attention,
  then the feed-forward layer."""
  block, hf = (stack, f"block_{i}"), f"{stack}.block.{i}.layer"
  d, mlp = cfg.d_model, cfg.mlp_dim
  sublayers = [("ln_attn", _attention(cfg, (*block, "attn"), f"{hf}.0.SelfAttention", False))]
  if stack == "decoder":
    sublayers.append(("ln_cross", _attention(cfg, (*block, "cross_attn"),
                                             f"{hf}.1.EncDecAttention", True)))
  ff = f"{hf}.{len(sublayers)}.DenseReluDense"
  sublayers.append(("ln_mlp", [_linear((*block, "mlp", "wi"), f"{ff}.wi_0", (d, mlp), (1, 0)),
                               _linear((*block, "mlp", "wi"), f"{ff}.wi_1", (d, mlp), (1, 1)),
                               _linear((*block, "mlp", "wo"), f"{ff}.wo", (mlp, d))]))
  tensors = []
  for index, (norm, weights) in enumerate(sublayers):
    tensors += weights
    tensors.append(Tensor((*block, norm, "scale"), f"{hf}.{index}.layer_norm.weight", (d,), (d,)))
  return tensors


def layout(cfg: ModelConfig) -> list[Tensor]:
  """Every parameter of a T5-expressible `cfg`, with its Hugging Face name and shapes."""
  d = cfg.d_model
  tensors = [Tensor(("embedding",), "shared.weight", (cfg.vocab_size, d), (cfg.vocab_size, d))]
  for stack, layers in (("encoder", cfg.num_layers), ("decoder", cfg.decoder_layers)):
    bias = (cfg.relative_buckets, cfg.num_heads)
    tensors.append(Tensor((stack, "relative_bias"),
                          f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                          bias, bias))
    for i in range(layers):
      tensors += _block(cfg, stack, i)
    tensors.append(Tensor((stack, "ln_final", "scale"), f"{stack}.final_layer_norm.weight", (d,),
                          (d,)))
  if not cfg.tie_embeddings:
    tensors.append(Tensor(("head",), "lm_head.weight", (d, cfg.vocab_size), (cfg.vocab_size, d),
                          transpose=True))
  return tensors


def model_fields(settings: dict) -> dict:
  """`ModelConfig` fields (all but vocab_size, dropout, dtype) of a T5 config.json; features
  jaxlm lacks are named in one error."""
  problems = []
  proj = settings.get("feed_forward_proj", "relu")
  if proj not in ("gated-gelu",):
    problems.append(f"feed_forward_proj={proj!r} (jaxlm has 'gated-gelu', T5 v1.1 / Flan-T5)")
  if settings.get("is_encoder_decoder", True) is False:
    problems.append("is_encoder_decoder=False (jaxlm reads T5ForConditionalGeneration)")
  if problems:
    raise UserError(f"this {ARCHITECTURE} has features jaxlm lacks: " + ", ".join(problems) +
                    "; only T5 v1.1-style models (Flan-T5, gated-gelu) import")
  return {**T5_OPTIONS, "num_labels": 0, "d_model": settings["d_model"],
          "num_layers": settings["num_layers"],
          "num_decoder_layers": settings.get("num_decoder_layers") or settings["num_layers"],
          "num_heads": settings["num_heads"], "num_kv_heads": 0, "head_size": settings["d_kv"],
          "mlp_dim": settings["d_ff"],
          # T5 has no position table: n_positions (512) only bounds jaxlm's KV cache and buckets.
          "max_len": settings.get("n_positions") or 512,
          "relative_buckets": settings.get("relative_attention_num_buckets", 32),
          "relative_max_distance": settings.get("relative_attention_max_distance", 128),
          # transformers < 5 wrote T5 v1.1 as tie_word_embeddings=False (an lm_head of its own,
          # no output scaling); transformers 5 writes scale_decoder_outputs instead.
          "tie_embeddings": bool(settings.get("scale_decoder_outputs",
                                              settings.get("tie_word_embeddings", True))),
          "norm_eps": settings.get("layer_norm_epsilon", 1e-6)}


def inexpressible(cfg: ModelConfig) -> list[str]:
  """The options of `cfg` that a T5 cannot express (empty when it can be exported)."""
  problems = [f"model.{key}={getattr(cfg, key)!r} (T5 has {value!r})"
              for key, value in T5_OPTIONS.items() if getattr(cfg, key) != value]
  if cfg.kv_heads != cfg.num_heads:
    problems.append(f"model.num_kv_heads={cfg.num_kv_heads} (T5 has one kv head per head)")
  if cfg.separate_vocab:
    problems.append("data.separate_vocab=True (T5 has one vocabulary: its shared embedding "
                    "serves the encoder, the decoder and the head)")
  return problems


def hf_settings(cfg: ModelConfig, eos_id: int, pad_id: int = 0) -> dict:
  """The config.json of the T5ForConditionalGeneration equal to `cfg`."""
  return {
      "architectures": [ARCHITECTURE], "model_type": "t5", "vocab_size": cfg.vocab_size,
      "d_model": cfg.d_model, "d_kv": cfg.head_dim, "d_ff": cfg.mlp_dim,
      "num_layers": cfg.num_layers, "num_decoder_layers": cfg.decoder_layers,
      "num_heads": cfg.num_heads, "relative_attention_num_buckets": cfg.relative_buckets,
      "relative_attention_max_distance": cfg.relative_max_distance, "dropout_rate": cfg.dropout,
      "layer_norm_epsilon": cfg.norm_eps, "initializer_factor": 1.0,
      "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": True,
      "is_encoder_decoder": True, "tie_word_embeddings": cfg.tie_embeddings, "use_cache": True,
      "n_positions": cfg.max_len, "pad_token_id": pad_id, "eos_token_id": eos_id,
      "decoder_start_token_id": pad_id, "dtype": "float32",
  }


def params_from_hf(tensors, cfg: ModelConfig, place=None) -> dict:
  """jaxlm's parameter tree from a T5 state dict (a dict or hf_files.LazyTensors), each parameter
  handed to `place` (see hf_files.params_from_table).

  An unscaled head without `lm_head.weight` (transformers 5 ties T5's lm_head to `shared` and
  saves it once) becomes an untied `head` holding a copy of the embedding: the same logits."""
  skip = TIED_COPIES | UNUSED | ({"lm_head.weight"} if cfg.tie_embeddings else frozenset())
  table = layout(cfg)
  if not cfg.tie_embeddings and "lm_head.weight" not in tensors:
    table = [dataclasses.replace(t, hf_name="shared.weight") if t.path == ("head",) else t
             for t in table]
  return params_from_table(tensors, table, place, skip)


def params_to_hf(params: dict, cfg: ModelConfig) -> dict:
  return params_to_table(params, layout(cfg))
