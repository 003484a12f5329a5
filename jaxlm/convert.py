"""Import a Hugging Face GPT-2 into a jaxlm workdir, and export a jaxlm run as one.

    python -m jaxlm.convert from-hf --model=DIR --workdir=OUT [--config.data.path=... ...]
    python -m jaxlm.convert to-hf --workdir=W --out=DIR [--step=N]

from-hf reads DIR's config.json, model.safetensors (or its sharded index) and tokenizer (tokenizer.json,
or vocab.json + merges.txt) and writes OUT as a training run at step 0: a checkpoint with the weights,
a fresh optimizer state, the full config and the tokenizer, so `evaluate`, `sample` and finetuning
take it like any other workdir. The architecture comes from config.json; `--config.*` sets the rest
(data, train, eval, mesh, model.dropout, model.dtype). data.seq_len defaults to the model's context.

to-hf writes DIR/config.json and DIR/model.safetensors for `transformers.GPT2LMHeadModel`, and the
tokenizer files when the run's tokenizer is GPT-2 BPE. Options a GPT-2 cannot express are refused.
Weights are read and written as safetensors only: nothing is unpickled.
"""

import json
import os

import jax
import ml_collections
import safetensors
import safetensors.numpy
from absl import app, flags
from ml_collections import config_flags

from jaxlm import cli
from jaxlm.config import base_config
from jaxlm.data.gpt2_tokenizer import Gpt2BpeTokenizer
from jaxlm.errors import UserError
from jaxlm.inference import trained
from jaxlm.interop import hf_gpt2
from jaxlm.interop.hf_files import WEIGHTS, read_hf_weights, read_json
from jaxlm.interop.run_writer import imported_config, write_run
from jaxlm.models import ModelConfig
from jaxlm.training import checkpoint

COMMANDS = ("from-hf", "to-hf")



def define_flags() -> None:
  config_flags.DEFINE_config_dict("config", base_config(),
                                  "from-hf: options of the imported run (data.*, train.*, ...).")
  flags.DEFINE_string("model", None, "from-hf: the Hugging Face model directory to read.")
  flags.DEFINE_string("workdir", None, "from-hf: the workdir to create; to-hf: the run to export.")
  flags.DEFINE_string("out", None, "to-hf: the directory to write the Hugging Face model into.")
  flags.DEFINE_integer("step", None, "to-hf: checkpoint step to export (default: the latest).")


def from_hf(model_dir: str, workdir: str, config: ml_collections.ConfigDict,
            overridden: set[str] = frozenset()) -> dict:
  """Imports the GPT-2 in `model_dir` as step 0 of a new run in `workdir`."""
  hf_settings = read_json(os.path.join(model_dir, "config.json"))
  model_fields = hf_gpt2.model_fields(hf_settings)
  tokenizer = Gpt2BpeTokenizer.from_hf_dir(model_dir, hf_settings.get("vocab_size"))
  config = imported_config(config, set(overridden), model_fields, tokenizer)
  params = hf_gpt2.params_from_hf(read_hf_weights(model_dir),
                                  ModelConfig.from_config(config.model,
                                                          vocab_size=tokenizer.vocab_size))
  num_params = write_run(workdir, config, tokenizer, params)
  print(f"imported {model_dir} ({num_params:,} parameters, {config.model.num_layers} layers, "
        f"vocabulary {tokenizer.vocab_size}) into {checkpoint.checkpoint_dir(workdir)} as step 0")
  return {"workdir": workdir, "step": 0, "parameters": num_params}


def to_hf(workdir: str, out: str, step: int | None = None) -> dict:
  """Writes the run's checkpoint as a Hugging Face GPT2LMHeadModel directory."""
  run = trained.load(workdir, step)
  problems = hf_gpt2.inexpressible(run.model_cfg)
  if problems:
    raise UserError("GPT-2 cannot express this model: " + "; ".join(problems) +
                      "; only GPT-2-style runs can be exported")
  cli.ensure_writable(out)
  tensors = hf_gpt2.params_to_hf(jax.device_get(run.params), run.model_cfg)
  safetensors.numpy.save_file(tensors, os.path.join(out, WEIGHTS), metadata={"format": "pt"})
  with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
    json.dump(hf_gpt2.hf_settings(run.model_cfg, run.tokenizer.eos_id), f, indent=2)
  if isinstance(run.tokenizer, Gpt2BpeTokenizer):
    run.tokenizer.save_hf_files(out, run.model_cfg.max_len)
  else:
    print(f"note: the run's {run.tokenizer.kind} tokenizer has no Hugging Face form; "
          "only the model is written")
  print(f"exported step {run.step} of {workdir} to {out}")
  return {"out": out, "step": run.step, "tokenizer": isinstance(run.tokenizer, Gpt2BpeTokenizer)}


def main(argv):
  f = flags.FLAGS

  def run():
    command = argv[1] if len(argv) == 2 else None
    if command not in COMMANDS:
      raise UserError("convert needs one command: `python -m jaxlm.convert from-hf --model=DIR "
                        "--workdir=OUT` or `python -m jaxlm.convert to-hf --workdir=W --out=DIR` "
                        f"(got {' '.join(argv[1:]) or 'none'})")
    if command == "from-hf":
      if not f.model:
        raise UserError("--model is required: the Hugging Face GPT-2 directory to import")
      result = from_hf(f.model, cli.require_workdir(f.workdir), f.config,
                       set(f["config"].override_values))
    else:
      if not f.out:
        raise UserError("--out is required: the directory to write the Hugging Face model into")
      result = to_hf(cli.require_workdir(f.workdir), f.out, f.step)
    cli.emit_json(result)

  cli.run(run)


if __name__ == "__main__":
  define_flags()
  app.run(main)
