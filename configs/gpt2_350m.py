"""GPT-2 medium (355M parameters) at sequence length 1024, for a GPU or TPU.

    python -m jaxlm.train --config=configs/gpt2_350m.py --config.data.path='DIR/*.jsonl' --workdir=W
    python -m jaxlm.plan --config=configs/gpt2_350m.py --devices=8 --device_memory=80GB

Global batch 512 x 1024 tokens (about 0.5M), in 8 accumulation steps. Parameters and AdamW state
(16 bytes per parameter, about 5.7 GB) fit on every device, so the mesh is data parallel; set
mesh.fsdp to shard them. docs/scaling.md has its memory plans.
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
  c.model.d_model = 1024
  c.model.num_layers = 24
  c.model.num_heads = 16
  c.model.mlp_dim = 4096
  c.model.max_len = 1024
  c.model.dtype = "bfloat16"
  c.train.batch_size = 512
  c.train.grad_accum_steps = 8
  c.train.steps = 40000
  c.train.lr = 3e-4
  c.train.warmup_steps = 2000
  c.train.min_lr_ratio = 0.1
  c.train.log_every = 50
  c.eval.every = 1000
  c.eval.batch_size = 64
  c.eval.max_batches = 50
  c.checkpoint.every = 1000
  return c
