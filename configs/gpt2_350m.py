"""GPT-2 medium (355M parameters) at sequence length 1024, for a GPU or TPU.

    python -m jaxlm.train --config=configs/gpt2_350m.py --config.data.path='DIR/*.jsonl' --workdir=W
    python -m jaxlm.plan --config=configs/gpt2_350m.py --devices=8 --device_memory=80GB

Global batch 512 x 1024 tokens (about 0.5M), in 8 accumulation steps. Parameters and AdamW state
(16 bytes per parameter, about 5.7 GB) fit on every device, so the mesh is data parallel; set
mesh.fsdp to shard them. docs/scaling.md has its memory plans.
"""

from jaxlm.recipes import gpt2_config


def get_config():
  c = gpt2_config(d_model=1024, num_layers=24, num_heads=16, seq_len=1024)
  c.train.steps = 40000
  c.train.lr = 3e-4
  c.train.warmup_steps = 2000
  return c
