"""How a jaxlm BERT and a Hugging Face BERT (`BertForMaskedLM`, `BertForSequenceClassification`,
`BertForTokenClassification`) describe the same network.

Pure mappings, no I/O (`convert.py` reads and writes the files):
- the architecture: BERT's config.json <-> `ModelConfig` fields and the label names;
- the parameters: one table (`layout`) pairs each jaxlm parameter with its Hugging Face tensor.

BERT's dense layers are nn.Linear weights `[out, in]`, the transpose of jaxlm's kernels. Its query,
key and value are three tensors `[D, D]`; jaxlm stacks them on axis 1 of `qkv/kernel
[D, 3, heads, head_dim]` (each one's outputs viewed as [heads, head_dim], as HF splits them), and
`attention.output.dense.weight [D, D]` is the transpose of `out/kernel [heads, head_dim, D]`.
"""

import numpy as np

from jaxlm.errors import UserError
from jaxlm.interop.hf_files import Tensor, params_from_table, params_to_table
from jaxlm.models import ModelConfig

# The architectures jaxlm imports, and the jaxlm head of each. BertForPreTraining files (the
# original checkpoints) hold the masked-LM head plus next-sentence weights, which are skipped.
HEADS = {"BertForMaskedLM": "lm", "BertForPreTraining": "lm",
         "BertForSequenceClassification": "classify", "BertForTokenClassification": "tag"}
EXPORTED = {"lm": "BertForMaskedLM", "classify": "BertForSequenceClassification",
            "tag": "BertForTokenClassification"}
# transformers' activation names -> jaxlm's model.mlp.
ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}
# Buffers some older BERT files carry; they are not parameters.
BUFFER_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")
WORDS = "bert.embeddings.word_embeddings.weight"
# The MLM decoder: tied to the word embeddings and to cls.predictions.bias in jaxlm, saved as
# copies by some files.
TIED_COPIES = {"cls.predictions.decoder.weight": WORDS,
               "cls.predictions.decoder.bias": "cls.predictions.bias"}


def layout(cfg: ModelConfig) -> list[Tensor]:
  """Every parameter of a BERT-expressible `cfg`, with its Hugging Face name and shapes."""
  d, heads, head_dim, mlp = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.mlp_dim

  def norm(path, hf):
    return [Tensor((*path, "scale"), f"{hf}.weight", (d,), (d,)),
            Tensor((*path, "bias"), f"{hf}.bias", (d,), (d,))]

  def linear(path, hf, kernel, fan_in, fan_out):
    """An nn.Linear `[fan_out, fan_in]` as a jaxlm kernel of shape `kernel` and its bias."""
    return [Tensor((*path, "kernel"), f"{hf}.weight", kernel, (fan_out, fan_in), transpose=True),
            Tensor((*path, "bias"), f"{hf}.bias", (fan_out,), (fan_out,))]

  tensors = [Tensor(("embedding",), WORDS, (cfg.vocab_size, d), (cfg.vocab_size, d)),
             Tensor(("pos_embedding",), "bert.embeddings.position_embeddings.weight",
                    (cfg.max_len, d), (cfg.max_len, d)),
             Tensor(("type_embedding",), "bert.embeddings.token_type_embeddings.weight",
                    (cfg.type_vocab_size, d), (cfg.type_vocab_size, d)),
             *norm(("ln_embed",), "bert.embeddings.LayerNorm")]
  for i in range(cfg.num_layers):
    block, hf = f"block_{i}", f"bert.encoder.layer.{i}"
    for k, name in enumerate(("query", "key", "value")):
      part = f"{hf}.attention.self.{name}"
      tensors += [Tensor((block, "attn", "qkv", "kernel"), f"{part}.weight", (d, heads, head_dim),
                         (d, d), transpose=True, part=(1, k)),
                  Tensor((block, "attn", "qkv", "bias"), f"{part}.bias", (heads, head_dim), (d,),
                         part=(0, k))]
    tensors += linear((block, "attn", "out"), f"{hf}.attention.output.dense", (heads, head_dim, d),
                      d, d)
    tensors += norm((block, "ln_attn"), f"{hf}.attention.output.LayerNorm")
    tensors += linear((block, "mlp", "wi"), f"{hf}.intermediate.dense", (d, mlp), d, mlp)
    tensors += linear((block, "mlp", "wo"), f"{hf}.output.dense", (mlp, d), mlp, d)
    tensors += norm((block, "ln_mlp"), f"{hf}.output.LayerNorm")
  if cfg.head == "lm":
    tensors += linear(("mlm", "transform"), "cls.predictions.transform.dense", (d, d), d, d)
    tensors += norm(("mlm", "ln"), "cls.predictions.transform.LayerNorm")
    tensors.append(Tensor(("mlm", "bias"), "cls.predictions.bias", (cfg.vocab_size,),
                          (cfg.vocab_size,)))
  else:
    if cfg.head == "classify":
      tensors += linear(("pooler",), "bert.pooler.dense", (d, d), d, d)
    tensors += linear(("classifier",), "classifier", (d, cfg.num_labels), d, cfg.num_labels)
  return tensors


