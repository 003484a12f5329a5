"""Which row counts a decode call may run without changing any request's output.

A decode step's cost grows with its rows, so with a few requests in a 16-slot server the
scheduler runs only the first rows (admission fills the lowest free slot). But a matmul's
summation order may depend on its rows: on XLA:CPU one row takes a matrix-vector kernel whose
results differ from a many-row product's in the last bits, and another threshold separates 16
rows from 32. A request's tokens and logprobs must not depend on its batch-mates, so the
row counts are chosen by experiment when the server starts: each candidate runs the same
prefilled slots as a call over every slot, and only those whose tokens and logprobs agree bit for
bit are kept. A request is then computed exactly as in a call over all slots, whichever row count
its batch-mates make the scheduler pick.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.serving.engine import DecodeState, Engine, pad_prompt, request_key, sampling_row


def candidates(slots: int) -> list[int]:
  """Powers of two below `slots`, and `slots`."""
  return [1 << i for i in range((slots - 1).bit_length()) if 1 << i < slots] + [slots]


def probe_state(engine: Engine, params: Any, state: DecodeState) -> DecodeState:
  """`state` with every slot holding a prefilled prompt of its own: different tokens, lengths,
  keys, and greedy and sampled rows alternating."""
  vocab, max_len = engine.cfg.vocab_size, engine.cfg.max_len
  for slot in range(engine.slots):
    prompt = [(7 * slot + 3 * i + 1) % vocab for i in range(1 + slot % min(max_len - 1, 11))]
    sampling = sampling_row(request_key(slot, 0), float(slot % 2), 0, 1.0)
    prefix = engine.prefill(params, pad_prompt(prompt, max_len), len(prompt), False, sampling)
    state = engine.insert(state, prefix, slot, engine.cache_length(len(prompt)), sampling)
  return state


def invariant_row_counts(engine: Engine, params: Any, state: DecodeState,
                         count: int) -> tuple[list[int], DecodeState]:
  """(The row counts whose `engine.steps` outputs equal those of all slots on this backend,
  ascending, all slots last; a state to continue from.) Compiles `steps` for each candidate."""
  state = probe_state(engine, params, state)
  copy = lambda s: jax.tree.map(jnp.copy, s)  # noqa: E731  (steps donates its state)
  # A first call from the inserted state: the calls below start, as serving does, from a
  # call's output (which JAX may place differently, another compilation).
  state, _, _ = engine.steps(params, state, count, engine.slots)
  reference = jax.tree.leaves(jax.device_get(engine.steps(params, copy(state), count,
                                                          engine.slots)[1:]))
  kept = []
  for rows in candidates(engine.slots)[:-1]:
    part = jax.tree.leaves(jax.device_get(engine.steps(params, copy(state), count, rows)[1:]))
    if all(np.array_equal(full[:, :rows], mine) for full, mine in zip(reference, part)):
      kept.append(rows)
  return [*kept, engine.slots], state
