"""The compiled pieces of a run: model, optimizer, sharded state and the jitted steps on a mesh.

`build_engine` takes values (not the config), so the same model and shardings serve every entry
point and every test; `engine_for_config` is the one place that reads a run's config into those
values, and every entry point (train, evaluate, sample, convert, plan, tools/bench) calls it. The
model comes from the family registry (`models.make_model`) and the objective (causal LM, masked
LM or labels) from `objectives.objective_for`.
"""

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from jaxlm.data.dataset import DataConfig
from jaxlm.models import ModelConfig, lora, make_model
from jaxlm.errors import UserError
from jaxlm.parallel import sharding
from jaxlm.training.objectives import Objective, SpecialTokens, objective_for
from jaxlm.training.optim import OptimConfig, make_optimizer
from jaxlm.training.span_corruption import SpanTokens, shape_only_tokens, span_corruption_for
from jaxlm.training.step import (
  TrainState,
  eval_step,
  init_state,
  predict_step,
  train_step,
)


@dataclasses.dataclass(frozen=True)
class Engine:
  mesh: Mesh
  rules: tuple  # logical axis rules, without the activations' batch axis (set per step below)
  train_batch_axes: tuple[str, ...]  # mesh axes that split a training micro-batch
  eval_batch_axes: tuple[str, ...]  # mesh axes that split an evaluation batch
  model: nn.Module
  objective: Objective
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  state_shardings: TrainState  # NamedShardings, same tree as the state
  abstract_state: TrainState  # ShapeDtypeStructs with those shardings (a restore target)
  init: Callable[[], TrainState]
  from_params: Callable[[Any], TrainState]  # step 0 and fresh optimizer state for given params
  train_step: Callable[[TrainState, dict], tuple[TrainState, dict]]
  # (params, batch, batch number in the evaluation = 0) -> sums; the number fixes MLM masks.
  eval_step: Callable[..., dict]
  predict_step: Callable[[Any, dict], jax.Array]  # argmax ids [batch, seq], replicated

  @contextlib.contextmanager
  def context(self, batch_axes: tuple[str, ...] | None = None):
    """Mesh and logical-axis rules in scope (needed while tracing the model), with activations'
    batch axis split over `batch_axes` (default: training's)."""
    rules = sharding.with_batch_axes(self.rules, batch_axes or self.train_batch_axes)
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(rules):
      yield

  def train_feed(self, batch_size: int, accum: int) -> sharding.BatchFeed:
    """Training batches `[accum, batch_size / accum, seq]`, and which rows this process reads."""
    return sharding.BatchFeed.create(self.mesh, self.train_batch_axes, batch_size, accum)

  def eval_feed(self, batch_size: int) -> sharding.BatchFeed:
    """Evaluation batches `[batch_size, seq]`, and which rows this process reads."""
    return sharding.BatchFeed.create(self.mesh, self.eval_batch_axes, batch_size)

  def traced(self, fn: Callable, batch_axes: tuple[str, ...]) -> Callable:
    @functools.wraps(fn)
    def call(*args):
      with self.context(batch_axes):
        return fn(*args)
    return call


def build_engine(model_cfg: ModelConfig, optim_cfg: OptimConfig, mesh: Mesh, rules,
                 seed: int, seq_len: int, z_loss: float = 0.0,
                 train_batch_axes: tuple[str, ...] = sharding.BATCH_AXES,
                 eval_batch_axes: tuple[str, ...] | None = None,
                 spike_sigma: float = 0.0, objective: Objective | None = None) -> Engine:
  """The engine of a model on `mesh`; `objective` None takes `objective_for(model_cfg)` with no
  special tokens and BERT's masking defaults."""
  rules = tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)
  eval_batch_axes = eval_batch_axes or train_batch_axes
  model = make_model(model_cfg)
  if objective is None:
    objective = objective_for(model_cfg, None, 0.15, False)
  tx, schedule = make_optimizer(optim_cfg)
  make_state = functools.partial(init_state, model, tx, seed, seq_len)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(make_state)
  check_lora_targets(model_cfg, boxed.params)
  state_shardings = sharding.logical_shardings(boxed, mesh, rules)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      nn.unbox(boxed), state_shardings)

  params_shardings = state_shardings.params
  train_batch = sharding.batch_sharding(mesh, train_batch_axes, leading_dims=1)  # [accum, b, seq]
  eval_batch = sharding.batch_sharding(mesh, eval_batch_axes)  # [batch, seq]
  scalar = sharding.replicated(mesh)
  jit_init = jax.jit(lambda: nn.unbox(make_state()), out_shardings=state_shardings)
  base_dtype = model_cfg.lora.base_dtype if model_cfg.lora else None
  jit_from_params = jax.jit(lambda params: TrainState.create(params, tx, base_dtype),
                            in_shardings=(params_shardings,), out_shardings=state_shardings)
  lora_dropout = model_cfg.lora is not None and model_cfg.lora.dropout > 0
  jit_train = jax.jit(
      functools.partial(train_step, model=model, tx=tx, schedule=schedule, z_loss=z_loss,
                        seed=seed, spike_sigma=spike_sigma,
                        use_dropout=model_cfg.dropout > 0 or lora_dropout,
                        objective=objective),
      in_shardings=(state_shardings, train_batch), out_shardings=(state_shardings, scalar),
      donate_argnums=0)
  jit_eval = jax.jit(functools.partial(eval_step, model=model, objective=objective),
                     in_shardings=(params_shardings, eval_batch, scalar), out_shardings=scalar)
  jit_predict = jax.jit(functools.partial(predict_step, model=model),
                        in_shardings=(params_shardings, eval_batch), out_shardings=scalar)
  engine = Engine(mesh, rules, tuple(train_batch_axes), tuple(eval_batch_axes), model, objective,
                  tx, schedule, state_shardings, abstract_state, init=None, from_params=None,
                  train_step=None, eval_step=None, predict_step=None)
  train_axes, eval_axes = engine.train_batch_axes, engine.eval_batch_axes
  traced_eval = engine.traced(jit_eval, eval_axes)

  def run_eval(params, batch, index=0):
    # A host scalar (not a device array): every process passes the same value, as multi-host
    # jit requires of replicated inputs.
    return traced_eval(params, batch, np.asarray(index, np.int32))

  return dataclasses.replace(engine, init=engine.traced(jit_init, train_axes),
                             from_params=engine.traced(jit_from_params, train_axes),
                             train_step=engine.traced(jit_train, train_axes),
                             eval_step=run_eval,
                             predict_step=engine.traced(jit_predict, eval_axes))


