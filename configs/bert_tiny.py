"""A small BERT pretrained by masked LM on this Python's standard library sources (no download).

    python -m jaxlm.train --config=configs/bert_tiny.py --workdir=runs/bert
    python -m jaxlm.evaluate --workdir=runs/bert      # masked-token loss and accuracy

Hugging Face BERT's layout: post-norm, exact GELU, LayerNorm eps 1e-12, learned positions, two token
types, an MLM head tied to the embeddings, a WordPiece vocabulary trained on the corpus. 15% of the
tokens are chosen each step (80% [MASK], 10% random, 10% kept). Finetune it with
configs/bert_classify.py or configs/bert_tag.py.

Learned absolute positions make the masked LM slow to start on a CPU budget: a [MASK] says nothing
of itself, and attending to its neighbours waits on the position table. At 300 steps it masks 14%
right, 34% with --config.model.positions=rope --config.train.lr=2e-3 (docs/benchmarks.md, issue
#12), which `convert to-hf` cannot export: a BERT has learned positions.
"""

from jaxlm.config import base_config


def get_config():
  c = base_config()
  c.data.source = "stdlib"
  c.data.tokenizer = "wordpiece"
  c.data.vocab_size = 4096
  c.data.seq_len = 128
  c.model.family = "bert"
  c.model.head = "lm"
  c.model.norm_position = "post"
  c.model.mlp = "gelu_exact"
  c.model.norm_eps = 1e-12
  c.model.type_vocab_size = 2
  c.model.d_model = 192
  c.model.num_layers = 4
  c.model.num_heads = 6
  c.model.mlp_dim = 768
  c.model.max_len = 128
  c.train.batch_size = 32
  c.train.steps = 400
  c.train.lr = 1e-3
  c.train.warmup_steps = 40
  c.train.b2 = 0.99
  c.train.weight_decay = 0.01
  c.train.mlm_probability = 0.15
  c.train.log_every = 20
  c.eval.every = 200
  c.eval.batch_size = 32
  c.eval.max_batches = 20  # 20 x 32 windows, ~12k masked tokens: a steady estimate, quickly
  c.eval.sample_tokens = 0
  c.checkpoint.every = 200
  # One XLA device per core of a 2-core CPU, parameters and optimizer state sharded over both
  # (as configs/shakespeare_char.py): the same training, faster than one device.
  c.mesh.cpu_devices = 2
  c.mesh.data, c.mesh.fsdp = 1, -1
  return c
