"""Token-level scoring of packed data with a compiled engine: NLL, perplexity, bits per byte.

The per-batch sums of `eval_step` are added up on the devices and read to the host once, at the
end, so evaluation never waits on a batch. Counts (tokens, correct predictions) are integers, kept
as two int32 words so they stay exact past int32 (JAX has no int64 unless x64 is switched on
globally). The NLL total is a float32 compensated sum (see `_two_sum`).
"""

import math

import jax
import jax.numpy as jnp

from jaxlm.data import PackedTokens, eval_batches
from jaxlm.data.records import PackedRecords
from jaxlm.training.engine import Engine

Totals = dict[str, jax.Array]
COUNTS = ("weight_sum", "correct_sum")
# A count is high * 2**LOW_BITS + low with 0 <= low < 2**LOW_BITS, in int32: exact up to 2**61.
# Adding a batch's count (below 2**LOW_BITS: a billion tokens) to low cannot overflow int32.
LOW_BITS = 30


def _two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(s, err) with s = fl(a + b) and a + b == s + err exactly (Knuth's TwoSum, any magnitudes)."""
  s = a + b
  b_part = s - a
  err = (a - (s - b_part)) + (b - b_part)
  return s, err


def _add_count(count: jax.Array, batch_count: jax.Array) -> jax.Array:
  """`count  # [2] int32 (high, low)` plus a batch's int32 count, carried into the high word."""
  low = count[1] + batch_count.astype(jnp.int32)
  return jnp.stack([count[0] + (low >> LOW_BITS), low & (2**LOW_BITS - 1)])


@jax.jit
def accumulate(totals: Totals | None, sums: dict[str, jax.Array]) -> Totals:
  """Totals plus one batch's `eval_step` sums, on device; `totals` None starts from zero.

  The NLL total is a float32 pair (sum, correction): TwoSum makes each addition's rounding error
  exact and it goes into the correction, so the total stays accurate over any number of batches
  (float32 adds would drift by up to batches * 2**-24 relative). float64 is not used because JAX
  leaves it off by default and TPUs lack it.
  """
  if totals is None:  # a separate trace: jit specialises on the pytree structure
    totals = {"nll_sum": jnp.zeros(2, jnp.float32),
              **{name: jnp.zeros(2, jnp.int32) for name in COUNTS}}
  nll, err = _two_sum(totals["nll_sum"][0], sums["nll_sum"].astype(jnp.float32))
  return {"nll_sum": jnp.stack([nll, totals["nll_sum"][1] + err]),
          **{name: _add_count(totals[name], sums[name]) for name in COUNTS}}


def read_totals(totals: Totals) -> dict[str, float | int]:
  """The totals on the host, in one read: the NLL sum as a float, the counts as exact ints."""
  host = jax.device_get(totals)
  nll, correction = (float(x) for x in host["nll_sum"])
  return {"nll_sum": nll + correction,
          **{name: int(host[name][0]) * 2**LOW_BITS + int(host[name][1]) for name in COUNTS}}


def evaluate_split(engine: Engine, params, packed: PackedTokens | PackedRecords, batch_size: int,
                   max_batches: int, bytes_per_token: float) -> dict[str, float]:
  """Metrics over `packed` (every target of it when max_batches is 0), summed on device, read once.

  `bytes_per_token`: UTF-8 bytes of the split's text per scored token (see corpus.pack_split).
  For a masked-LM model the loss is over the masked tokens, so `bits_per_byte` has no meaning
  there; the caller decides what to show.
  """
  feed = engine.eval_feed(batch_size)  # this process reads block `feed.block` of each batch
  totals = None
  batches = eval_batches(packed, feed.local_rows, feed.block, feed.blocks, max_batches or None)
  for index, rows in enumerate(batches):
    # The batch number fixes a masked-LM evaluation's masks: the same numbers on every run.
    sums = engine.eval_step(params, feed.assemble(rows), index)
    totals = accumulate(totals, sums)
  totals = read_totals(totals)
  tokens = totals["weight_sum"]
  loss = totals["nll_sum"] / tokens
  return {
      "loss": loss,
      "perplexity": math.exp(loss),
      "bits_per_byte": loss / math.log(2) / bytes_per_token,
      "token_accuracy": totals["correct_sum"] / tokens,
      "tokens": tokens,
  }


def evaluate_sets(engine: Engine, params, sets, batch_size: int,
                  max_batches: int) -> dict[str, dict[str, float]]:
  """`evaluate_split` of every (name, packed, bytes per token) in `sets`, by name; with several,
  also "" overall: the NLL and counts of all their tokens together (weighted by tokens)."""
  results = {name: evaluate_split(engine, params, packed, batch_size, max_batches, bytes_per_token)
             for name, packed, bytes_per_token in sets}
  if len(results) > 1:
    tokens = sum(r["tokens"] for r in results.values())
    nll = sum(r["loss"] * r["tokens"] for r in results.values())
    num_bytes = sum(r["tokens"] * bpt for (_, _, bpt), r in zip(sets, results.values()))
    loss = nll / tokens
    results[""] = {"loss": loss, "perplexity": math.exp(loss),
                   "bits_per_byte": nll / math.log(2) / num_bytes,
                   "token_accuracy": sum(r["token_accuracy"] * r["tokens"]
                                         for r in results.values()) / tokens,
                   "tokens": tokens}
  return results
