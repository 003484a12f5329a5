"""Model families and the layers they share.

`models.config.ModelConfig` holds every architecture option; `layers.py` the shared layers; one
module per family (`gpt.py`, `bert.py`), each called as
`model.apply({"params": p}, inputs, positions, segment_ids, deterministic, token_types)`.
"""

import flax.linen as nn

from jaxlm.models import lora
from jaxlm.models.bert import Bert
from jaxlm.models.config import ModelConfig
from jaxlm.models.gpt import GPT
from jaxlm.models.layers import apply_rope, stack_layers, unstack_layers

# model.family -> its module class.
FAMILIES = {"gpt": GPT, "bert": Bert}


def make_model(cfg: ModelConfig, decode: bool = False) -> nn.Module:
  """The model of `cfg.family`; `decode=True` (a KV cache) exists for GPT only."""
  return FAMILIES[cfg.family](cfg, decode=decode)


__all__ = ["FAMILIES", "GPT", "Bert", "ModelConfig", "apply_rope", "lora", "make_model", "stack_layers",
           "unstack_layers"]
