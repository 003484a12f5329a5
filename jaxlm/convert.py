"""Import a Hugging Face GPT-2, Llama/Qwen2, BERT or T5 into a jaxlm workdir, and export a jaxlm
run as one.

    python -m jaxlm.convert from-hf --model=DIR --workdir=OUT [--config.data.path=... ...]
    python -m jaxlm.convert to-hf --workdir=W --out=DIR [--step=N] [--peft]
    python -m jaxlm.convert from-hf --peft --model=ADAPTER_DIR --config.init_from=BASE --workdir=L
    python -m jaxlm.convert merge-lora --workdir=L --out=M [--step=N]

from-hf reads DIR's config.json, model.safetensors (or its sharded index) and tokenizer (GPT-2:
tokenizer.json, or vocab.json + merges.txt; BERT: tokenizer.json or vocab.txt; Llama and T5:
tokenizer.json, T5's with its <extra_id_N> sentinels) and writes OUT as a
training run at step 0: a checkpoint with the weights, a fresh optimizer state, the full config and
the tokenizer, so `evaluate`, `sample` and finetuning take it like any other workdir. The
architecture comes from config.json (its model_type picks the family; a BERT's architectures picks
the head: BertForMaskedLM "lm", BertForSequenceClassification "classify", BertForTokenClassification
"tag", whose id2label becomes data.labels); `--config.*` sets the rest (data, train, eval, mesh,
model.dropout, model.dtype). data.seq_len defaults to the model's context.

to-hf writes DIR/config.json and DIR/model.safetensors for `transformers.GPT2LMHeadModel`, a Llama,
the BertFor* of the run's head or (model.family=encdec) `T5ForConditionalGeneration` (v1.1 layout),
and the tokenizer files when the run's tokenizer has a Hugging Face form
(GPT-2 BPE, WordPiece). Options the family's Hugging Face model cannot express are refused.
Weights are read and written as safetensors only: nothing is unpickled.

merge-lora writes a LoRA run (train.lora.rank > 0) as an ordinary run at step 0: its base run's
parameters with every adapter merged into its kernel (W + alpha / rank A B), in the LoRA run's
layer layout (model.scan_layers). from-hf writes the layout --config.model.scan_layers asks for
(default: unscanned, Hugging Face's); to-hf exports either. to-hf of a LoRA run
exports those merged weights; `to-hf --peft` writes its adapters alone, as PEFT's
adapter_model.safetensors + adapter_config.json, for `peft.PeftModel` over the base's export;
`from-hf --peft` imports such adapters as a LoRA run over the jaxlm run of their base model.
"""

import functools
import json
import os
import re

import jax
import ml_collections
import numpy as np
import safetensors
import safetensors.numpy
from absl import app, flags
from ml_collections import config_flags

from jaxlm import cli
from jaxlm.config import base_config
from jaxlm.data.gpt2_tokenizer import Gpt2BpeTokenizer
from jaxlm.data.hf_tokenizer import HfTokenizer
from jaxlm.data.wordpiece_tokenizer import WordPieceTokenizer
from jaxlm.errors import UserError
from jaxlm.inference import trained
from jaxlm.interop import hf_bert, hf_gpt2, hf_llama, hf_t5, peft
from jaxlm.interop.hf_files import WEIGHTS, LazyTensors, read_hf_weights, read_json
from jaxlm.interop.run_writer import imported_config, write_lora_run, write_run
from jaxlm.models import ModelConfig, lora
from jaxlm.training import checkpoint, finetune, lora_run, scan_layout

COMMANDS = ("from-hf", "to-hf", "merge-lora")
# config.json's model_type of the models jaxlm reads.
MODEL_TYPES = ("gpt2", "bert", "t5", *hf_llama.ARCHITECTURES)
# Those read one tensor at a time onto the mesh (see streamed_params), by interop module.
STREAMED = {**{name: hf_llama for name in hf_llama.ARCHITECTURES}, "t5": hf_t5}
# The tokenizers with a Hugging Face form (`save_hf_files`).
HF_TOKENIZERS = (Gpt2BpeTokenizer, WordPieceTokenizer, HfTokenizer)


