"""Model families and the layers they share.

`models.config.ModelConfig` holds every architecture option; `layers.py` the shared layers; one
module per family (`gpt.py`, `bert.py`, `encdec.py`), each called as
`model.apply({"params": p}, inputs, positions, segment_ids, deterministic, token_types)` (an
encdec model also takes the `encoder_*` keyword arguments).
"""

import flax.linen as nn

from jaxlm.models import lora
from jaxlm.models.bert import Bert
from jaxlm.models.config import ModelConfig
from jaxlm.models.encdec import EncDec
from jaxlm.models.gpt import GPT
from jaxlm.models.layers import apply_rope, stack_layers, unstack_layers

# model.family -> its module class.
FAMILIES = {"gpt": GPT, "bert": Bert, "encdec": EncDec}


def make_model(cfg: ModelConfig, decode: bool = False) -> nn.Module:
  """The model of `cfg.family`; `decode=True` (a KV cache) exists for GPT and EncDec."""
  return FAMILIES[cfg.family](cfg, decode=decode)


__all__ = ["FAMILIES", "GPT", "Bert", "EncDec", "ModelConfig", "apply_rope", "lora", "make_model",
           "stack_layers", "unstack_layers"]
