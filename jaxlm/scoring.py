"""Token-level scoring of packed data with a compiled engine: NLL, perplexity, bits per byte."""

import math

import jax
import numpy as np

from jaxlm import sharding
from jaxlm.data import PackedTokens, eval_batches
from jaxlm.data.records import PackedRecords
from jaxlm.engine import Engine


def evaluate_split(engine: Engine, params, packed: PackedTokens | PackedRecords, batch_size: int,
                   max_batches: int, bytes_per_token: float) -> dict[str, float]:
  """Metrics over `packed` (all of it when max_batches is 0), summed on device, read once."""
  batch_spec = engine.batch_sharding()
  local_batch = batch_size // jax.process_count()
  totals = None
  for rows in eval_batches(packed, local_batch, jax.process_index(), jax.process_count(),
                           max_batches or None):
    sums = engine.eval_step(params, sharding.global_batch(rows, batch_spec))
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
  totals = jax.tree.map(float, jax.device_get(totals))
  tokens = totals["weight_sum"]
  loss = totals["nll_sum"] / tokens
  return {
      "loss": loss,
      "perplexity": math.exp(loss),
      "bits_per_byte": loss / math.log(2) / bytes_per_token,
      "token_accuracy": totals["correct_sum"] / tokens,
      "tokens": int(tokens),
  }
