"""The optimizer: which parameters get weight decay, and the learning rate the log reports."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_step import SEQ, make_batch

from jaxlm.config import base_config
from jaxlm.models import GPT
from jaxlm.parallel import sharding
from jaxlm.training.engine import build_engine
from jaxlm.training.optim import OptimConfig, decay_mask, make_schedule
from jaxlm.training.step import loss_fn

# What each kind of leaf is, by its own name, written out here rather than derived from the code
# under test: projection kernels (and an untied output head, a projection too) are decayed; biases
# of any rank, norm scales and the embedding tables are not. A leaf name missing from this table
# fails the test, so a new kind of parameter must be classified before it can land.
DECAYED_BY_NAME = {"kernel": True, "head": True, "bias": False, "scale": False,
                   "embedding": False, "pos_embedding": False}
VARIANTS = list(itertools.product(("learned", "rope"), ("layernorm", "rmsnorm"), ("gelu", "swiglu"),
                                  (True, False), (True, False), (True, False)))


def variant(base, positions, norm, mlp, tie, use_bias, scan_layers):
  return dataclasses.replace(base, positions=positions, norm=norm, mlp=mlp, tie_embeddings=tie,
                             use_bias=use_bias, scan_layers=scan_layers)


def abstract_params(cfg):
  tokens = jnp.zeros((1, 8), jnp.int32)
  boxed = jax.eval_shape(lambda: GPT(cfg).init(jax.random.key(0), tokens, tokens, tokens + 1))
  return jax.tree.map(lambda x: x.value, boxed["params"],
                      is_leaf=lambda x: hasattr(x, "value"))


def leaf_name(path) -> str:
  return str(getattr(path[-1], "key", path[-1]))


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: "-".join(map(str, o)))
def test_weight_decay_takes_projection_kernels_only_in_every_variant(tiny_model_cfg, options):
  cfg = variant(tiny_model_cfg, *options)
  params = abstract_params(cfg)
  mask = decay_mask(params)
  leaves = jax.tree_util.tree_leaves_with_path(params)
  masks = jax.tree.leaves(mask)
  assert len(leaves) == len(masks)
  seen = set()
  for (path, leaf), decayed in zip(leaves, masks):
    name = leaf_name(path)
    seen.add(name)
    assert name in DECAYED_BY_NAME, f"unclassified parameter {jax.tree_util.keystr(path)}"
    assert decayed == DECAYED_BY_NAME[name], (jax.tree_util.keystr(path), leaf.shape, decayed)
  # The variants really contain what they claim (so the mask was checked on them).
  assert ("bias" in seen) == cfg.use_bias
  assert ("head" in seen) == (not cfg.tie_embeddings)
  assert ("pos_embedding" in seen) == (cfg.positions == "learned")


def test_multi_dimensional_biases_are_not_decayed(tiny_model_cfg):
  """The qkv bias is [3, heads, head_dim] and the SwiGLU wi bias [2, mlp_dim]: rank >= 2."""
  cfg = dataclasses.replace(tiny_model_cfg, mlp="swiglu", use_bias=True)
  params = abstract_params(cfg)
  mask = decay_mask(params)
  assert params["block_0"]["attn"]["qkv"]["bias"].ndim == 3
  assert params["block_0"]["mlp"]["wi"]["bias"].ndim == 2
  assert not mask["block_0"]["attn"]["qkv"]["bias"]
  assert not mask["block_0"]["mlp"]["wi"]["bias"]
  scanned = decay_mask(abstract_params(dataclasses.replace(cfg, scan_layers=True)))
  assert not scanned["blocks"]["attn"]["qkv"]["bias"] and scanned["blocks"]["attn"]["qkv"]["kernel"]


def test_decay_all_decays_everything(tiny_model_cfg):
  """With train.decay_all the optimizer decays every leaf: a zero gradient still shrinks biases."""
  mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])
  optim = OptimConfig(optimizer="adamw", lr=0.1, weight_decay=0.5, warmup_steps=0,
                      schedule="constant", grad_clip=0.0)
  for decay_all in (False, True):
    engine = build_engine(tiny_model_cfg, dataclasses.replace(optim, decay_all=decay_all), mesh,
                          base_config().mesh.rules, 0, SEQ)
    params = jax.tree.map(lambda x: x + 1.0, engine.init().params)  # nonzero biases
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = engine.tx.update(zero_grads, engine.tx.init(params), params)
    bias_update = float(jnp.abs(updates["block_0"]["attn"]["qkv"]["bias"]).max())
    kernel_update = float(jnp.abs(updates["block_0"]["attn"]["qkv"]["kernel"]).max())
    assert kernel_update > 0
    assert (bias_update > 0) == decay_all


def test_logged_lr_is_the_rate_the_optimizer_applied_after_a_skipped_step(tiny_model_cfg):
  """A refused update rolls optax's own step count back; the log must follow that count."""
  mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])
  # Plain SGD without momentum or clipping: the update is exactly -lr * gradient.
  optim = OptimConfig(optimizer="sgd", momentum=0.0, lr=0.5, weight_decay=0.0, warmup_steps=4,
                      steps=20, schedule="warmup_linear", grad_clip=0.0)
  engine = build_engine(tiny_model_cfg, optim, mesh, base_config().mesh.rules, 0, SEQ)
  schedule = make_schedule(optim)
  state = engine.init()
  applied = 0
  for step in range(6):
    batch = make_batch(tiny_model_cfg.vocab_size, 8, seed=step)
    if step == 2:
      batch["weights"][0, 0, 0] = np.nan  # this update is refused
    before = jax.device_get(state.params)
    grads = jax.grad(lambda p, b=batch: engine_loss(engine, p, b))(state.params)
    state, metrics = engine.train_step(state, batch)
    if step == 2:
      continue
    expected_lr = float(schedule(applied))
    assert float(metrics["lr"]) == pytest.approx(expected_lr, rel=1e-6), step
    # The rate really applied: params moved by -lr * grad.
    kernel = ("block_0", "mlp", "wo", "kernel")
    moved = get(jax.device_get(state.params), kernel) - get(before, kernel)
    np.testing.assert_allclose(moved, -expected_lr * get(jax.device_get(grads), kernel),
                               rtol=1e-4, atol=1e-7)
    applied += 1
  assert int(state.guard.skipped) == 1 and applied == 5


def get(tree, keys):
  for key in keys:
    tree = tree[key]
  return np.asarray(tree)


def engine_loss(engine, params, batch):
  flat = {k: v[0] for k, v in batch.items()}
  return loss_fn(params, flat, engine.model, 0.0, None)[0]
