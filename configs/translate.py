"""Finetune a pretrained encoder–decoder on translation; by default the built-in English→German
task, read from this machine's gettext catalogs (no download).

    python -m jaxlm.train --config=configs/translate.py --config.init_from=runs/t5 \
        --workdir=runs/translate
    python -m jaxlm.evaluate --workdir=runs/translate --task=gettext_en_de [--beam_size=4]

The test messages come from catalogs never trained on. For your own pairs, give JSONL records
{"source": ..., "target": ...} (or {"prompt": ..., "completion": ...}):
    --config.data.source=files --config.data.path=train.jsonl [--config.data.val_path=val.jsonl]
The architecture and tokenizer come from init_from; only optimization and data are set here.
"""

from jaxlm.config import base_config


def get_config():
  c = base_config()
  c.init_from = ""  # give the pretrain workdir on the command line
  c.data.source = "task"
  c.data.path = "gettext_en_de"
  c.data.format = "seq2seq"
  c.data.seq_len = 64
  c.data.target_len = 64
  c.train.batch_size = 32
  c.train.steps = 300
  c.train.lr = 1e-3
  c.train.warmup_steps = 30
  c.train.min_lr_ratio = 0.1
  c.train.log_every = 20
  c.eval.every = 300
  c.eval.batch_size = 32
  c.eval.max_batches = 0
  c.eval.sample_tokens = 0
  c.checkpoint.every = 300
  c.mesh.cpu_devices = 2
  c.mesh.data, c.mesh.fsdp = 1, -1
  return c
