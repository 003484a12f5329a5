"""A 1.3B-parameter GPT-2-style model (GPT-3 XL's shape: 24 layers x 2048, 16 heads of 128) at
sequence length 2048, for a GPU or TPU mesh.

    python -m jaxlm.train --config=configs/gpt2_1p3b.py --config.data.path='DIR/*.jsonl' --workdir=W
    python -m jaxlm.plan --config=configs/gpt2_1p3b.py --devices=64 --device_memory=80GB

Global batch 512 x 2048 tokens (about 1M, as GPT-3 XL), in 8 accumulation steps. Parameters and
AdamW state take about 21 GB, so they are sharded over every device (mesh.fsdp=-1). On fewer devices
raise train.grad_accum_steps until the plan fits. docs/scaling.md has its memory plans.
"""

from jaxlm.recipes import gpt2_config


def get_config():
  c = gpt2_config(d_model=2048, num_layers=24, num_heads=16, seq_len=2048)
  c.train.steps = 50000
  c.train.lr = 2e-4
  c.train.warmup_steps = 2000
  c.mesh.data = 1
  c.mesh.fsdp = -1  # parameters and optimizer state sharded over every device
  return c
