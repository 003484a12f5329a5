"""Shared recipes that configs/*.py build on: base_config() with a family of settings changed."""

import ml_collections

from jaxlm.config import base_config


def shakespeare_char_config() -> ml_collections.ConfigDict:
  """nanoGPT's CPU recipe for char-level text (configs/shakespeare_char*.py): 4 layers x 128,
  4 heads, T=64, batch 12, no biases, AdamW (beta2 0.99) from 1e-3 with cosine decay to 1e-4;
  data.path comes from the command line."""
  c = base_config()
  c.data.source = "files"
  c.data.path = ""  # give it on the command line
  c.data.tokenizer = "char"
  c.data.seq_len = c.model.max_len = 64
  c.model.d_model, c.model.num_layers, c.model.num_heads, c.model.mlp_dim = 128, 4, 4, 512
  c.model.use_bias = False
  c.train.batch_size = 12
  c.train.steps = 2000
  c.train.lr = 1e-3
  c.train.warmup_steps = 100
  c.train.min_lr_ratio = 0.1
  c.train.b2 = 0.99
  c.train.weight_decay = 0.1
  c.train.log_every = 50
  c.eval.batch_size = 64
  c.eval.max_batches = 0
  # One XLA device per core of a 2-core CPU, parameters and optimizer state sharded over both:
  # the same training (equal losses), 1.35-1.5x faster than one device (docs/benchmarks.md).
  c.mesh.cpu_devices = 2
  c.mesh.data, c.mesh.fsdp = 1, -1
  return c


def gpt2_config(d_model: int, num_layers: int, num_heads: int,
                seq_len: int) -> ml_collections.ConfigDict:
  """The GPT-2 family's recipe (configs/gpt2_*.py): the user's text files, a 50304-token
  SentencePiece vocabulary (GPT-2's 50257 rounded up to a multiple of 128 for fast matmuls), bf16
  compute, about 0.5M-token global batches in 8 accumulation steps."""
  c = base_config()
  c.data.source = "files"
  c.data.path = ""  # your text: a .txt/.jsonl file, directory or glob
  c.data.tokenizer = "sentencepiece"
  c.data.vocab_size = 50304
  c.data.seq_len = c.model.max_len = seq_len
  c.data.val_fraction = 0.01
  c.model.d_model, c.model.num_layers, c.model.num_heads = d_model, num_layers, num_heads
  c.model.mlp_dim = 4 * d_model
  c.model.dtype = "bfloat16"
  c.train.batch_size = 512
  c.train.grad_accum_steps = 8
  c.train.min_lr_ratio = 0.1
  c.train.log_every = 50
  c.eval.every = 1000
  c.eval.batch_size = 64
  c.eval.max_batches = 50
  c.checkpoint.every = 1000
  return c
