"""nanoGPT's CPU recipe for char-level Shakespeare, option for option.

    python -m jaxlm.train --config=configs/shakespeare_char.py \
        --config.data.path=../shared/data/tinyshakespeare.txt --workdir=runs/shakespeare

One file, so validation is its last 10% of characters, as nanoGPT splits it. nanoGPT's model has no
biases and exact GELU; GELU here is the tanh form GPT-2 itself used.
"""

from jaxlm.config import base_config


def get_config():
  c = base_config()
  c.data.source = "files"
  c.data.path = ""  # give it on the command line
  c.data.tokenizer = "char"
  c.data.seq_len = 64
  c.model.d_model = 128
  c.model.num_layers = 4
  c.model.num_heads = 4
  c.model.mlp_dim = 512
  c.model.max_len = 64
  c.model.use_bias = False
  c.train.batch_size = 12
  c.train.steps = 2000
  c.train.lr = 1e-3
  c.train.warmup_steps = 100
  c.train.min_lr_ratio = 0.1
  c.train.b2 = 0.99
  c.train.weight_decay = 0.1
  c.train.log_every = 50
  c.eval.every = 250
  c.eval.batch_size = 64
  c.eval.max_batches = 0
  c.eval.sample_tokens = 128
  c.checkpoint.every = 500
  return c