def define_flags() -> None:
  config_flags.DEFINE_config_dict("config", base_config(),
                                  "from-hf: options of the imported run (data.*, train.*, ...).")
  flags.DEFINE_string("model", None, "from-hf: the Hugging Face model directory to read.")
  flags.DEFINE_string("workdir", None, "from-hf: the workdir to create; to-hf, merge-lora: the "
                      "run to export or merge.")
  flags.DEFINE_string("out", None, "to-hf: the directory to write the Hugging Face model into; "
                      "merge-lora: the workdir of the merged run.")
  flags.DEFINE_bool("peft", False, "to-hf: write a LoRA run's adapters as PEFT files "
                    "(adapter_model.safetensors, adapter_config.json) instead of the model; "
                    "from-hf: import such adapters (--model) over --config.init_from.")
  flags.DEFINE_integer("step", None, "to-hf: checkpoint step to export (default: the latest).")


def read_hf_model(model_dir: str, hf_settings: dict) -> tuple[dict, tuple[str, ...], object]:
  """The `ModelConfig` fields, label names and tokenizer of the model in `model_dir`."""
  model_type = hf_settings.get("model_type")
  if model_type in STREAMED:
    return (STREAMED[model_type].model_fields(hf_settings), (),
            HfTokenizer.from_hf_dir(model_dir, hf_settings))
  if model_type == "gpt2":
    return (hf_gpt2.model_fields(hf_settings), (),
            Gpt2BpeTokenizer.from_hf_dir(model_dir, hf_settings.get("vocab_size")))
  if model_type != "bert":
    raise UserError(f"{os.path.join(model_dir, 'config.json')} has model_type={model_type!r}; "
                    f"jaxlm imports {', '.join(repr(t) for t in MODEL_TYPES)} models only")
  fields, labels = hf_bert.model_fields(hf_settings)
  return fields, labels, WordPieceTokenizer.from_hf_dir(model_dir, hf_settings.get("vocab_size"))


def params_from_hf(tensors: dict[str, np.ndarray], model_cfg: ModelConfig) -> dict:
  """The jaxlm parameters of a Hugging Face state dict, by family."""
  if model_cfg.family == "gpt":
    return hf_gpt2.params_from_hf(tensors, model_cfg)
  params, skipped = hf_bert.params_from_hf(tensors, model_cfg)
  for name in skipped:
    print(f"note: skipped {name} (used in pretraining only, not by a {model_cfg.head!r} head)")
  return params


def streamed_params(family, tensors: LazyTensors, model_cfg: ModelConfig, engine) -> dict:
  """A Llama-family or T5 state dict (`family`: its interop module) read one tensor at a time,
  each parameter put on `engine`'s mesh as soon as it is assembled: the host holds about one
  parameter, not the model. With model.scan_layers the layers (Hugging Face's: one per layer)
  are then stacked on the devices."""
  target = engine.abstract_state.params
  per_layer = scan_layout.abstract_in(target, False)

  def place(path, value):
    return jax.device_put(value, scan_layout.get(per_layer, path).sharding)
  return scan_layout.convert(family.params_from_hf(tensors, model_cfg, place), target, free=True)


def from_hf(model_dir: str, workdir: str, config: ml_collections.ConfigDict,
            overridden: set[str] = frozenset()) -> dict:
  """Imports the GPT-2, Llama/Qwen2, BERT or T5 in `model_dir` as step 0 of a new run in
  `workdir`."""
  hf_settings = read_json(os.path.join(model_dir, "config.json"))
  model_fields, labels, tokenizer = read_hf_model(model_dir, hf_settings)
  config = imported_config(config, set(overridden), model_fields, tokenizer, labels)
  if model_fields["family"] == "encdec" and "data.format" not in overridden:
    # An imported T5 is finetuned on (source, target) pairs; its tokenizer.json's sentinels are
    # not the `sentinel_ids` span corruption (data.format=text) reads.
    config.data.format = "seq2seq"
  model_cfg = ModelConfig.from_config(config.model, vocab_size=tokenizer.vocab_size)
  family = STREAMED.get(hf_settings.get("model_type"))
  if family is not None:
    # Streamed: each tensor read and placed on the run's mesh in turn (see streamed_params).
    params = functools.partial(streamed_params, family, LazyTensors(model_dir), model_cfg)
  else:
    params = scan_layout.in_layout(params_from_hf(read_hf_weights(model_dir), model_cfg),
                                   model_cfg.scan_layers)
  num_params = write_run(workdir, config, tokenizer, params)
  print(f"imported {model_dir} ({num_params:,} parameters, {config.model.num_layers} layers, "
        f"vocabulary {tokenizer.vocab_size}) into {checkpoint.checkpoint_dir(workdir)} as step 0")
  return {"workdir": workdir, "step": 0, "parameters": num_params}


