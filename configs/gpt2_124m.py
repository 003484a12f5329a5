"""GPT-2 small (124M parameters) at sequence length 1024, for a GPU or TPU.

    python -m jaxlm.train --config=configs/gpt2_124m.py --config.data.path='DIR/*.jsonl' --workdir=W

Global batch 512 x 1024 tokens (about 0.5M, as GPT-2/3 small), split into 8 accumulation steps; raise
mesh.fsdp on many devices to shard parameters and optimizer state.
"""

from jaxlm.config import base_config


def get_config():
  c = base_config()
  c.data.source = "files"
  c.data.path = ""  # your text: a .txt/.jsonl file, directory or glob
  c.data.tokenizer = "sentencepiece"
  c.data.vocab_size = 50304  # GPT-2's 50257 rounded up to a multiple of 128 for fast matmuls
  c.data.seq_len = 1024
  c.data.val_fraction = 0.01
  c.model.d_model = 768
  c.model.num_layers = 12
  c.model.num_heads = 12
  c.model.mlp_dim = 3072
  c.model.max_len = 1024
  c.model.dtype = "bfloat16"
  c.train.batch_size = 512
  c.train.grad_accum_steps = 8
  c.train.steps = 20000
  c.train.lr = 6e-4
  c.train.warmup_steps = 700
  c.train.min_lr_ratio = 0.1
  c.train.b2 = 0.95
  c.train.log_every = 50
  c.eval.every = 1000
  c.eval.batch_size = 64
  c.eval.max_batches = 50
  c.checkpoint.every = 1000
  return c
