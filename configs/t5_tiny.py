"""A small T5-style encoder–decoder pretrained by span corruption on this Python's standard library
sources (no download).

    python -m jaxlm.train --config=configs/t5_tiny.py --workdir=runs/t5
    python -m jaxlm.evaluate --workdir=runs/t5       # loss and accuracy on the corrupted spans

The T5 v1.1 layout: pre-norm RMSNorm, no biases, relative position buckets (one table per stack),
gated-GELU MLP, untied output head, a SentencePiece vocabulary with 100 sentinel tokens trained on
the corpus. Each step drops 15% of every document's tokens in spans of mean length 3; the encoder
reads the rest with one sentinel per span, the decoder writes the spans back after their
sentinels. Finetune it with configs/translate.py.
"""

from jaxlm.config import base_config


def get_config():
  c = base_config()
  c.data.source = "stdlib"
  c.data.tokenizer = "sentencepiece"
  c.data.vocab_size = 4096
  c.data.seq_len = 128
  c.model.family = "encdec"
  c.model.head = "lm"
  c.model.norm_position = "pre"
  c.model.norm = "rmsnorm"
  c.model.norm_eps = 1e-6
  c.model.positions = "relative"
  c.model.mlp = "geglu"
  c.model.use_bias = False
  c.model.tie_embeddings = False
  c.model.d_model = 128
  c.model.num_layers = 3
  c.model.num_decoder_layers = 3
  c.model.num_heads = 4
  c.model.mlp_dim = 384
  c.model.max_len = 128
  c.train.batch_size = 32
  c.train.steps = 300
  c.train.lr = 2e-3
  c.train.warmup_steps = 40
  c.train.b2 = 0.99
  c.train.weight_decay = 0.01
  c.train.log_every = 20
  c.eval.every = 300
  c.eval.batch_size = 32
  c.eval.max_batches = 20
  c.eval.sample_tokens = 0
  c.checkpoint.every = 300
  # One XLA device per core of a 2-core CPU, parameters and optimizer state sharded over both.
  c.mesh.cpu_devices = 2
  c.mesh.data, c.mesh.fsdp = 1, -1
  return c
