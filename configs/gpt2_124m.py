"""GPT-2 small (124M parameters) at sequence length 1024, for a GPU or TPU.

    python -m jaxlm.train --config=configs/gpt2_124m.py --config.data.path='DIR/*.jsonl' --workdir=W

Global batch 512 x 1024 tokens (about 0.5M, as GPT-2/3 small), split into 8 accumulation steps; raise
mesh.fsdp on many devices to shard parameters and optimizer state.
"""

from jaxlm.recipes import gpt2_config


def get_config():
  c = gpt2_config(d_model=768, num_layers=12, num_heads=12, seq_len=1024)
  c.train.steps = 20000
  c.train.lr = 6e-4
  c.train.warmup_steps = 700
  return c