def mesh_for_config(config: ml_collections.ConfigDict) -> tuple[Mesh, tuple[str, ...],
                                                              tuple[str, ...]]:
  """(mesh, training batch axes, evaluation batch axes); raises if the batches do not fit it."""
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
  train_axes = sharding.check_batch(config.train.batch_size, config.train.grad_accum_steps, mesh,
                                    "train.batch_size")
  eval_axes = sharding.check_batch(config.eval.batch_size, 1, mesh, "eval.batch_size")
  return mesh, train_axes, eval_axes


def model_config(config: ml_collections.ConfigDict, vocab_size: int,
                 target_vocab_size: int = 0) -> ModelConfig:
  """The run's architecture, with its LoRA adapters (train.lora) if any; `target_vocab_size`: a
  separate target tokenizer's size (0: shared, see data/target_vocab.py)."""
  return ModelConfig.from_config(config.model, vocab_size=vocab_size,
                                 lora=lora.lora_config(config.train.lora),
                                 target_vocab_size=target_vocab_size)


def check_lora_targets(model_cfg: ModelConfig, params) -> None:
  """Refuses LoRA targets that match none of the projections of (abstract) `params`."""
  if model_cfg.lora is not None and not lora.has_adapters(params):
    raise UserError(f"train.lora.targets={model_cfg.lora.targets!r} matches no projection of "
                    "this model; use attention, mlp, all or a pattern over module paths such as "
                    "block_0/attn/qkv")


def encdec_objective(config: ml_collections.ConfigDict,
                     special: SpanTokens | None) -> Objective | None:
  """Span corruption for an encoder-decoder on text, None for seq2seq data or other families."""
  if config.model.family != "encdec" or config.model.head != "lm":
    return None
  data = config.data
  tokens = special or shape_only_tokens(config.data.vocab_size, data.num_sentinels)
  return span_corruption_for(DataConfig.from_config(data).resolved_format, data.seq_len,
                             data.target_len, config.train.noise_density,
                             config.train.mean_noise_span, tokens)


def engine_for_config(config: ml_collections.ConfigDict, vocab_size: int,
                      special: SpecialTokens | None = None, target_vocab_size: int = 0) -> Engine:
  """The engine of a run's config, on all devices: what every entry point builds.

  Training and evaluation batches are checked against the mesh separately, so each gets its own
  batch split (an awkward eval.batch_size never changes how training is sharded). `special`: the
  tokenizer's special tokens, for a masked-LM run (None: shapes only, see `objective_for`).
  `target_vocab_size`: a separate target tokenizer's size (0: one shared vocabulary).
  """
  mesh, train_axes, eval_axes = mesh_for_config(config)
  model_cfg = model_config(config, vocab_size, target_vocab_size)
  objective = objective_for(model_cfg, special, config.train.mlm_probability,
                            config.train.whole_word_masking, encdec_objective(config, special))
  return build_engine(model_cfg, OptimConfig.from_config(config.train), mesh, config.mesh.rules,
                      config.train.seed, config.data.seq_len, config.train.z_loss, train_axes,
                      eval_axes, config.train.spike_sigma, objective)
