"""Char-level Shakespeare to nanoGPT's validation loss (1.886) in as little wall time as possible.

    python -m jaxlm.train --config=configs/shakespeare_char_fast.py \
        --config.data.path=../shared/data/tinyshakespeare.txt --workdir=runs/shakespeare_fast

Same data, tokenizer, split and size class as configs/shakespeare_char.py (4 layers x 128, T=64);
the recipe differs: RoPE instead of learned positions, RMSNorm, SwiGLU (two 344-wide input
projections, about the parameters of a 512-wide GELU MLP), a 3x larger learning rate with a short
warm-up, fewer steps, and one full evaluation at the end only. Measurements: docs/benchmarks.md.
"""

from jaxlm.recipes import shakespeare_char_config


def get_config():
  c = shakespeare_char_config()
  c.model.positions = "rope"
  c.model.norm = "rmsnorm"
  c.model.mlp = "swiglu"
  c.model.mlp_dim = 344
  c.train.lr = 3e-3
  c.train.warmup_steps = 50
  c.train.steps = 700
  c.eval.every = 0  # evaluate once, at the end (all 1,742 validation windows)
  c.eval.sample_tokens = 0
  c.checkpoint.every = 100000  # the final checkpoint only
  return c
