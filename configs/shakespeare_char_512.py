"""A 512-wide, 8-layer char-level Shakespeare model at T=256: the CPU MFU benchmark of issue #5.

    python tools/bench.py --config=configs/shakespeare_char_512.py \
        --config.data.path=../shared/data/tinyshakespeare.txt
    python -m jaxlm.train --config=configs/shakespeare_char_512.py \
        --config.data.path=../shared/data/tinyshakespeare.txt --workdir=runs/shakespeare_512

nanoGPT's char recipe scaled up (about 25M parameters; 8 heads of 64, a 2048-wide GELU MLP), with
batches of 16 x 256 tokens. On a CPU its matmuls are large enough to run near the machine's peak,
unlike the 128-wide model's. Measurements: docs/benchmarks.md.
"""

from jaxlm.recipes import shakespeare_char_config


def get_config():
  c = shakespeare_char_config()
  c.data.seq_len = c.model.max_len = 256
  c.model.d_model, c.model.num_layers, c.model.num_heads, c.model.mlp_dim = 512, 8, 8, 2048
  c.train.batch_size = 16
  c.train.lr = 6e-4
  c.eval.batch_size = 16
  c.eval.every = 500
  c.eval.max_batches = 40
  return c
