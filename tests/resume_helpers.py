"""A check shared by the objectives' tests: training resumed from a checkpoint is bit-identical."""

import jax
import numpy as np

from jaxlm.training import checkpoint


def assert_resume_is_bit_identical(engine, batches: list, directory: str, at: int = 2) -> None:
  """`engine.train_step` over `batches` straight through, then again with the state saved after
  `at` steps and restored: the same metrics and parameters, bit for bit."""
  state, straight = engine.init(), []
  for batch in batches:
    state, metrics = engine.train_step(state, batch)
    straight.append(jax.device_get(metrics))
  straight_params = jax.device_get(state.params)

  state = engine.init()
  for batch in batches[:at]:
    state, _ = engine.train_step(state, batch)
  mngr = checkpoint.manager(directory, keep=1)
  checkpoint.save(mngr, at, state, {}, {}, {})
  mngr.wait_until_finished()
  mngr.close()
  del state
  with checkpoint.manager(directory, read_only=True) as reader:
    state, _ = checkpoint.restore(reader, at, engine.abstract_state)
  for batch, expected in zip(batches[at:], straight[at:]):
    state, metrics = engine.train_step(state, batch)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(metrics), expected)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), straight_params)
