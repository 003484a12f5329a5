"""The update guard (non-finite and spike) and preemption by SIGTERM / Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import REPO, subprocess_env
from test_step import SEQ, make_batch
from test_train import tiny_config, write_corpus

from jaxlm.config import base_config
from jaxlm.errors import UserError
from jaxlm.inference import trained
from jaxlm.parallel import sharding
from jaxlm.training import checkpoint
from jaxlm.training.engine import build_engine
from jaxlm.training.loop import train
from jaxlm.training.optim import OptimConfig

RULES = base_config().mesh.rules


def engine_with(cfg, spike_sigma=0.0, lr=1e-2):
  mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])
  return build_engine(cfg, OptimConfig(lr=lr, warmup_steps=0, steps=100), mesh, RULES, 0, SEQ,
                      spike_sigma=spike_sigma)


def same(a, b) -> bool:
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def assert_a_nan_batch_is_refused(engine, batch: dict, clean: dict) -> None:
  """`batch` with a NaN weight leaves the parameters and optimizer state untouched (and counts);
  `clean` after it is applied."""
  state = engine.init()
  before = jax.device_get((state.params, state.opt_state))
  poisoned = {**batch, "weights": batch["weights"].copy()}
  poisoned["weights"][0, 0, 0] = np.nan
  state, metrics = engine.train_step(state, poisoned)
  assert not np.isfinite(float(metrics["loss"]))
  assert same(before, (state.params, state.opt_state))
  assert int(state.guard.skipped) == 1 and int(state.guard.first_nonfinite) == 0
  assert int(state.step) == 1  # the batch is consumed: the data position moves on
  state, metrics = engine.train_step(state, clean)
  assert np.isfinite(float(metrics["loss"])) and not same(before[0], state.params)
  assert int(state.guard.skipped) == 1


def test_a_nan_batch_leaves_parameters_and_optimizer_state_untouched(tiny_model_cfg):
  assert_a_nan_batch_is_refused(engine_with(tiny_model_cfg),
                                make_batch(tiny_model_cfg.vocab_size, 8),
                                make_batch(tiny_model_cfg.vocab_size, 8))


def test_a_huge_learning_rate_never_puts_non_finite_values_in_the_parameters(tiny_model_cfg):
  engine = engine_with(tiny_model_cfg, lr=1e12)
  state = engine.init()
  losses = []
  for step in range(6):
    state, metrics = engine.train_step(state, make_batch(tiny_model_cfg.vocab_size, 8, seed=step))
    losses.append(float(metrics["loss"]))
  assert not all(np.isfinite(losses))  # the run did blow up...
  assert int(state.guard.skipped) >= 1
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state))  # ...the state did not


@pytest.mark.parametrize("sigma, skipped", [(3.0, 1), (0.0, 0)])
def test_the_spike_guard_skips_an_outlier_loss(tiny_model_cfg, sigma, skipped):
  engine = engine_with(tiny_model_cfg, spike_sigma=sigma, lr=1e-2)
  state = engine.init()
  steady = make_batch(tiny_model_cfg.vocab_size, 8)
  for _ in range(40):  # memorise one batch: a steady, low loss
    state, metrics = engine.train_step(state, steady)
  steady_loss = float(metrics["loss"])
  outlier = dict(steady, targets=(steady["targets"] * 7 + 3) % tiny_model_cfg.vocab_size)
  params = jax.device_get(state.params)
  state, metrics = engine.train_step(state, outlier)
  assert float(metrics["loss"]) > steady_loss
  assert int(state.guard.skipped) == skipped
  assert same(params, state.params) == bool(skipped)


def test_stop_mode_names_the_step_and_writes_no_non_finite_checkpoint(tmp_path):
  config = tiny_config(write_corpus(tmp_path / "corpus"), steps=10)
  config.train.on_nonfinite, config.train.lr, config.train.warmup_steps = "stop", 1e12, 0
  config.checkpoint.every, config.eval.sample_tokens = 1, 0
  workdir = str(tmp_path / "run")
  with pytest.raises(UserError, match=r"non-finite loss or gradient at step \d+"):
    train(config, workdir)
  for step in checkpoint.latest_steps(workdir):
    params = trained.load(workdir, step).params
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def start_training(tmp_path, steps: int) -> tuple[subprocess.Popen, str]:
  corpus = write_corpus(tmp_path / "corpus")
  config = tmp_path / "config.py"
  config.write_text(
      "from jaxlm.config import base_config\n"
      "def get_config():\n"
      "  c = base_config()\n"
      f"  c.data.source, c.data.tokenizer, c.data.path = 'files', 'char', {corpus!r}\n"
      "  c.data.seq_len = c.model.max_len = 32\n"
      "  c.model.d_model, c.model.num_layers, c.model.num_heads, c.model.mlp_dim = 32, 2, 2, 64\n"
      f"  c.train.batch_size, c.train.steps, c.train.log_every = 8, {steps}, 1\n"
      "  c.eval.every, c.eval.sample_tokens, c.checkpoint.every = 0, 0, 1000000\n"
      "  return c\n")
  workdir = str(tmp_path / "run")
  args = [sys.executable, "-m", "jaxlm.train", f"--config={config}", f"--workdir={workdir}"]
  process = subprocess.Popen(args, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  return process, workdir


def wait_for_steps(process, workdir: str, steps: int, timeout: float = 120) -> None:
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline and process.poll() is None:
    if os.path.exists(path) and sum(1 for _ in open(path)) >= steps:
      return
    time.sleep(0.05)
  raise AssertionError("training did not make progress")


def test_sigterm_saves_a_checkpoint_exits_0_and_the_rerun_resumes(tmp_path):
  process, workdir = start_training(tmp_path, steps=100000)
  try:
    wait_for_steps(process, workdir, 3)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
  finally:
    process.kill()
  assert process.returncode == 0, err[-2000:]
  stopped = json.loads(out.strip().splitlines()[-1])["stopped_at"]
  assert f"stopped at step {stopped}" in err and "rerun the same command" in err
  assert checkpoint.latest_step(workdir) == stopped
  rerun = subprocess.run(process.args + [f"--config.train.steps={stopped + 3}"], cwd=REPO,
                         env=subprocess_env(), capture_output=True, text=True, timeout=120)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert f"resumed from step {stopped}" in rerun.stderr
  assert trained.load(workdir).step == stopped + 3


def test_a_first_ctrl_c_asks_to_stop_and_a_second_quits_at_once():
  # A loop that would run for a minute, standing in for a long training step.
  code = ("import time, sys\n"
          "from jaxlm.training.preemption import Preemption\n"
          "with Preemption() as p:\n"
          "  print('ready', flush=True)\n"
          "  for _ in range(6000):\n"
          "    time.sleep(0.01)\n"
          "    if p.requested: print('requested', flush=True)\n")
  process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGINT)
    assert process.stdout.readline().strip() == "requested"  # the first one only asks
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
  finally:
    process.kill()
  assert process.returncode == 130
  assert "saving a checkpoint after this step" in err and "exiting now" in err
