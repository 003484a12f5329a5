"""Loss, masking, gradient accumulation, optimizers and sharded == unsharded on 8 devices."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxlm.config import base_config
from jaxlm.errors import UserError
from jaxlm.models import GPT
from jaxlm.parallel import sharding
from jaxlm.training.engine import build_engine
from jaxlm.training.optim import OptimConfig, decay_mask, make_schedule
from jaxlm.training.step import loss_fn

RULES = base_config().mesh.rules
SEQ = 16
SGD = OptimConfig(optimizer="sgd", momentum=0.0, lr=1.0, weight_decay=0.0, warmup_steps=0,
                  schedule="constant", grad_clip=0.0)


def make_batch(vocab: int, rows: int, seed: int = 0, accum: int = 1) -> dict:
  rng = np.random.default_rng(seed)
  shape = (accum, rows // accum, SEQ)
  segments = np.ones(shape, np.int32)
  segments[..., SEQ // 2:] = 2  # two documents per row
  positions = np.concatenate([np.arange(SEQ // 2)] * 2).astype(np.int32)
  weights = np.ones(shape, np.float32)
  weights[..., -3:] = 0.0  # padding
  return {"inputs": rng.integers(0, vocab, shape).astype(np.int32),
          "targets": rng.integers(0, vocab, shape).astype(np.int32),
          "positions": np.broadcast_to(positions, shape).copy(),
          "segment_ids": segments, "weights": weights}


@pytest.fixture(scope="module")
def one_device_engine(tiny_model_cfg):
  mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])
  return build_engine(tiny_model_cfg, OptimConfig(steps=10, warmup_steps=0), mesh, RULES, 0, SEQ)


def flat(batch):
  return {k: v.reshape(-1, SEQ) for k, v in batch.items()}


def test_loss_is_weighted_mean_of_independently_computed_cross_entropy(one_device_engine, tiny_model_cfg):
  params = one_device_engine.init().params
  batch = flat(make_batch(tiny_model_cfg.vocab_size, 4))
  loss, _ = loss_fn(params, batch, GPT(tiny_model_cfg), 0.0, None)
  logits = np.asarray(GPT(tiny_model_cfg).apply({"params": params}, batch["inputs"],
                                                batch["positions"], batch["segment_ids"]), np.float64)
  log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - logits.max(-1, keepdims=True)
  nll = -np.take_along_axis(log_probs, batch["targets"][..., None], -1)[..., 0]
  expected = (nll * batch["weights"]).sum() / batch["weights"].sum()
  assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_targets_with_zero_weight_never_change_the_loss(one_device_engine, tiny_model_cfg):
  params = one_device_engine.init().params
  batch = flat(make_batch(tiny_model_cfg.vocab_size, 4))
  changed = dict(batch, targets=batch["targets"].copy())
  changed["targets"][:, -3:] = (changed["targets"][:, -3:] + 1) % tiny_model_cfg.vocab_size
  model = GPT(tiny_model_cfg)
  assert float(loss_fn(params, batch, model, 0.0, None)[0]) == float(loss_fn(params, changed, model, 0.0, None)[0])
  changed["targets"][:, 0] = (changed["targets"][:, 0] + 1) % tiny_model_cfg.vocab_size
  assert float(loss_fn(params, batch, model, 0.0, None)[0]) != float(loss_fn(params, changed, model, 0.0, None)[0])


def test_z_loss_adds_the_squared_log_normaliser(one_device_engine, tiny_model_cfg):
  params = one_device_engine.init().params
  batch = flat(make_batch(tiny_model_cfg.vocab_size, 4))
  model = GPT(tiny_model_cfg)
  plain = float(loss_fn(params, batch, model, 0.0, None)[0])
  with_z = float(loss_fn(params, batch, model, 1e-2, None)[0])
  logits = model.apply({"params": params}, batch["inputs"], batch["positions"], batch["segment_ids"])
  log_z = jax.nn.logsumexp(logits, -1)
  expected = 1e-2 * float((log_z**2 * batch["weights"]).sum() / batch["weights"].sum())
  assert with_z - plain == pytest.approx(expected, rel=1e-4)


def test_gradient_accumulation_equals_one_big_batch(tiny_model_cfg):
  mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])
  # Plain SGD: the update is the gradient itself, so a mis-weighted accumulation would show.
  engine = build_engine(tiny_model_cfg, SGD, mesh, RULES, 0, SEQ)
  whole = make_batch(tiny_model_cfg.vocab_size, 8, accum=1)
  split = {k: v.reshape(4, 2, SEQ) for k, v in whole.items()}
  split["weights"][1] = 0.0  # uneven token counts across micro-batches must still weight tokens equally
  whole["weights"] = split["weights"].reshape(1, 8, SEQ)
  state_a, metrics_a = engine.train_step(engine.init(), whole)
  state_b, metrics_b = engine.train_step(engine.init(), split)
  assert float(metrics_a["loss"]) == pytest.approx(float(metrics_b["loss"]), rel=1e-5)
  for a, b in zip(jax.tree.leaves(state_a.params), jax.tree.leaves(state_b.params)):
    np.testing.assert_allclose(a, b, atol=1e-6)


MESHES = {"data": (8, 1, 1), "fsdp": (1, 8, 1), "tensor": (2, 1, 4), "data2_fsdp4": (2, 4, 1),
          "fsdp4_tensor2": (1, 4, 2)}


@pytest.fixture(scope="module")
def unsharded_run(tiny_model_cfg):
  mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])
  return run_steps(tiny_model_cfg, mesh)


def run_steps(cfg, mesh, steps: int = 3):
  # SGD, so parameter differences are gradient differences (Adam would amplify rounding noise).
  engine = build_engine(cfg, SGD, mesh, RULES, 0, SEQ)
  state = engine.init()
  losses, grad_norms = [], []
  for step in range(steps):
    batch = jax.device_put(make_batch(cfg.vocab_size, 8, seed=step), sharding.batch_sharding(mesh, leading_dims=1))
    state, metrics = engine.train_step(state, batch)
    losses.append(float(metrics["loss"]))
    grad_norms.append(float(metrics["grad_norm"]))
  return state, losses, grad_norms


@pytest.mark.parametrize("name", list(MESHES))
def test_sharded_training_equals_one_device(name, tiny_model_cfg, unsharded_run):
  mesh = sharding.make_mesh(*MESHES[name])
  state, losses, grad_norms = run_steps(tiny_model_cfg, mesh)
  ref_state, ref_losses, ref_norms = unsharded_run
  np.testing.assert_allclose(losses, ref_losses, atol=1e-5)
  np.testing.assert_allclose(grad_norms, ref_norms, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref_state.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_fsdp_really_shards_parameters_and_optimizer_state(tiny_model_cfg):
  # No biases: what stays replicated (norm scales, their Adam moments, the step count) is ~1% of the
  # state, so a device holds 1/8 of it plus at most a few percent.
  cfg = dataclasses.replace(tiny_model_cfg, d_model=64, use_bias=False)
  mesh = sharding.make_mesh(1, 8, 1)
  state = build_engine(cfg, OptimConfig(), mesh, RULES, 0, SEQ).init()
  for tree in (state.params, state.opt_state):
    total = sum(x.nbytes for x in jax.tree.leaves(tree))
    # What one device holds, read from the shardings ...
    from_shardings = sum(np.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                         for x in jax.tree.leaves(tree))
    # ... and what each device really holds.
    held = [0] * 8
    for leaf in jax.tree.leaves(tree):
      for shard in leaf.addressable_shards:
        held[shard.device.id] += shard.data.nbytes
    assert held == [from_shardings] * 8
    assert total / 8 <= from_shardings < 1.05 * total / 8
  kernel = state.params["block_0"]["mlp"]["wi"]["kernel"]  # [embed, mlp]
  assert kernel.addressable_shards[0].data.shape == (64 // 8, 64)


def test_tensor_parallel_splits_heads_and_mlp(tiny_model_cfg):
  mesh = sharding.make_mesh(2, 1, 4)
  state = build_engine(tiny_model_cfg, OptimConfig(), mesh, RULES, 0, SEQ).init()
  qkv = state.params["block_0"]["attn"]["qkv"]["kernel"]  # [embed, 3, heads, head_dim]
  assert qkv.addressable_shards[0].data.shape == (32, 3, 1, 8)
  wo = state.params["block_0"]["mlp"]["wo"]["kernel"]  # [mlp, embed]
  assert wo.addressable_shards[0].data.shape == (16, 32)


def test_mesh_and_batch_errors_say_how_to_fix_them():
  assert sharding.mesh_shape(-1, 2, 1, 8) == (4, 2, 1)
  with pytest.raises(UserError, match="mesh.data \\* mesh.fsdp \\* mesh.tensor = 8"):
    sharding.mesh_shape(3, 1, 1, 8)
  with pytest.raises(UserError, match="at most one"):
    sharding.mesh_shape(-1, -1, 1, 8)
  with pytest.raises(UserError, match="multiple of 8"):
    sharding.check_batch(12, 1, sharding.make_mesh(8, 1, 1), "train.batch_size")
  with pytest.raises(UserError, match="grad_accum_steps"):
    sharding.check_batch(12, 5, sharding.make_mesh(8, 1, 1), "train.batch_size")
  # fsdp that does not divide the batch keeps sharding parameters; the batch is split over data.
  assert sharding.check_batch(12, 1, sharding.make_mesh(2, 4, 1), "b") == ("data",)
  assert sharding.check_batch(16, 1, sharding.make_mesh(2, 4, 1), "b") == ("data", "fsdp")


@pytest.mark.parametrize("name", ["warmup_cosine", "warmup_linear", "constant", "rsqrt"])
def test_schedules_warm_up_to_the_peak_then_follow_their_shape(name):
  c = OptimConfig(lr=1.0, schedule=name, warmup_steps=10, steps=110, min_lr_ratio=0.1)
  lr = make_schedule(c)
  assert float(lr(5)) == pytest.approx(0.5, abs=1e-6)
  assert float(lr(10)) == pytest.approx(1.0, abs=1e-6)
  end = {"warmup_cosine": 0.1, "warmup_linear": 0.1, "constant": 1.0, "rsqrt": (10 / 110) ** 0.5}
  assert float(lr(110)) == pytest.approx(end[name], rel=1e-4)


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_each_optimizer_lowers_the_loss_on_a_fixed_batch(optimizer, tiny_model_cfg):
  mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])
  c = OptimConfig(optimizer=optimizer, lr=0.3 if optimizer == "sgd" else 1e-2, warmup_steps=0,
                  steps=20, nesterov=optimizer == "sgd")
  engine = build_engine(tiny_model_cfg, c, mesh, RULES, 0, SEQ)
  state = engine.init()
  batch = make_batch(tiny_model_cfg.vocab_size, 8)
  losses = []
  for _ in range(15):
    state, metrics = engine.train_step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0] - 0.5


def test_weight_decay_skips_norms_biases_and_embeddings(one_device_engine):
  mask = decay_mask(one_device_engine.init().params)
  assert mask["block_0"]["mlp"]["wi"]["kernel"] and mask["block_0"]["attn"]["qkv"]["kernel"]
  assert not mask["embedding"] and not mask["pos_embedding"]
  assert not mask["block_0"]["ln_attn"]["scale"] and not mask["block_0"]["mlp"]["wi"]["bias"]
