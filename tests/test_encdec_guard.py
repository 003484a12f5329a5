"""The update guard for encoder-decoders, as for GPTs (test_guard.py): a non-finite seq2seq batch
or a blown-up span-corruption run never reaches the parameters or optimizer state, the spike
guard skips an outlier span-corruption batch, and train.on_nonfinite=stop names the step and
writes no non-finite checkpoint."""

import jax
import numpy as np
import pytest
from test_encdec_cli import GERMAN, WORDS, tiny_t5_config
from test_encdec_training import t5_cfg  # noqa: F401  (a fixture)
from test_encdec_training import SEQ, seq2seq_batch, span_engine, text_batch
from test_guard import RULES, assert_a_nan_batch_is_refused, same
from test_train import write_corpus

from jaxlm.errors import UserError
from jaxlm.inference import trained
from jaxlm.parallel import sharding
from jaxlm.training import checkpoint
from jaxlm.training.engine import build_engine
from jaxlm.training.loop import train
from jaxlm.training.objectives import SEQ2SEQ
from jaxlm.training.optim import OptimConfig

ROWS = 8


@pytest.fixture(scope="module")
def one_device():
  return sharding.make_mesh(1, 1, 1, jax.devices()[:1])


def adam(lr: float) -> OptimConfig:
  return OptimConfig(lr=lr, warmup_steps=0, steps=100)


def finite(tree) -> bool:
  return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree))


def test_a_nan_seq2seq_batch_leaves_parameters_and_optimizer_state_untouched(t5_cfg,
                                                                            one_device):
  engine = build_engine(t5_cfg, adam(1e-2), one_device, RULES, 0, SEQ, objective=SEQ2SEQ)
  assert_a_nan_batch_is_refused(engine, seq2seq_batch(ROWS), seq2seq_batch(ROWS, seed=1))


def test_a_huge_learning_rate_never_puts_non_finite_values_in_a_span_corruption_state(
    t5_cfg, one_device):
  engine = span_engine(t5_cfg, one_device, adam(1e12))
  state, losses = engine.init(), []
  for step in range(6):
    state, metrics = engine.train_step(state, text_batch(ROWS, step))
    losses.append(float(metrics["loss"]) + float(metrics["grad_norm"]))
  assert not all(np.isfinite(losses))  # the run did blow up...
  assert int(state.guard.skipped) >= 1
  assert finite(state)  # ...the state did not


def test_the_spike_guard_skips_an_outlier_span_corruption_batch(t5_cfg, one_device):
  engine = span_engine(t5_cfg, one_device, adam(3e-2), spike_sigma=3.0)
  state = engine.init()
  steady = text_batch(ROWS, 0)
  for _ in range(40):  # memorise one batch's documents (other spans each step): a low loss
    state, metrics = engine.train_step(state, steady)
  steady_loss = float(metrics["loss"])
  document = steady["segment_ids"] > 0
  outlier = dict(steady, inputs=np.where(document, (steady["inputs"] * 7 + 3) % 50 + 2,
                                         steady["inputs"]))
  outlier["inputs"][..., 0] = outlier["inputs"][..., 11] = steady["inputs"][..., 0]  # EOS kept
  params = jax.device_get(state.params)
  state, metrics = engine.train_step(state, outlier)
  assert float(metrics["loss"]) > steady_loss
  assert int(state.guard.skipped) == 1 and same(params, state.params)
  state, _ = engine.train_step(state, steady)  # the steady batch is applied again
  assert int(state.guard.skipped) == 1 and not same(params, state.params)


def test_stop_mode_names_the_step_and_writes_no_non_finite_checkpoint(tmp_path):
  config = tiny_t5_config(write_corpus(tmp_path / "corpus", words=tuple(WORDS) +
                                       tuple(GERMAN.values())))
  config.data.num_sentinels = 16
  config.train.on_nonfinite, config.train.lr, config.train.warmup_steps = "stop", 1e12, 0
  config.train.steps, config.train.log_every, config.checkpoint.every = 10, 1, 1
  workdir = str(tmp_path / "run")
  with pytest.raises(UserError, match=r"non-finite loss or gradient at step \d+"):
    train(config, workdir)
  for step in checkpoint.latest_steps(workdir):
    assert finite(trained.load(workdir, step).params)