def from_peft(adapter_dir: str, workdir: str, config: ml_collections.ConfigDict) -> dict:
  """Imports PEFT LoRA adapters (adapter_model.safetensors + adapter_config.json) trained on the
  model of the jaxlm run config.init_from, as step 0 of a new LoRA run in `workdir`."""
  if not config.init_from:
    raise UserError("from-hf --peft needs --config.init_from=BASE_WORKDIR: the jaxlm run (an "
                    "import of the base model) the adapters were trained on")
  settings = read_json(os.path.join(adapter_dir, peft.CONFIG))
  r, alpha = peft.read_peft_config(settings)
  config, pretrained, _ = finetune.prepare(config, {})
  config.init_step = pretrained.step
  family = hf_module(ModelConfig.from_config(config.model,
                                             vocab_size=pretrained.tokenizer.vocab_size))
  with safetensors.safe_open(os.path.join(adapter_dir, peft.WEIGHTS), framework="flax") as f:
    tensors = {k: np.asarray(f.get_tensor(k), np.float32) for k in f.keys()}  # noqa: SIM118
  base_cfg = ModelConfig.from_config(config.model, vocab_size=pretrained.tokenizer.vocab_size)
  adapters, rank, paths = peft.adapters_from_peft(tensors, family.layout(base_cfg), r)
  config.train.lora.update(rank=rank, alpha=alpha * rank / r, dropout=settings.get(
      "lora_dropout", 0.0), targets="^(" + "|".join(re.escape(p) for p in paths) + ")$")
  count = write_lora_run(workdir, config, pretrained, adapters)
  print(f"imported the PEFT adapters in {adapter_dir} ({len(paths)} modules, rank {rank}, "
        f"{count:,} parameters) over step {pretrained.step} of {pretrained.workdir} into {workdir}")
  return {"workdir": workdir, "step": 0, "parameters": count, "rank": rank}


def hf_family(cfg: ModelConfig) -> str:
  """The Hugging Face family a run exports as: BERT; T5 (encdec); GPT-2 (LayerNorm); else
  (RMSNorm) Llama, or Qwen2 when its q/k/v have biases."""
  if cfg.family == "bert":
    return "bert"
  if cfg.family == "encdec":
    return "t5"
  return "gpt2" if cfg.norm == "layernorm" else "llama"


def hf_module(cfg: ModelConfig):
  """The interop module of the run's Hugging Face family; refuses what that family lacks."""
  family, name = {"bert": (hf_bert, "BERT"), "gpt2": (hf_gpt2, "GPT-2"),
                  "llama": (hf_llama, "Llama"), "t5": (hf_t5, "T5")}[hf_family(cfg)]
  problems = family.inexpressible(cfg)
  if problems:
    raise UserError(f"{name} cannot express this model: " + "; ".join(problems) +
                    f"; only {name}-style runs can be exported")
  return family


def hf_model(run: trained.TrainedRun) -> tuple[dict, dict[str, np.ndarray]]:
  """The config.json and state dict of the Hugging Face model equal to the run's."""
  cfg = run.model_cfg
  family = hf_module(cfg)
  if family is hf_bert:
    pad_id = getattr(run.tokenizer, "pad_id", run.tokenizer.eos_id)
    settings = hf_bert.hf_settings(cfg, tuple(run.config.data.labels), pad_id)
  elif family is hf_llama:
    settings = hf_llama.hf_settings(cfg, run.tokenizer.eos_id)
  elif family is hf_t5:
    settings = hf_t5.hf_settings(cfg, run.tokenizer.eos_id)
  else:
    settings = hf_gpt2.hf_settings(cfg, run.tokenizer.eos_id)
  return settings, family.params_to_hf(merged_params(run), cfg)


def to_peft(run: trained.TrainedRun, workdir: str, out: str) -> dict:
  """Writes a LoRA run's adapters as PEFT's adapter_model.safetensors + adapter_config.json."""
  if not lora_run.is_lora(run.config):
    raise UserError(f"--peft exports the adapters of a LoRA run, and {workdir} has none "
                    "(train.lora.rank is 0); export it without --peft")
  cfg = run.model_cfg
  peft.check_exportable(hf_family(cfg))
  family = hf_module(cfg)
  adapters = jax.tree.map(np.asarray, jax.device_get(lora.split(run.params)[0]))
  tensors, modules = peft.adapters_to_peft(adapters, family.layout(cfg))
  base = lora_run.read_record(workdir, run.step)["workdir"]
  cli.ensure_writable(out)
  safetensors.numpy.save_file(tensors, os.path.join(out, peft.WEIGHTS), metadata={"format": "pt"})
  with open(os.path.join(out, peft.CONFIG), "w", encoding="utf-8") as f:
    json.dump(peft.peft_config(cfg.lora, modules, family is hf_gpt2, base), f, indent=2)
  print(f"exported the adapters of step {run.step} of {workdir} ({len(modules)} modules) to {out}; "
        f"load them onto the export of the base run {base}")
  return {"out": out, "step": run.step, "modules": len(modules)}


