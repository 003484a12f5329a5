"""Checkpoints round-trip every item and restore onto a different mesh."""

import jax
import numpy as np
import pytest

from jaxlm.config import base_config
from jaxlm.errors import UserError
from jaxlm.parallel import sharding
from jaxlm.training import checkpoint
from jaxlm.training.engine import build_engine
from jaxlm.training.optim import OptimConfig

RULES = base_config().mesh.rules


def engine_on(cfg, mesh):
  return build_engine(cfg, OptimConfig(), mesh, RULES, seed=0, seq_len=16)


# (data, fsdp, tensor) meshes: 8 -> 1, 1 -> 8, fsdp -> tensor, data -> fsdp, fsdp x tensor -> data x tensor.
@pytest.mark.parametrize("source, target", [((1, 8, 1), (1, 1, 1)), ((1, 1, 1), (1, 8, 1)),
                                            ((1, 8, 1), (2, 1, 4)), ((8, 1, 1), (1, 8, 1)),
                                            ((1, 4, 2), (2, 1, 4))],
                         ids=["8to1", "1to8", "fsdp_to_tensor", "data_to_fsdp", "fsdp_tensor_to_data_tensor"])
def test_restore_onto_another_mesh_gives_the_same_values(tmp_path, tiny_model_cfg, source, target):
  saved = engine_on(tiny_model_cfg, sharding.make_mesh(*source, jax.devices()[:np.prod(source)]))
  state = saved.init()
  mngr = checkpoint.manager(str(tmp_path), keep=2)
  checkpoint.save(mngr, 7, state, {"model": {"d_model": 32}}, {"kind": "byte"}, {"next_index": 5})
  mngr.wait_until_finished()
  mngr.close()

  assert checkpoint.restore_metadata(str(tmp_path)) == (7, {"model": {"d_model": 32}}, {"kind": "byte"})
  target_engine = engine_on(tiny_model_cfg, sharding.make_mesh(*target, jax.devices()[:np.prod(target)]))
  with checkpoint.manager(str(tmp_path), read_only=True) as mngr:
    restored, data_state = checkpoint.restore(mngr, 7, target_engine.abstract_state)
  assert data_state == {"next_index": 5}
  for a, b, want in zip(jax.tree.leaves(state), jax.tree.leaves(restored),
                        jax.tree.leaves(target_engine.state_shardings)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert b.sharding.is_equivalent_to(want, b.ndim)


def test_a_missing_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(UserError, match="no checkpoint in"):
    checkpoint.restore_metadata(str(tmp_path))
