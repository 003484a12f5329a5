"""A 1.3B-parameter GPT-2-style model (GPT-3 XL's shape: 24 layers x 2048, 16 heads of 128) at
sequence length 2048, for a GPU or TPU mesh.

    python -m jaxlm.train --config=configs/gpt2_1p3b.py --config.data.path='DIR/*.jsonl' --workdir=W
    python -m jaxlm.plan --config=configs/gpt2_1p3b.py --devices=64 --device_memory=80GB

Global batch 512 x 2048 tokens (about 1M, as GPT-3 XL), in 8 accumulation steps. Parameters and
AdamW state take about 21 GB, so they are sharded over every device (mesh.fsdp=-1). On fewer devices
raise train.grad_accum_steps until the plan fits. docs/scaling.md has its memory plans.
"""

from jaxlm.config import base_config


def get_config():
  c = base_config()
  c.data.source = "files"
  c.data.path = ""  # your text: a .txt/.jsonl file, directory or glob
  c.data.tokenizer = "sentencepiece"
  c.data.vocab_size = 50304
  c.data.seq_len = 2048
  c.data.val_fraction = 0.01
  c.model.d_model = 2048
  c.model.num_layers = 24
  c.model.num_heads = 16
  c.model.mlp_dim = 8192
  c.model.max_len = 2048
  c.model.dtype = "bfloat16"
  c.train.batch_size = 512
  c.train.grad_accum_steps = 8
  c.train.steps = 50000
  c.train.lr = 2e-4
  c.train.warmup_steps = 2000
  c.train.min_lr_ratio = 0.1
  c.train.log_every = 50
  c.eval.every = 1000
  c.eval.batch_size = 64
  c.eval.max_batches = 50
  c.checkpoint.every = 1000
  c.mesh.data = 1
  c.mesh.fsdp = -1
  return c