def to_hf(workdir: str, out: str, step: int | None = None, adapters_only: bool = False) -> dict:
  """Writes the run's checkpoint as a Hugging Face model directory (a LoRA run: merged), or with
  `adapters_only` a LoRA run's adapters as PEFT files."""
  # Hugging Face's layout: one module per layer (a scanned run's layers are unstacked).
  run = trained.load(workdir, step, {"model.scan_layers": False})
  if adapters_only:
    return to_peft(run, workdir, out)
  settings, tensors = hf_model(run)
  cli.ensure_writable(out)
  safetensors.numpy.save_file(tensors, os.path.join(out, WEIGHTS), metadata={"format": "pt"})
  with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
    json.dump(settings, f, indent=2)
  has_tokenizer = isinstance(run.tokenizer, HF_TOKENIZERS)
  if has_tokenizer:
    run.tokenizer.save_hf_files(out, run.model_cfg.max_len)
  else:
    print(f"note: the run's {run.tokenizer.kind} tokenizer has no Hugging Face form; "
          "only the model is written")
  print(f"exported step {run.step} of {workdir} to {out}")
  return {"out": out, "step": run.step, "tokenizer": has_tokenizer}


def merged_params(run: trained.TrainedRun) -> dict:
  """The run's parameters as float32 numpy, a LoRA run's adapters merged into their kernels."""
  params = run.params
  if lora_run.is_lora(run.config):
    params = lora.merged(params, run.model_cfg.lora)
  return jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(params))


def merge_lora(workdir: str, out: str, step: int | None = None) -> dict:
  """Writes a LoRA run's base + adapters, merged (W + alpha / rank A B), as an ordinary run."""
  run = trained.load(workdir, step)
  if not lora_run.is_lora(run.config):
    raise UserError(f"{workdir} is not a LoRA run (its train.lora.rank is 0): its checkpoints "
                    "already hold every parameter; use it as it is")
  config = ml_collections.ConfigDict(run.config.to_dict())
  config.train.lora.rank, config.init_from, config.init_step = 0, "", -1
  target = run.target_tokenizer if run.model_cfg.separate_vocab else None
  num_params = write_run(out, config, run.tokenizer, merged_params(run), target)
  print(f"merged the adapters of step {run.step} of {workdir} into {out} ({num_params:,} "
        "parameters, step 0)")
  return {"workdir": out, "step": 0, "parameters": num_params, "from_step": run.step}


def main(argv):
  f = flags.FLAGS

  def run():
    command = argv[1] if len(argv) == 2 else None
    if command not in COMMANDS:
      raise UserError("convert needs one command: `python -m jaxlm.convert from-hf --model=DIR "
                        "--workdir=OUT`, `python -m jaxlm.convert to-hf --workdir=W --out=DIR` or "
                        "`python -m jaxlm.convert merge-lora --workdir=L --out=M` "
                        f"(got {' '.join(argv[1:]) or 'none'})")
    if command == "from-hf" and f.peft:
      if not f.model:
        raise UserError("--model is required: the PEFT adapter directory to import")
      result = from_peft(f.model, cli.require_workdir(f.workdir), f.config)
    elif command == "from-hf":
      if not f.model:
        raise UserError("--model is required: the Hugging Face model directory to import")
      result = from_hf(f.model, cli.require_workdir(f.workdir), f.config,
                       set(f["config"].override_values))
    elif not f.out:
      raise UserError(f"--out is required: the directory {command} writes into")
    elif command == "merge-lora":
      result = merge_lora(cli.require_workdir(f.workdir), f.out, f.step)
    else:
      result = to_hf(cli.require_workdir(f.workdir), f.out, f.step, f.peft)
    cli.emit_json(result)

  cli.run(run)


if __name__ == "__main__":
  define_flags()
  app.run(main)
