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
import numpy as np
import safetensors
import safetensors.numpy
from absl import app, flags
from ml_collections import config_flags

from jaxlm import checkpoint, cli, hf_gpt2, trained
from jaxlm.config import base_config, fixed_by_checkpoint
from jaxlm.corpus import TOKENIZER_FILE
from jaxlm.data import pack_documents, save_tokenizer, train_batches
from jaxlm.data.gpt2_tokenizer import Gpt2BpeTokenizer
from jaxlm.engine import engine_for_config
from jaxlm.errors import UserError
from jaxlm.model import ModelConfig

COMMANDS = ("from-hf", "to-hf")
WEIGHTS, WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"


def define_flags() -> None:
  config_flags.DEFINE_config_dict("config", base_config(),
                                  "from-hf: options of the imported run (data.*, train.*, ...).")
  flags.DEFINE_string("model", None, "from-hf: the Hugging Face model directory to read.")
  flags.DEFINE_string("workdir", None, "from-hf: the workdir to create; to-hf: the run to export.")
  flags.DEFINE_string("out", None, "to-hf: the directory to write the Hugging Face model into.")
  flags.DEFINE_integer("step", None, "to-hf: checkpoint step to export (default: the latest).")


def _read_json(path: str) -> dict:
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
    files = sorted(set(_read_json(index)["weight_map"].values()))
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


def imported_config(config: ml_collections.ConfigDict, overridden: set[str], model_fields: dict,
                    tokenizer: Gpt2BpeTokenizer) -> ml_collections.ConfigDict:
  """`config` with the architecture and tokenizer of the imported model."""
  fixed = sorted(key for key in overridden
                 if key.startswith("model.") and fixed_by_checkpoint(key))
  if fixed:
    raise UserError(f"the architecture comes from the model's config.json, so drop these "
                      f"overrides: {', '.join(fixed)}")
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.update(model_fields)
  config.data.tokenizer, config.data.vocab_size = Gpt2BpeTokenizer.kind, tokenizer.vocab_size
  if "data.seq_len" not in overridden:
    config.data.seq_len = config.model.max_len
  if config.data.seq_len > config.model.max_len:
    raise UserError(f"data.seq_len={config.data.seq_len} is longer than the model's context "
                      f"({config.model.max_len} positions); lower --config.data.seq_len")
  return config


def fresh_data_state() -> dict:
  """The position of a training iterator that has read nothing (the same for any data), so that
  `train` on the imported workdir starts its data from the beginning."""
  two_windows = pack_documents([[0, 0]], eos_id=0, seq_len=1)
  return iter(train_batches(two_windows, 2, 0, 0, 1)).get_state()


def write_run(workdir: str, config: ml_collections.ConfigDict, tokenizer, params: dict) -> int:
  """Saves `params` as step 0 of a new run in `workdir`; returns the parameter count."""
  cli.ensure_writable(workdir)
  if checkpoint.latest_step(workdir) is not None:
    raise UserError(f"{workdir} already holds a run; import into a new --workdir")
  engine = engine_for_config(config, tokenizer.vocab_size)
  state = engine.from_params(params)  # step 0 and a fresh optimizer state, placed on the mesh
  save_tokenizer(tokenizer, os.path.join(workdir, TOKENIZER_FILE))
  mngr = checkpoint.manager(workdir, keep=config.checkpoint.keep)
  checkpoint.save(mngr, 0, state, cli.config_to_json(config), tokenizer.to_json(), fresh_data_state())
  mngr.wait_until_finished()
  mngr.close()
  return sum(x.size for x in jax.tree.leaves(params))


def from_hf(model_dir: str, workdir: str, config: ml_collections.ConfigDict,
            overridden: set[str] = frozenset()) -> dict:
  """Imports the GPT-2 in `model_dir` as step 0 of a new run in `workdir`."""
  hf_settings = _read_json(os.path.join(model_dir, "config.json"))
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
