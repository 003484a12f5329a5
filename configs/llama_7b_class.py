"""A 7B-class model in LLaMA's shape: 32 layers x 4096, 32 heads, SwiGLU MLP of 11008, RMSNorm,
rotary positions, untied output head, no biases, bfloat16 compute, sequence length 2048.

    python -m jaxlm.plan --config=configs/llama_7b_class.py --devices=64 --device_memory=80GB
    python -m jaxlm.train --config=configs/llama_7b_class.py --config.data.path='DIR/*.jsonl' --workdir=W

Global batch 512 x 2048 tokens (about 1M) in 32 accumulation steps. AdamW state and float32
parameters take about 108 GB (16 bytes per parameter), so they are sharded (fsdp), and tensor
parallelism (4-way: heads, MLP and vocabulary) splits each sequence's activations, which at this
size outweigh the parameters. Plan before renting: docs/scaling.md has this config's memory plans.
"""

from jaxlm.config import base_config


def get_config():
  c = base_config()
  c.data.source = "files"
  c.data.path = ""  # your text: a .txt/.jsonl file, directory or glob
  c.data.tokenizer = "sentencepiece"
  c.data.vocab_size = 32000
  c.data.seq_len = 2048
  c.data.val_fraction = 0.005
  c.model.d_model = 4096
  c.model.num_layers = 32
  c.model.num_heads = 32
  c.model.mlp_dim = 11008
  c.model.max_len = 2048
  c.model.positions = "rope"
  c.model.norm = "rmsnorm"
  c.model.mlp = "swiglu"
  c.model.tie_embeddings = False
  c.model.use_bias = False
  c.model.dtype = "bfloat16"
  c.train.batch_size = 512
  c.train.grad_accum_steps = 32
  c.train.steps = 100000
  c.train.lr = 3e-4
  c.train.warmup_steps = 2000
  c.train.min_lr_ratio = 0.1
  c.train.log_every = 20
  c.eval.every = 2000
  c.eval.batch_size = 64
  c.eval.max_batches = 50
  c.checkpoint.every = 1000
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.tensor = 4
  return c
