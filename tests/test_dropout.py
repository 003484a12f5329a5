"""Dropout in training: it changes the gradient, its mask is fixed by (seed, step, micro-batch),
it is off in evaluation, and a run resumed from a checkpoint draws the masks of an unbroken run."""

import dataclasses
import os
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import base_config
from jaxlm.inference import trained
from jaxlm.models import GPT
from jaxlm.parallel import sharding
from jaxlm.training import checkpoint
from jaxlm.training.engine import build_engine
from jaxlm.training.loop import train
from jaxlm.training.optim import OptimConfig

RULES = base_config().mesh.rules
SEQ = 16
RATE = 0.2


def make_batch(vocab: int, rows: int = 4) -> dict:
  """One micro-batch `[1, rows, SEQ]`, two documents per row."""
  rng = np.random.default_rng(0)
  shape = (1, rows, SEQ)
  positions = np.concatenate([np.arange(SEQ // 2)] * 2).astype(np.int32)
  segments = np.repeat(np.array([1, 2], np.int32), SEQ // 2)
  return {"inputs": rng.integers(0, vocab, shape).astype(np.int32),
          "targets": rng.integers(0, vocab, shape).astype(np.int32),
          "positions": np.broadcast_to(positions, shape).copy(),
          "segment_ids": np.broadcast_to(segments, shape).copy(),
          "weights": np.ones(shape, np.float32)}


# Plain SGD with lr 1: a step's parameter change is minus the gradient.
SGD = OptimConfig(optimizer="sgd", momentum=0.0, lr=1.0, weight_decay=0.0, warmup_steps=0,
                  schedule="constant", grad_clip=0.0)


def engine_for(cfg, seed: int = 0):
  mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])
  return build_engine(cfg, SGD, mesh, RULES, seed, SEQ)


@pytest.fixture(scope="module")
def setup(tiny_model_cfg):
  """(config without dropout, with dropout, shared initial parameters)."""
  plain = tiny_model_cfg
  dropped = dataclasses.replace(tiny_model_cfg, dropout=RATE)
  tokens = jnp.zeros((1, SEQ), jnp.int32)
  params = nn.unbox(GPT(plain).init(jax.random.key(0), tokens, tokens, tokens + 1)["params"])
  # Weight matrices x10: at init the logits' spread is ~0.1 and a mask moves the loss by only
  # ~5e-3; x10 makes each mask's effect large against float32 rounding (~1e-6 of the loss).
  params = jax.tree.map(lambda x: x * 10 if x.ndim >= 2 else x, params)
  return plain, dropped, jax.device_get(params)


def one_step(engine, params, batch, step: int = 0):
  """(loss, gradient) of one train step from `params` at `step`; a fresh state each call because
  train_step donates its input."""
  state = engine.from_params(params)
  state = state.replace(step=jnp.asarray(step, jnp.int32))
  state, metrics = engine.train_step(state, batch)
  grads = jax.tree.map(lambda old, new: old - new, params, jax.device_get(state.params))
  return float(metrics["loss"]), grads


def different(grads_a, grads_b) -> bool:
  """Gradients apart by more than float32 rounding could make (~1e-6 relative): another mask."""
  a, b = (np.concatenate([x.ravel() for x in jax.tree.leaves(g)]) for g in (grads_a, grads_b))
  return float(np.linalg.norm(a - b) / np.linalg.norm(b)) > 1e-2


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_dropout_changes_the_training_gradient_and_is_off_in_evaluation(setup):
  plain, dropped, params = setup
  batch = make_batch(plain.vocab_size)
  _, plain_grads = one_step(engine_for(plain), params, batch)
  _, dropped_grads = one_step(engine_for(dropped), params, batch)
  assert different(dropped_grads, plain_grads)
  # Evaluation (deterministic) ignores the rate: the logits equal the dropout-free model's.
  flat = {k: v[0] for k, v in batch.items()}
  args = (flat["inputs"], flat["positions"], flat["segment_ids"])
  np.testing.assert_array_equal(GPT(dropped).apply({"params": params}, *args),
                                GPT(plain).apply({"params": params}, *args))


def test_the_mask_is_fixed_by_seed_step_and_micro_batch(setup):
  plain, dropped, params = setup
  batch = make_batch(plain.vocab_size)
  engine = engine_for(dropped)
  loss, grads = one_step(engine, params, batch)
  again_loss, again_grads = one_step(engine, params, batch)
  assert again_loss == loss
  assert_trees_equal(again_grads, grads)  # the same mask
  # Another step or seed draws another mask. Without dropout the step changes nothing, so the
  # difference is the mask's.
  assert different(one_step(engine, params, batch, step=1)[1], grads)
  assert different(one_step(engine_for(dropped, seed=1), params, batch)[1], grads)
  plain_engine = engine_for(plain)
  assert_trees_equal(one_step(plain_engine, params, batch, step=1)[1],
                     one_step(plain_engine, params, batch)[1])
  # Two identical micro-batches: with one mask for both, their mean gradient would be one's alone.
  twice = {k: np.concatenate([v, v]) for k, v in batch.items()}  # [2, rows, SEQ]
  assert different(one_step(engine, params, twice)[1], grads)


def run_config(data_dir: str):
  c = base_config()
  c.data.source, c.data.path, c.data.tokenizer = "files", data_dir, "char"
  c.data.seq_len = c.model.max_len = SEQ
  c.data.val_fraction = 0.2
  c.model.d_model, c.model.num_layers, c.model.num_heads, c.model.mlp_dim = 32, 1, 2, 64
  c.model.dropout = RATE
  c.train.batch_size, c.train.steps, c.train.lr, c.train.warmup_steps = 8, 6, 3e-3, 2
  c.train.log_every, c.eval.every, c.eval.batch_size, c.eval.max_batches = 3, 0, 8, 1
  c.eval.sample_tokens, c.checkpoint.every, c.checkpoint.keep = 0, 3, 2
  return c


def test_resume_with_dropout_is_bit_identical(tmp_path):
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  rng = np.random.default_rng(0)
  words = "the a cat dog sat ran on under mat log".split()
  for doc in range(4):
    (data_dir / f"doc{doc}.txt").write_text(" ".join(rng.choice(words, size=200)))
  straight = str(tmp_path / "straight")
  train(run_config(str(data_dir)), straight)
  resumed = str(tmp_path / "resumed")
  shutil.copytree(straight, resumed)
  shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(resumed), "6"))  # "stopped" after step 3
  train(run_config(str(data_dir)), resumed)
  run = trained.load(resumed)
  assert run.step == 6
  assert_trees_equal(jax.device_get(run.params), jax.device_get(trained.load(straight).params))
