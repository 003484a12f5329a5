"""Finetune a pretrained run on prompt/completion data; by default the built-in task.

    python -m jaxlm.train --config=configs/finetune.py --config.init_from=runs/default \
        --workdir=runs/finetune
    python -m jaxlm.evaluate --workdir=runs/finetune --task=pyfunc_params

The built-in task `pyfunc_params` asks for the parameter names of a standard-library function from
its def header; `pyfunc_call` (the call with the required arguments) and `pyfunc_names` (the name
from the masked body, harder) are there too: --config.data.path=pyfunc_names. For your own data,
give JSONL records {"prompt": ..., "completion": ...}:
    --config.data.source=files --config.data.path=train.jsonl [--config.data.val_path=val.jsonl]
The architecture and tokenizer come from init_from; only optimization and data are set here.
"""

from jaxlm.config import base_config


def get_config():
  c = base_config()
  c.init_from = ""  # give the pretrain workdir on the command line
  c.data.source = "task"
  c.data.path = "pyfunc_params"
  c.data.format = "prompt_completion"
  c.data.truncate = "left"
  c.data.seq_len = 128
  c.train.batch_size = 16
  c.train.steps = 300
  c.train.lr = 5e-4
  c.train.warmup_steps = 20
  c.train.min_lr_ratio = 0.1
  c.train.log_every = 20
  c.eval.every = 100
  c.eval.batch_size = 32
  c.eval.max_batches = 0
  c.eval.sample_tokens = 0
  c.checkpoint.every = 100
  return c
