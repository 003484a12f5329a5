"""Finetune a pretrained BERT to tag entities in text (BIO); by default on the built-in task.

    python -m jaxlm.train --config=configs/bert_tag.py --config.init_from=runs/bert \
        --workdir=runs/bert_tag
    python -m jaxlm.evaluate --workdir=runs/bert_tag   # entity precision, recall, F1 (seqeval's)

The built-in task `python_tags` tags the tokens of Python source lines (keywords, builtins, string
and number literals as entities). For your own data, give JSONL records
{"tokens": [words], "tags": [BIO tags]}: --config.data.source=files --config.data.path=train.jsonl
[--config.data.val_path=val.jsonl]. Each word's label sits on its first WordPiece piece.
"""

from jaxlm.config import base_config


def get_config():
  c = base_config()
  c.init_from = ""  # give the pretrain workdir on the command line
  c.data.source = "task"
  c.data.path = "python_tags"
  c.data.format = "tagging"
  c.data.seq_len = 128
  c.model.head = "tag"
  c.train.batch_size = 32
  c.train.steps = 150
  c.train.lr = 3e-4
  c.train.warmup_steps = 15
  c.train.weight_decay = 0.01
  c.train.log_every = 20
  c.eval.every = 50
  c.eval.batch_size = 32
  c.eval.max_batches = 0
  c.eval.sample_tokens = 0
  c.checkpoint.every = 50
  c.mesh.cpu_devices = 2  # one XLA device per core, as configs/bert_tiny.py
  c.mesh.data, c.mesh.fsdp = 1, -1
  return c
