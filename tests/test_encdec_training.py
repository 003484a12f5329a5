"""Encoder-decoder training on a mesh: span-corruption steps sharded over the 8 simulated devices
equal one device's, a resumed run is bit-identical to an unbroken one (spans and dropout drawn per
step from the step key), and seq2seq rows train through the same step."""

import dataclasses

import jax
import numpy as np
import pytest
from resume_helpers import assert_resume_is_bit_identical

from jaxlm.config import base_config
from jaxlm.models import ModelConfig
from jaxlm.parallel import sharding
from jaxlm.training.engine import build_engine
from jaxlm.training.objectives import SEQ2SEQ
from jaxlm.training.optim import OptimConfig
from jaxlm.training.span_corruption import SpanCorruption

SEQ, VOCAB, EOS = 24, 64, 1
SENTINELS = tuple(range(VOCAB - 1, VOCAB - 11, -1))
RULES = base_config().mesh.rules
SGD = OptimConfig(optimizer="sgd", momentum=0.0, lr=1.0, weight_decay=0.0, warmup_steps=0,
                  schedule="constant", grad_clip=0.0)


@pytest.fixture(scope="module")
def t5_cfg():
  """A tiny T5 v1.1-style model: relative positions, RMSNorm, gated GELU, no biases, untied."""
  return ModelConfig(vocab_size=VOCAB, family="encdec", d_model=32, num_layers=2,
                     num_decoder_layers=1, num_heads=4, mlp_dim=48, max_len=32,
                     positions="relative", norm="rmsnorm", mlp="geglu", use_bias=False,
                     tie_embeddings=False, relative_buckets=8, relative_max_distance=16)


def text_batch(rows: int, seed: int, accum: int = 2) -> dict:
  """`[accum, rows / accum, SEQ]` packed text: EOS then two documents of random ids a row, the
  last 3 positions padding."""
  rng = np.random.default_rng(seed)
  shape = (accum, rows // accum, SEQ)
  inputs = rng.integers(2, VOCAB - len(SENTINELS), shape).astype(np.int32)
  inputs[..., 0] = inputs[..., 11] = EOS
  segments = np.broadcast_to(np.repeat(np.array([1, 2, 0], np.int32), [11, 10, 3]), shape).copy()
  positions = np.broadcast_to(np.concatenate([np.arange(11), np.arange(13)]).astype(np.int32),
                              shape).copy()
  return {"inputs": inputs, "targets": np.zeros(shape, np.int32), "positions": positions,
          "segment_ids": segments, "weights": (segments > 0).astype(np.float32)}


def span_engine(cfg, mesh, optim=SGD, spike_sigma=0.0):
  objective = SpanCorruption(SENTINELS, EOS, target_len=16)
  return build_engine(cfg, optim, mesh, RULES, 0, SEQ, spike_sigma=spike_sigma,
                      objective=objective)


def seq2seq_batch(rows: int, target_len: int = 12, seed: int = 0) -> dict:
  """`[1, rows, ...]` seq2seq rows: two sources a row (12 tokens each); two targets (5 and 4
  tokens), the last 3 decoder positions padding."""
  rng = np.random.default_rng(seed)
  decoder_segments = np.repeat(np.array([1, 2, 0], np.int32), [5, 4, 3])[None].repeat(rows, 0)
  batch = {"encoder_inputs": rng.integers(2, VOCAB, (rows, SEQ)).astype(np.int32),
           "encoder_positions": np.tile(np.arange(SEQ, dtype=np.int32) % 12, (rows, 1)),
           "encoder_segment_ids": np.tile(np.repeat(np.array([1, 2], np.int32), 12), (rows, 1)),
           "inputs": rng.integers(2, VOCAB, (rows, target_len)).astype(np.int32),
           "targets": rng.integers(2, VOCAB, (rows, target_len)).astype(np.int32),
           "positions": np.tile(np.concatenate([np.arange(5), np.arange(7)]).astype(np.int32),
                                (rows, 1)),
           "segment_ids": decoder_segments, "weights": (decoder_segments > 0).astype(np.float32)}
  return {k: v[None] for k, v in batch.items()}


def run_steps(cfg, mesh, rows: int, steps: int = 3):
  engine = span_engine(cfg, mesh)
  state, history = engine.init(), []
  for step in range(steps):
    batch = jax.device_put(text_batch(rows, step), sharding.batch_sharding(mesh, leading_dims=1))
    state, metrics = engine.train_step(state, batch)
    history.append(jax.device_get(metrics))
  return jax.device_get(state.params), history


def test_sharded_span_corruption_training_equals_one_device(t5_cfg):
  reference = run_steps(t5_cfg, sharding.make_mesh(1, 1, 1, jax.devices()[:1]), 16)
  params, history = run_steps(t5_cfg, sharding.make_mesh(2, 2, 2), 16)
  ref_params, ref_history = reference
  for metrics, ref in zip(history, ref_history):
    assert metrics["tokens"] == ref["tokens"] > 0  # the same spans, whatever the sharding
    # float32 sums in another order: a few ulps of the loss and of the gradient norm.
    assert metrics["loss"] == pytest.approx(ref["loss"], abs=1e-5)
    assert metrics["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
  # SGD at lr 1 after 3 steps: the parameters moved by the gradients' sums, within rounding.
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_resumed_span_corruption_run_is_bit_identical(t5_cfg, tmp_path):
  cfg = dataclasses.replace(t5_cfg, dropout=0.1)  # dropout and spans both drawn per step
  mesh = sharding.make_mesh(2, 2, 2)
  optim = OptimConfig(warmup_steps=0, steps=10)
  batches = [jax.device_put(text_batch(16, step), sharding.batch_sharding(mesh, leading_dims=1))
             for step in range(4)]
  assert_resume_is_bit_identical(span_engine(cfg, mesh, optim), batches, str(tmp_path))


def test_seq2seq_rows_train_and_score_only_their_targets(t5_cfg):
  """A seq2seq batch passes the objective as the data made it: the loss counts the decoder's
  weighted targets, and the encoder side is read (changing a source changes the loss)."""
  mesh = sharding.make_mesh(2, 2, 2)
  engine = build_engine(t5_cfg, SGD, mesh, RULES, 0, SEQ, objective=SEQ2SEQ)
  rows = 8
  batch = seq2seq_batch(rows)
  feed = sharding.batch_sharding(mesh, leading_dims=1)
  params = engine.init().params
  state = engine.from_params(params)
  _, metrics = engine.train_step(state, jax.device_put(batch, feed))
  assert float(metrics["tokens"]) == rows * 9
  changed = {**batch, "encoder_inputs": (batch["encoder_inputs"] + 1) % VOCAB}
  _, other = engine.train_step(engine.from_params(params), jax.device_put(changed, feed))
  # At initialisation the source moves the loss by ~1e-4: far above float32 rounding (~5e-7).
  assert abs(float(other["loss"]) - float(metrics["loss"])) > 1e-5