def architecture(hf_settings: dict) -> str:
  """The one architecture named in config.json, which must be one jaxlm imports."""
  names = hf_settings.get("architectures") or []
  if len(names) != 1 or names[0] not in HEADS:
    raise UserError(f"config.json's architectures is {names}; jaxlm imports one of "
                    f"{', '.join(HEADS)} (a bare BertModel has no head to import)")
  return names[0]


def labels_of(hf_settings: dict, name: str) -> tuple[str, ...]:
  """The label names of a classification model, in id order, from config.json's id2label."""
  id2label = hf_settings.get("id2label") or {}
  ids = sorted(int(i) for i in id2label)
  if not ids or ids != list(range(len(ids))):
    raise UserError(f"config.json of this {name} has no id2label for labels 0..n-1 (got "
                    f"{sorted(id2label)}); add the label names as id2label")
  return tuple(str(id2label[str(i)] if str(i) in id2label else id2label[i]) for i in ids)


def model_fields(hf_settings: dict) -> tuple[dict, tuple[str, ...]]:
  """`ModelConfig` fields (all but vocab_size, dropout, dtype) of a BERT config.json, and the
  label names of a classification head (empty for the masked-LM head)."""
  if hf_settings.get("model_type") != "bert":
    raise UserError(f"model_type is {hf_settings.get('model_type')!r}, not 'bert'; this reads "
                    "BERT models only")
  name = architecture(hf_settings)
  head, problems = HEADS[name], []
  activation = hf_settings.get("hidden_act", "gelu")
  if activation not in ACTIVATIONS:
    problems.append(f"hidden_act={activation!r} (jaxlm has GELU: {', '.join(ACTIVATIONS)})")
  for key, supported in (("position_embedding_type", "absolute"), ("is_decoder", False),
                         ("add_cross_attention", False)):
    if hf_settings.get(key, supported) != supported:
      problems.append(f"{key}={hf_settings[key]!r} (jaxlm supports {supported!r})")
  if head == "lm" and not hf_settings.get("tie_word_embeddings", True):
    problems.append("tie_word_embeddings=False (jaxlm's MLM decoder is the word embeddings)")
  labels = () if head == "lm" else labels_of(hf_settings, name)
  if head == "classify" and (len(labels) == 1 or hf_settings.get("problem_type") not in
                             (None, "single_label_classification")):
    problems.append(f"problem_type={hf_settings.get('problem_type')!r} with {len(labels)} "
                    "labels (jaxlm classifies into one of several labels)")
  if problems:
    raise UserError("this Hugging Face model is not a BERT jaxlm can express: " +
                    "; ".join(problems))
  return {"family": "bert", "head": head, "num_labels": len(labels), "norm_position": "post",
          "type_vocab_size": hf_settings.get("type_vocab_size", 2),
          "d_model": hf_settings["hidden_size"], "num_layers": hf_settings["num_hidden_layers"],
          "num_heads": hf_settings["num_attention_heads"],
          "mlp_dim": hf_settings["intermediate_size"],
          "max_len": hf_settings["max_position_embeddings"], "positions": "learned",
          "norm": "layernorm", "mlp": ACTIVATIONS.get(activation), "tie_embeddings": True,
          "use_bias": True, "norm_eps": hf_settings.get("layer_norm_eps", 1e-12)}, labels


