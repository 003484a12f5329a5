"""One engine per config: training and evaluation batches sharded each their own way, and a trained
run loaded for use with its parameters only."""

import jax
import numpy as np
import pytest
from test_step import SEQ, make_batch
from test_train import corpus_dir, tiny_config, trained_run  # noqa: F401 (fixtures)

from jaxlm.evaluate import evaluate
from jaxlm.inference import trained
from jaxlm.training.engine import engine_for_config
from jaxlm.training.step import loss_fn


def test_an_awkward_eval_batch_leaves_the_training_sharding_alone(corpus_dir):  # noqa: F811
  config = tiny_config(corpus_dir)
  config.mesh.data, config.mesh.fsdp = 2, 4  # 8 devices (conftest)
  config.train.batch_size, config.eval.batch_size = 16, 12  # 12 does not split over 2 x 4
  config.data.seq_len = SEQ
  engine = engine_for_config(config, vocab_size=61)
  assert engine.train_batch_axes == ("data", "fsdp")
  assert engine.eval_batch_axes == ("data",)
  train_feed, eval_feed = engine.train_feed(16, 1), engine.eval_feed(12)
  batch = make_batch(61, 16)
  placed = train_feed.assemble({k: v[0] for k, v in batch.items()})
  # Each of the 8 devices holds 2 of the 16 training rows (not 8 of them, as over `data` alone).
  assert {shard.data.shape for shard in placed["inputs"].addressable_shards} == {(1, 2, SEQ)}
  params = jax.device_get(engine.init().params)
  flat = {k: v[0] for k, v in batch.items()}
  expected = loss_fn(params, flat, engine.model, 0.0, None)[0]
  _, metrics = engine.train_step(engine.init(), placed)  # donates (consumes) the state
  assert float(metrics["loss"]) == pytest.approx(float(expected), rel=1e-5)
  rows = {k: v[0, :12] for k, v in batch.items()}
  sums = engine.eval_step(engine.init().params, eval_feed.assemble(rows))
  assert {s.data.shape for s in eval_feed.assemble(rows)["inputs"].addressable_shards} == {(6, SEQ)}
  assert int(sums["weight_sum"]) == int(rows["weights"].sum())


def test_a_loaded_run_never_reads_the_optimizer_state(trained_run):  # noqa: F811
  """evaluate / sample / to-hf restore parameters only: a run loaded with another optimizer, whose
  state has another structure (SGD keeps no moments), still loads, with the same parameters."""
  workdir, _ = trained_run
  as_trained = trained.load(workdir)
  other_optimizer = {"train.optimizer": "sgd", "train.momentum": 0.0}
  loaded = trained.load(workdir, overrides=other_optimizer)
  for a, b in zip(jax.tree.leaves(as_trained.params), jax.tree.leaves(loaded.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  result = evaluate(workdir, None, other_optimizer)
  assert result["loss"] == pytest.approx(evaluate(workdir, None, {})["loss"], rel=1e-6)
