"""Finetune a pretrained BERT to classify text; by default on the built-in task (no download).

    python -m jaxlm.train --config=configs/bert_classify.py --config.init_from=runs/bert \
        --workdir=runs/bert_classify
    python -m jaxlm.evaluate --workdir=runs/bert_classify   # accuracy, macro-F1, confusion table

The built-in task `docstring_package` asks which standard-library package a docstring comes from;
its validation and test docstrings come from files pretraining never read. `python_syntax`
(--config.data.path=python_syntax) asks whether a line of Python, as tokens, parses or has two
adjacent tokens swapped. For your own data, give
JSONL records {"text": ..., "label": ...} (optionally "text_pair"; a label is a string or an int):
    --config.data.source=files --config.data.path=train.jsonl [--config.data.val_path=val.jsonl]
The encoder comes from init_from; a fresh classification head (pooler + classifier over [CLS]) is
initialised, and the log lists the new parameters.
"""

from jaxlm.config import base_config


def get_config():
  c = base_config()
  c.init_from = ""  # give the pretrain workdir on the command line
  c.data.source = "task"
  c.data.path = "docstring_package"
  c.data.format = "classification"
  c.data.seq_len = 128
  c.model.head = "classify"
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