def inexpressible(cfg: ModelConfig) -> list[str]:
  """The options of `cfg` that a Hugging Face BERT cannot express (empty when it can be
  exported)."""
  wanted = {"family": "bert", "norm_position": "post", "positions": "learned",
            "norm": "layernorm", "use_bias": True, "tie_embeddings": True}
  problems = [f"model.{key}={getattr(cfg, key)!r} (BERT has {value!r})"
              for key, value in wanted.items() if getattr(cfg, key) != value]
  if cfg.mlp not in ACTIVATIONS.values():
    problems.append(f"model.mlp={cfg.mlp!r} (BERT has 'gelu_exact' or 'gelu')")
  if cfg.type_vocab_size < 1:
    problems.append("model.type_vocab_size=0 (BERT has token-type embeddings)")
  return problems


def hf_settings(cfg: ModelConfig, labels: tuple[str, ...], pad_id: int) -> dict:
  """The config.json of the Hugging Face BERT equal to `cfg` (with `labels` for its head)."""
  settings = {
      "architectures": [EXPORTED[cfg.head]], "model_type": "bert",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
      "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "intermediate_size": cfg.mlp_dim,
      "hidden_act": {"gelu_exact": "gelu", "gelu": "gelu_new"}[cfg.mlp],
      "max_position_embeddings": cfg.max_len, "type_vocab_size": cfg.type_vocab_size,
      "layer_norm_eps": cfg.norm_eps, "position_embedding_type": "absolute",
      # jaxlm drops out embeddings and residual branches, never attention probabilities.
      "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": 0.0,
      "classifier_dropout": None, "initializer_range": 0.02, "pad_token_id": pad_id,
      "tie_word_embeddings": True, "is_decoder": False, "dtype": "float32",
  }
  if cfg.head != "lm":
    if len(labels) != cfg.num_labels:
      raise UserError(f"the run's data.labels has {len(labels)} names for its {cfg.num_labels} "
                      "labels; a BERT export names every label (set data.labels in id order)")
    settings["id2label"] = {str(i): name for i, name in enumerate(labels)}
    settings["label2id"] = {name: i for i, name in enumerate(labels)}
  if cfg.head == "classify":
    settings["problem_type"] = "single_label_classification"  # not regression, even with 1 label
  return settings


def canonical_name(name: str) -> str:
  """The BertFor* name of a tensor saved by BertModel too (no "bert." prefix), with the old
  LayerNorm names (gamma, beta) that transformers still reads."""
  if name.startswith(("embeddings.", "encoder.", "pooler.")):
    name = f"bert.{name}"
  for old, new in ((".gamma", ".weight"), (".beta", ".bias")):
    if ".LayerNorm." in name and name.endswith(old):
      name = name.removesuffix(old) + new
  return name


def pretraining_only(name: str, head: str) -> bool:
  """Tensors of BERT's pretraining that the jaxlm model has no use for: the next-sentence head,
  and the pooler unless the head classifies from it."""
  return (name.startswith("cls.seq_relationship.") or
          (head != "classify" and name.startswith("bert.pooler.")))


def params_from_hf(tensors: dict[str, np.ndarray], cfg: ModelConfig) -> tuple[dict, list[str]]:
  """jaxlm's parameter tree (float32 numpy) from a BERT state dict, and the names of the
  pretraining-only tensors it skipped; every other tensor must be used."""
  by_name = {canonical_name(k): v for k, v in tensors.items() if not k.endswith(BUFFER_SUFFIXES)}
  skipped = sorted(name for name in by_name if pretraining_only(name, cfg.head))
  for name in skipped:
    del by_name[name]
  if cfg.head == "lm":
    for copy, tied in TIED_COPIES.items():
      value = by_name.pop(copy, None)
      if value is not None and tied in by_name and not np.array_equal(value, by_name[tied]):
        raise UserError(f"{copy} differs from {tied}, but jaxlm's BERT ties its masked-LM "
                        "decoder to them; this model cannot be imported")
  return params_from_table(by_name, layout(cfg)), skipped


def params_to_hf(params: dict, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """The BertFor* state dict (float32, contiguous) of jaxlm parameters; the tied MLM decoder is
  left out, as transformers saves it."""
  return params_to_table(params, layout(cfg))
