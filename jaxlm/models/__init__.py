"""Model families and the layers they share.

`models.config.ModelConfig` holds every architecture option; `layers.py` the shared layers; one
module per family (`gpt.py`).
"""

from jaxlm.models.config import ModelConfig
from jaxlm.models.gpt import GPT
from jaxlm.models.layers import apply_rope, stack_layers, unstack_layers

__all__ = ["GPT", "ModelConfig", "apply_rope", "stack_layers", "unstack_layers"]
