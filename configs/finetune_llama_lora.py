"""LoRA finetune of an imported Llama-family model: rank-16 adapters on every attention and MLP
projection, the base frozen in bfloat16 (no gradients, no optimizer state), the layers scanned
(configs/finetune_llama.py's runtime options), so a 7B model trains on one 80 GB device
(docs/benchmarks.md has the plan: unscanned, it would not fit). The imported base stays unscanned
on disk; its layers are stacked on the device as they are restored.

    python -m jaxlm.convert from-hf --model=HF_DIR --workdir=runs/base
    python -m jaxlm.train --config=configs/finetune_llama_lora.py --config.init_from=runs/base \
        --config.data.path=train.jsonl --config.data.val_path=val.jsonl --workdir=runs/lora
    python -m jaxlm.convert to-hf --workdir=runs/lora --peft --out=adapters    # for peft
    python -m jaxlm.convert merge-lora --workdir=runs/lora --out=runs/merged   # an ordinary run

The run's checkpoints hold the adapters (stacked, as the layers) and their optimizer state, and
name the base run and step; `to-hf --peft` writes the adapters per layer, as PEFT names them.
"""

import importlib.util
import os


def full_finetune():
  """configs/finetune_llama.py's config, read beside this file."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "finetune_llama.py")
  spec = importlib.util.spec_from_file_location("finetune_llama", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  c = full_finetune()
  c.train.lora.rank = 16
  c.train.lora.alpha = 32.0
  c.train.lora.dropout = 0.05
  c.train.lora.targets = "all"
  c.train.lora.base_dtype = "bfloat16"
  c.train.lr = 2e-4
  c.train.weight_decay = 0.0
  c.mesh.data, c.mesh.fsdp = -1, 1  # the adapters are small: data parallel over the devices
  return c
