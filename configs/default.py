"""The built-in demo: a small GPT on this Python's standard library sources (no download).

Trains in a few minutes on a 2-core CPU; its samples look like Python.
    python -m jaxlm.train --config=configs/default.py --workdir=runs/default
"""

from jaxlm.config import base_config


def get_config():
  c = base_config()
  c.data.source = "stdlib"
  c.data.tokenizer = "sentencepiece"
  c.data.vocab_size = 2048
  c.data.seq_len = 128
  c.model.d_model = 192
  c.model.num_layers = 4
  c.model.num_heads = 6
  c.model.mlp_dim = 768
  c.model.max_len = 128
  c.train.batch_size = 16
  c.train.steps = 600
  c.train.lr = 2e-3
  c.train.warmup_steps = 50
  c.train.log_every = 20
  c.eval.every = 200
  c.eval.batch_size = 32
  c.eval.max_batches = 0
  c.eval.sample_tokens = 96
  c.checkpoint.every = 200
  return c
