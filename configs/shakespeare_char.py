"""nanoGPT's CPU recipe for char-level Shakespeare, option for option.

    python -m jaxlm.train --config=configs/shakespeare_char.py \
        --config.data.path=../shared/data/tinyshakespeare.txt --workdir=runs/shakespeare

One file, so validation is its last 10% of characters, as nanoGPT splits it. nanoGPT's model has no
biases and exact GELU; GELU here is the tanh form GPT-2 itself used.
"""

from jaxlm.recipes import shakespeare_char_config


def get_config():
  c = shakespeare_char_config()
  c.eval.every = 250
  c.eval.sample_tokens = 128
  c.checkpoint.every = 500
  return c
