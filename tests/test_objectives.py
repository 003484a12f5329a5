"""Masked LM: how many tokens are chosen and what becomes of them (binomial bounds), which tokens
never are, whole words, keys; the objective of each model; masks in the train / eval steps."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import base_config
from jaxlm.errors import UserError
from jaxlm.parallel import sharding
from jaxlm.training.engine import build_engine
from jaxlm.training.objectives import (
  CAUSAL_LM,
  LABELS,
  MaskedLM,
  SpecialTokens,
  objective_for,
)
from jaxlm.training.optim import OptimConfig
from jaxlm.training.step import EVAL_SEED, MASK_STREAM

RULES = base_config().mesh.rules
SPECIAL = (0, 1, 2, 3)  # [PAD] [CLS] [SEP] [MASK], as a WordPiece vocabulary starts
MASK_ID = 3
ROWS, SEQ = 64, 512  # 32768 tokens: binomial bounds at 5 sigma are a few tenths of a percent


def big_batch(vocab: int, seed: int = 0) -> dict:
  """Random ids with a special token every 8th position and the last 32 columns weight 0."""
  rng = np.random.default_rng(seed)
  inputs = rng.integers(0, vocab, (ROWS, SEQ)).astype(np.int32)
  inputs[:, ::8] = rng.choice(SPECIAL, (ROWS, SEQ // 8))
  weights = np.ones((ROWS, SEQ), np.float32)
  weights[:, -32:] = 0.0
  segments = np.repeat(np.arange(1, 5, dtype=np.int32), SEQ // 4)[None].repeat(ROWS, 0)
  return {"inputs": inputs, "targets": np.zeros_like(inputs), "weights": weights,
          "positions": np.tile(np.arange(SEQ, dtype=np.int32), (ROWS, 1)), "segment_ids": segments}


def within_binomial(count: int, trials: int, p: float, sigmas: float = 5.0) -> bool:
  return abs(count - trials * p) <= sigmas * np.sqrt(trials * p * (1 - p))


@pytest.mark.parametrize("vocab", [1000, 12])
def test_masked_lm_chooses_15_percent_and_splits_them_80_10_10(vocab):
  batch = big_batch(vocab)
  mlm = MaskedLM(MASK_ID, SPECIAL, vocab)
  out = jax.device_get(jax.jit(mlm.prepare)(batch, jax.random.key(0)))
  inputs = batch["inputs"]
  chosen = out["weights"] > 0
  assert out["weights"].dtype == np.float32 and set(np.unique(out["weights"])) <= {0.0, 1.0}
  np.testing.assert_array_equal(out["targets"], inputs)  # the loss predicts the original tokens
  candidates = (batch["weights"] > 0) & ~np.isin(inputs, SPECIAL)
  assert not (chosen & ~candidates).any()  # never a special token, never a weight-0 position
  assert within_binomial(chosen.sum(), candidates.sum(), 0.15)
  np.testing.assert_array_equal(out["inputs"][~chosen], inputs[~chosen])
  new, old = out["inputs"][chosen], inputs[chosen]
  masked, same = new == MASK_ID, new == old
  randomised = ~masked & ~same
  # A random draw among the vocab - 4 non-special ids lands on the original id 1 / (vocab - 4)
  # of the time: it is then counted as unchanged.
  hit = 1 / (vocab - len(SPECIAL))
  n = int(chosen.sum())
  assert within_binomial(masked.sum(), n, 0.8)
  assert within_binomial(randomised.sum(), n, 0.1 * (1 - hit))
  assert within_binomial(same.sum(), n, 0.1 + 0.1 * hit)
  # Replacements are never special (with 12 ids, a draw over all of them would be 1/3 special),
  # and every non-special id is drawn.
  assert not np.isin(new[randomised], SPECIAL).any()
  if vocab == 12:
    assert set(np.unique(new[randomised])) == set(range(4, 12))


def words_of(inputs, segments, word_start):
  """Word number of every position, by a plain loop: a word starts at a word-start piece, at a
  special token and after one, or at a new document."""
  words = np.zeros(inputs.shape, np.int64)
  count = -1
  for r in range(inputs.shape[0]):
    for t in range(inputs.shape[1]):
      token = inputs[r, t]
      if (t == 0 or word_start[token] or token in SPECIAL or inputs[r, t - 1] in SPECIAL
          or segments[r, t] != segments[r, t - 1]):
        count += 1
      words[r, t] = count
  return words


def test_whole_word_masking_chooses_every_piece_of_a_word_or_none():
  vocab = 200
  word_start = np.random.default_rng(1).random(vocab) < 0.4  # most pieces continue a word
  word_start[list(SPECIAL)] = True
  batch = big_batch(vocab, seed=2)
  batch["weights"][:] = 1.0  # every non-special piece a candidate, so words are whole
  mlm = MaskedLM(MASK_ID, SPECIAL, vocab, 0.15, word_start)
  chosen = np.asarray(jax.jit(mlm.prepare)(batch, jax.random.key(5))["weights"]) > 0
  words = words_of(batch["inputs"], batch["segment_ids"], word_start).ravel()
  special = np.isin(batch["inputs"], SPECIAL).ravel()
  per_word_chosen = np.bincount(words, weights=chosen.ravel())
  per_word_pieces = np.bincount(words, weights=~special)
  real = per_word_pieces > 0  # words that are not a lone special token
  assert set(np.unique(per_word_chosen[real] / per_word_pieces[real])) == {0.0, 1.0}
  assert within_binomial((per_word_chosen[real] > 0).sum(), real.sum(), 0.15)
  assert (per_word_chosen >= 3).any()  # multi-piece words really are chosen together
  # Per piece, the same words would be split: whole-word masking is not the default.
  piecewise = np.asarray(MaskedLM(MASK_ID, SPECIAL, vocab).prepare(
      batch, jax.random.key(5))["weights"]).ravel() > 0
  split = np.bincount(words, weights=piecewise)[real] / per_word_pieces[real]
  assert ((split > 0) & (split < 1)).any()


def test_the_same_key_gives_the_same_masks_and_another_key_others():
  batch = big_batch(100)
  mlm = MaskedLM(MASK_ID, SPECIAL, 100)
  a, b = (jax.device_get(mlm.prepare(batch, jax.random.key(7))) for _ in range(2))
  jax.tree.map(np.testing.assert_array_equal, a, b)
  other = jax.device_get(mlm.prepare(batch, jax.random.key(8)))
  assert (other["weights"] != a["weights"]).mean() > 0.1


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 2, 2)])
def test_masks_do_not_depend_on_how_the_batch_is_sharded(mesh_shape):
  assert jax.config.jax_threefry_partitionable  # what makes sharded draws the whole batch's
  batch = big_batch(100)
  mlm = MaskedLM(MASK_ID, SPECIAL, 100, 0.15, np.arange(100) % 3 == 0)
  whole = jax.device_get(jax.jit(mlm.prepare)(batch, jax.random.key(3)))
  mesh = sharding.make_mesh(*mesh_shape)
  placed = jax.device_put(batch, sharding.batch_sharding(mesh))
  split = jax.jit(mlm.prepare, out_shardings=sharding.batch_sharding(mesh))(
      placed, jax.random.key(3))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(split), whole)


def test_each_model_gets_its_objective_and_bad_options_are_refused(tiny_model_cfg):
  bert = dataclasses.replace(tiny_model_cfg, family="bert")
  special = SpecialTokens(MASK_ID, SPECIAL, np.ones(61, bool))
  assert objective_for(tiny_model_cfg, special, 0.15, False) is CAUSAL_LM
  for head in ("classify", "tag"):
    assert objective_for(dataclasses.replace(bert, head=head, num_labels=2), special, 0.15,
                         True) is LABELS
  mlm = objective_for(bert, special, 0.2, True)
  assert (mlm.mask_id, mlm.special_ids, mlm.probability) == (MASK_ID, SPECIAL, 0.2)
  assert mlm.word_start is special.word_start
  assert objective_for(bert, special, 0.2, False).word_start is None
  shapes_only = objective_for(bert, None, 0.15, True)  # e.g. plan: no tokenizer
  assert (shapes_only.mask_id, shapes_only.special_ids) == (60, ())
  with pytest.raises(UserError, match="mlm_probability"):
    objective_for(bert, special, 0.0, False)
  with pytest.raises(UserError, match="whole_word_masking"):
    objective_for(bert, SpecialTokens(MASK_ID, SPECIAL), 0.15, True)
  with pytest.raises(UserError, match="word-start table"):
    objective_for(bert, SpecialTokens(MASK_ID, SPECIAL, np.ones(7, bool)), 0.15, True)


def test_causal_and_label_objectives_leave_the_batch_as_it_is():
  batch = big_batch(50)
  for objective in (CAUSAL_LM, LABELS):
    assert objective.prepare(batch, jax.random.key(0)) is batch



# ---- masks in the compiled steps ----

SGD = OptimConfig(optimizer="sgd", momentum=0.0, lr=1.0, weight_decay=0.0, warmup_steps=0,
                  schedule="constant", grad_clip=0.0)
STEP_SEQ = 16


def step_batch(vocab: int, rows: int = 8) -> dict:
  """One micro-batch `[1, rows, STEP_SEQ]`: [CLS] then random ids, two documents a row."""
  rng = np.random.default_rng(4)
  shape = (1, rows, STEP_SEQ)
  inputs = rng.integers(4, vocab, shape).astype(np.int32)
  inputs[..., 0] = inputs[..., STEP_SEQ // 2] = 1
  segments = np.broadcast_to(np.repeat(np.array([1, 2], np.int32), STEP_SEQ // 2), shape).copy()
  positions = np.broadcast_to(np.tile(np.arange(STEP_SEQ // 2, dtype=np.int32), 2), shape).copy()
  return {"inputs": inputs, "targets": np.zeros(shape, np.int32), "positions": positions,
          "segment_ids": segments, "token_types": segments - 1,
          "weights": np.ones(shape, np.float32)}


def hand_nll(model, params, batch) -> np.ndarray:
  """Per-position NLL of `targets` (float64 log-softmax of the model's logits) `[batch, seq]`."""
  logits = np.asarray(model.apply({"params": params}, batch["inputs"], batch["positions"],
                                  batch["segment_ids"], token_types=batch["token_types"]),
                      np.float64)  # [batch, seq, vocab]
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return -np.take_along_axis(log_probs, np.asarray(batch["targets"])[..., None], -1)[..., 0]


@pytest.fixture(scope="module")
def bert_engines(tiny_model_cfg):
  """One-device masked-LM engines without and with dropout, and shared parameters."""
  bert = dataclasses.replace(tiny_model_cfg, family="bert", norm_position="post",
                             type_vocab_size=2)
  mesh = sharding.make_mesh(1, 1, 1, jax.devices()[:1])
  mlm = MaskedLM(MASK_ID, SPECIAL, bert.vocab_size, 0.3)
  engines = [build_engine(cfg, SGD, mesh, RULES, 0, STEP_SEQ, objective=mlm)
             for cfg in (bert, dataclasses.replace(bert, dropout=0.2))]
  return engines, mlm, jax.device_get(engines[0].init().params)


def one_step(engine, params, batch, step: int = 0) -> dict:
  state = engine.from_params(params).replace(step=jnp.asarray(step, jnp.int32))
  return jax.device_get(engine.train_step(state, batch)[1])


def test_train_step_masks_with_the_micro_batch_key_whether_or_not_dropout_is_on(bert_engines):
  (plain, dropped), mlm, params = bert_engines
  batch = step_batch(plain.model.cfg.vocab_size)
  # Step 0, micro-batch 0: fold_in(fold_in(key(seed), step), micro-batch), then the mask stream.
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 0), 0)
  prepared = jax.device_get(mlm.prepare({k: v[0] for k, v in batch.items()},
                                        jax.random.fold_in(key, MASK_STREAM)))
  chosen = prepared["weights"] > 0
  nll = hand_nll(plain.model, params, prepared)
  metrics = one_step(plain, params, batch)
  assert metrics["tokens"] == chosen.sum() > 0
  assert metrics["loss"] == pytest.approx(nll[chosen].mean(), rel=1e-5)
  with_dropout = one_step(dropped, params, batch)
  assert with_dropout["tokens"] == metrics["tokens"]  # the same masks ...
  assert abs(with_dropout["loss"] - metrics["loss"]) > 1e-4  # ... under another forward pass
  assert one_step(plain, params, batch, step=1)["loss"] != metrics["loss"]  # another step's masks


def test_eval_step_masks_are_fixed_by_the_batch_number(bert_engines):
  (engine, _), mlm, params = bert_engines
  flat = {k: v[0] for k, v in step_batch(engine.model.cfg.vocab_size).items()}
  sums = jax.device_get(engine.eval_step(params, flat, 3))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(engine.eval_step(params, flat, 3)),
               sums)
  prepared = jax.device_get(mlm.prepare(flat, jax.random.fold_in(jax.random.key(EVAL_SEED), 3)))
  chosen = prepared["weights"] > 0
  assert sums["weight_sum"] == chosen.sum() > 0
  assert sums["nll_sum"] == pytest.approx(hand_nll(engine.model, params, prepared)[chosen].sum(),
                                          rel=1e-5)
  assert jax.device_get(engine.eval_step(params, flat, 4))["nll_sum"] != sums["nll_sum"]
