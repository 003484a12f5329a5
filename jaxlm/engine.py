"""The compiled pieces of a run: model, optimizer, sharded state and the jitted steps on a mesh.

`train`, `evaluate` and `sample` all build an `Engine` from values (not the config), so the same
model and shardings serve every entry point and every test.
"""

import contextlib
import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import optax
from jax.sharding import Mesh

from jaxlm import sharding
from jaxlm.model import GPT, ModelConfig
from jaxlm.optim import OptimConfig, make_optimizer
from jaxlm.step import TrainState, eval_step, init_state, train_step


@dataclasses.dataclass(frozen=True)
class Engine:
  mesh: Mesh
  rules: tuple
  batch_axes: tuple[str, ...]  # mesh axes that split the batch
  model: GPT
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  state_shardings: TrainState  # NamedShardings, same tree as the state
  abstract_state: TrainState  # ShapeDtypeStructs with those shardings (a restore target)
  init: Callable[[], TrainState]
  from_params: Callable[[Any], TrainState]  # step 0 and fresh optimizer state for given params
  train_step: Callable[[TrainState, dict], tuple[TrainState, dict]]
  eval_step: Callable[[Any, dict], dict]

  @contextlib.contextmanager
  def context(self):
    """Mesh and logical-axis rules in scope: needed while tracing the model."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      yield

  def batch_sharding(self, leading_dims: int = 0):
    return sharding.batch_sharding(self.mesh, self.batch_axes, leading_dims)

  def traced(self, fn: Callable) -> Callable:
    @functools.wraps(fn)
    def call(*args):
      with self.context():
        return fn(*args)
    return call


def build_engine(model_cfg: ModelConfig, optim_cfg: OptimConfig, mesh: Mesh, rules,
                 seed: int, seq_len: int, z_loss: float = 0.0,
                 batch_axes: tuple[str, ...] = sharding.BATCH_AXES,
                 spike_sigma: float = 0.0) -> Engine:
  rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)
  rules = sharding.with_batch_axes(rules, batch_axes)
  model = GPT(model_cfg)
  tx, schedule = make_optimizer(optim_cfg)
  make_state = functools.partial(init_state, model, tx, seed, seq_len)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(make_state)
  state_shardings = sharding.logical_shardings(boxed, mesh, rules)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      nn.unbox(boxed), state_shardings)

  params_shardings = state_shardings.params
  batch3 = sharding.batch_sharding(mesh, batch_axes, leading_dims=1)  # [accum, batch, seq]
  batch2 = sharding.batch_sharding(mesh, batch_axes)  # [batch, seq]
  scalar = sharding.replicated(mesh)
  jit_init = jax.jit(lambda: nn.unbox(make_state()), out_shardings=state_shardings)
  jit_from_params = jax.jit(lambda params: TrainState.create(params, tx),
                            in_shardings=(params_shardings,), out_shardings=state_shardings)
  jit_train = jax.jit(
      functools.partial(train_step, model=model, tx=tx, schedule=schedule, z_loss=z_loss,
                        seed=seed, use_dropout=model_cfg.dropout > 0, spike_sigma=spike_sigma),
      in_shardings=(state_shardings, batch3), out_shardings=(state_shardings, scalar),
      donate_argnums=0)
  jit_eval = jax.jit(functools.partial(eval_step, model=model),
                     in_shardings=(params_shardings, batch2), out_shardings=scalar)
  engine = Engine(mesh, rules, batch_axes, model, tx, schedule, state_shardings, abstract_state,
                  init=None, from_params=None, train_step=None, eval_step=None)
  return dataclasses.replace(engine, init=engine.traced(jit_init),
                             from_params=engine.traced(jit_from_params),
                             train_step=engine.traced(jit_train),
                             eval_step=engine.traced(jit_eval))
