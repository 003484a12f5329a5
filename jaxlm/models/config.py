"""The architecture options of every model family, read from `config.model` (jaxlm/config.py)."""

from typing import Any

import jax
import jax.numpy as jnp

from jaxlm.config import section_dataclass
from jaxlm.errors import UserError

# model.remat -> what the backward pass may keep from the forward (None: keep nothing: recompute).
REMAT_POLICIES = {"none": None, "full": None,
                  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
FAMILY_NAMES = ("gpt", "bert", "encdec")
LABEL_HEADS = ("classify", "tag")


@section_dataclass("model")
class ModelConfig:
  """The architecture: see `jaxlm/config.py` (model.*) for each field's meaning and default;
  `vocab_size` is the tokenizer's (an encdec's source one), `target_vocab_size` a separate target
  tokenizer's (data.separate_vocab; 0: the vocabulary is shared)."""
  vocab_size: int
  family: str
  head: str
  num_labels: int
  norm_position: str
  type_vocab_size: int
  d_model: int
  num_layers: int
  num_decoder_layers: int
  num_heads: int
  head_size: int
  num_kv_heads: int
  qkv_bias: bool
  mlp_dim: int
  max_len: int
  dropout: float
  positions: str
  relative_buckets: int
  relative_max_distance: int
  rope_theta: float
  rope_scaling: str
  rope_factor: float
  rope_low_freq_factor: float
  rope_high_freq_factor: float
  rope_original_max_len: int
  norm: str
  mlp: str
  tie_embeddings: bool
  use_bias: bool
  norm_eps: float
  dtype: str
  remat: str
  scan_layers: bool
  attention_impl: str
  # LoRA adapters (models/lora.py), from train.lora; None: none.
  lora: Any = None
  target_vocab_size: int = 0

  def __post_init__(self):
    if self.d_model % self.num_heads and not self.head_size:
      raise UserError(f"model.d_model={self.d_model} is not divisible by model.num_heads="
                       f"{self.num_heads}; choose a head count that divides it")
    for field, allowed in (("family", FAMILY_NAMES), ("head", ("lm", *LABEL_HEADS)),
                           ("norm_position", ("pre", "post")),
                           ("positions", ("learned", "rope", "relative", "sinusoidal")),
                           ("rope_scaling", ("none", "llama3")), ("norm", ("layernorm", "rmsnorm")),
                           ("mlp", ("gelu", "gelu_exact", "swiglu", "geglu")),
                           ("dtype", ("float32", "bfloat16")),
                           ("remat", tuple(REMAT_POLICIES)),
                           ("attention_impl", ("auto", "xla", "cudnn"))):
      if getattr(self, field) not in allowed:
        raise UserError(f"model.{field}={getattr(self, field)!r} is not one of {allowed}")
    self._check_heads()
    self._check_family()
    self._check_encdec()

  def _check_heads(self):
    if self.num_kv_heads < 0 or self.num_heads % self.kv_heads:
      raise UserError(f"model.num_kv_heads={self.num_kv_heads} does not divide model.num_heads="
                      f"{self.num_heads}; use a divisor of it (0 = num_heads)")

  def _check_family(self):
    if self.type_vocab_size < 0:
      raise UserError(f"model.type_vocab_size={self.type_vocab_size} is negative; use 0 (no "
                       "token types) or the number of segment types (2 for BERT)")
    if self.head in LABEL_HEADS and self.family != "bert":
      raise UserError(f"model.head={self.head!r} needs model.family='bert' ({self.family} "
                       "models predict tokens only); set model.family=bert or model.head=lm")
    if self.head in LABEL_HEADS and self.num_labels < 1:
      raise UserError(f"model.head={self.head!r} needs model.num_labels >= 1 (it is "
                       f"{self.num_labels}); give data.labels or set model.num_labels")
    if self.family == "bert" and not self.tie_embeddings:
      raise UserError("model.family='bert' needs model.tie_embeddings=True (its masked-LM "
                       "decoder is the embedding matrix); set model.tie_embeddings=true")

  def _check_encdec(self):
    """Options of the encoder-decoder alone, and the decoder-only / encoder-only ones it lacks."""
    if self.family != "encdec":
      for field, off in (("num_decoder_layers", 0), ("head_size", 0)):
        if getattr(self, field) != off:
          raise UserError(f"model.{field}={getattr(self, field)} is an encoder-decoder option; "
                          f"set model.family=encdec or model.{field}={off}")
      if self.positions in ("relative", "sinusoidal"):
        raise UserError(f"model.positions={self.positions!r} needs model.family='encdec'; use "
                        "'learned' or 'rope' for a gpt or bert model")
      return
    if self.target_vocab_size < 0:
      raise UserError(f"a target vocabulary of {self.target_vocab_size} ids is negative; give "
                      "data.target_vocab_size >= 0 (0 = data.vocab_size)")
    if self.type_vocab_size:
      raise UserError(f"model.type_vocab_size={self.type_vocab_size} is a BERT option (sentence "
                      "A / B types); an encdec model has none, set model.type_vocab_size=0")
    if self.num_decoder_layers < 0 or self.head_size < 0:
      raise UserError(f"model.num_decoder_layers={self.num_decoder_layers} and model.head_size="
                      f"{self.head_size} must be >= 0; use 0 for num_layers and d_model // "
                      "num_heads")
    buckets, distance = self.relative_buckets, self.relative_max_distance
    if self.positions == "relative" and (buckets < 4 or buckets % 2 or distance <= buckets // 2):
      raise UserError(f"model.relative_buckets={buckets} must be even and >= 4, and "
                      f"model.relative_max_distance={distance} > relative_buckets / 2; T5 has 32 "
                      "and 128")

  @property
  def head_dim(self) -> int:
    return self.head_size or self.d_model // self.num_heads

  @property
  def decoder_layers(self) -> int:
    """Layers of an encdec model's decoder (num_decoder_layers, or num_layers when it is 0)."""
    return self.num_decoder_layers or self.num_layers

  @property
  def attention_scale(self) -> float | None:
    """What attention scores are multiplied by: None = the usual 1/sqrt(head_dim); 1 with T5's
    relative positions (T5 folds the scale into the query projection's initialisation)."""
    return 1.0 if self.positions == "relative" else None

  @property
  def kv_heads(self) -> int:
    """Key/value heads (num_kv_heads, or num_heads when it is 0)."""
    return self.num_kv_heads or self.num_heads

  @property
  def fused_qkv(self) -> bool:
    """One `qkv` projection (multi-head attention) rather than `q` + `kv` (grouped-query)."""
    return self.kv_heads == self.num_heads

  @property
  def compute_dtype(self) -> Any:
    return jnp.dtype(self.dtype)

  @property
  def causal(self) -> bool:
    """Whether a position attends only to earlier ones (a decoder) or to its whole document."""
    return self.family == "gpt"

  @property
  def separate_vocab(self) -> bool:
    """Whether an encdec's decoder and head have a vocabulary of their own (data.separate_vocab)."""
    return self.target_vocab_size > 0

  @property
  def target_vocab(self) -> int:
    """Ids the decoder reads and the head predicts: the target vocabulary, or the shared one."""
    return self.target_vocab_size or self.vocab_size

  @property
  def output_size(self) -> int:
    """Width of the logits: the (target) vocabulary, or the labels of a classify / tag head."""
    return self.num_labels if self.head in LABEL_HEADS else self.target_vocab
