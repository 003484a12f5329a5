"""BERT: the forward pass against a numpy re-implementation (post-norm, bidirectional attention
within documents, token types, the MLM / classify / tag heads), its parameter tree, attention
direction per family, the refused options; masked-LM training sharded == one device, resumed ==
unbroken, and label predictions."""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from resume_helpers import assert_resume_is_bit_identical

from jaxlm.config import base_config
from jaxlm.errors import UserError
from jaxlm.models import GPT, Bert, ModelConfig, make_model, stack_layers
from jaxlm.parallel import sharding
from jaxlm.training.engine import build_engine
from jaxlm.training.objectives import MaskedLM
from jaxlm.training.optim import OptimConfig

SEQ = 16
# Packed rows: documents of these lengths back to back; segment 0 (padding) ends the second row.
DOC_LENGTHS = ((5, 7, 4), (9, 4, 0))
PAD = 3


@pytest.fixture(scope="module")
def bert_cfg():
  """A tiny BERT: post-norm, erf GELU, token types, biases, tied MLM decoder."""
  return ModelConfig(vocab_size=61, d_model=32, num_layers=2, num_heads=4, mlp_dim=64, max_len=32,
                     family="bert", norm_position="post", type_vocab_size=2, mlp="gelu_exact")


def init_params(cfg: ModelConfig, seed: int = 0):
  tokens = jnp.zeros((1, 8), jnp.int32)
  return nn.unbox(make_model(cfg).init(jax.random.key(seed), tokens, tokens, tokens + 1)["params"])


def scaled_params(cfg):
  """Weight matrices x10 (sharp attention, logits O(1)); norm scales and biases moved off their
  init (1 and 0) so that a missing or misplaced one shows."""
  leaves, tree = jax.tree.flatten(init_params(cfg))
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(tree, [
      x * 10.0 if x.ndim >= 2 else x + 0.1 * jax.random.normal(k, x.shape)
      for x, k in zip(leaves, keys)])


def packed_inputs(vocab, seed=1):
  """tokens, positions (restarting per document), segments (1, 2, ...; 0 = padding), types."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (len(DOC_LENGTHS), SEQ)).astype(np.int32)
  positions = np.zeros(tokens.shape, np.int32)
  segments = np.zeros(tokens.shape, np.int32)
  for row, lengths in enumerate(DOC_LENGTHS):
    start = 0
    for doc, n in enumerate(lengths):
      positions[row, start:start + n] = np.arange(n)
      segments[row, start:start + n] = doc + 1
      start += n
  types = rng.integers(0, 2, tokens.shape).astype(np.int32)
  return tokens, positions, segments, types


# ---- numpy reference (float64), written from the BERT paper / Hugging Face's BertModel ----

def ref_dense(p, x, spec):
  return np.einsum(spec, x, p["kernel"]) + p["bias"]


def ref_layernorm(p, x, eps):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def ref_gelu(x, exact: bool):
  if exact:
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def ref_attention(p, h, allowed, heads):
  qkv = ref_dense(p["qkv"], h, "bsd,dthk->bsthk")  # [batch, seq, 3, heads, head_dim]
  query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
  scores = np.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(query.shape[-1])
  scores = np.where(allowed[:, None], scores, -np.inf)  # [batch, heads, q, k]
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", weights, value)  # [batch, seq, heads, head_dim]
  return ref_dense(p["out"], out, "bqhd,hdm->bqm")


def reference_bert(params, cfg, tokens, positions, segments, types, causal=False):
  """Post-norm BERT in numpy: logits [batch, seq, vocab or num_labels] (`causal` only to show
  that the test tells the two attentions apart)."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  exact, eps = cfg.mlp == "gelu_exact", cfg.norm_eps
  x = p["embedding"][tokens] + p["pos_embedding"][positions] + p["type_embedding"][types]
  x = ref_layernorm(p["ln_embed"], x, eps)  # [batch, seq, d_model]
  allowed = segments[:, :, None] == segments[:, None, :]  # [batch, q, k]
  if causal:
    allowed = allowed & np.tril(np.ones((SEQ, SEQ), bool))
  for i in range(cfg.num_layers):
    b = p[f"block_{i}"]
    x = ref_layernorm(b["ln_attn"], x + ref_attention(b["attn"], x, allowed, cfg.num_heads), eps)
    hidden = ref_gelu(ref_dense(b["mlp"]["wi"], x, "bsd,dm->bsm"), exact)
    x = ref_layernorm(b["ln_mlp"], x + ref_dense(b["mlp"]["wo"], hidden, "bsm,md->bsd"), eps)
  if cfg.head == "lm":
    h = ref_gelu(ref_dense(p["mlm"]["transform"], x, "bsd,de->bse"), exact)
    h = ref_layernorm(p["mlm"]["ln"], h, eps)
    return h @ p["embedding"].T + p["mlm"]["bias"]  # [batch, seq, vocab]
  if cfg.head == "classify":
    x = np.tanh(ref_dense(p["pooler"], x, "bsd,de->bse"))
  return ref_dense(p["classifier"], x, "bsd,dl->bsl")  # [batch, seq, num_labels]


HEADS = {"lm": {}, "classify": {"head": "classify", "num_labels": 3},
         "tag": {"head": "tag", "num_labels": 5}}


@pytest.mark.parametrize("head", list(HEADS))
def test_bert_forward_equals_a_numpy_reference(bert_cfg, head):
  cfg = dataclasses.replace(bert_cfg, **HEADS[head])
  params = scaled_params(cfg)
  tokens, positions, segments, types = packed_inputs(cfg.vocab_size)
  out = np.asarray(Bert(cfg).apply({"params": params}, tokens, positions, segments,
                                   token_types=types))
  assert out.dtype == np.float32 and out.shape == (2, SEQ, cfg.output_size)
  expected = reference_bert(params, cfg, tokens, positions, segments, types)
  # float32 rounding (2^-24 per op, sums of ~100 terms, a few layers): 1e-5 of the largest logit.
  tolerance = 1e-5 * np.abs(expected).max()
  np.testing.assert_allclose(out, expected, rtol=0, atol=tolerance)
  assert (segments == 0).any()  # padding (segment 0) attends to padding only, in both
  # The inputs can tell: causal attention, or no token types, move the logits far past that.
  for wrong in (reference_bert(params, cfg, tokens, positions, segments, types, causal=True),
                reference_bert(params, cfg, tokens, positions, segments, np.zeros_like(types))):
    assert np.abs(wrong - expected).max() > 1000 * tolerance
  tanh_gelu = reference_bert(params, dataclasses.replace(cfg, mlp="gelu"), tokens, positions,
                             segments, types)
  assert np.abs(tanh_gelu - expected).max() > 10 * tolerance  # erf GELU, not the tanh one


def test_bert_parameter_tree_has_the_converters_names_shapes_and_axes(bert_cfg):
  d, vocab = bert_cfg.d_model, bert_cfg.vocab_size
  tokens = jnp.zeros((1, 8), jnp.int32)
  expected_top = {
      "lm": {"embedding", "pos_embedding", "type_embedding", "ln_embed", "block_0", "block_1",
             "mlm"},
      "classify": {"embedding", "pos_embedding", "type_embedding", "ln_embed", "block_0",
                   "block_1", "pooler", "classifier"},
      "tag": {"embedding", "pos_embedding", "type_embedding", "ln_embed", "block_0", "block_1",
              "classifier"}}
  for head, options in HEADS.items():
    cfg = dataclasses.replace(bert_cfg, **options)
    boxed = jax.eval_shape(lambda cfg=cfg: Bert(cfg).init(jax.random.key(0), tokens, tokens,
                                                          tokens + 1))["params"]
    assert set(boxed) == expected_top[head]
    shapes = jax.tree.map(lambda x: (x.value.shape, x.names), boxed,
                          is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert shapes["embedding"] == ((vocab, d), ("vocab", "embed"))
    assert shapes["pos_embedding"] == ((32, d), ("pos", "embed"))
    assert shapes["type_embedding"] == ((2, d), (None, "embed"))
    assert shapes["block_0"]["attn"]["qkv"]["kernel"] == ((d, 3, 4, 8),
                                                          ("embed", None, "heads", "kv"))
    if head == "lm":
      assert shapes["mlm"] == {"transform": {"kernel": ((d, d), ("embed", "mlp")),
                                             "bias": ((d,), ("mlp",))},
                               "ln": {"scale": ((d,), ("norm",)), "bias": ((d,), ("norm",))},
                               "bias": ((vocab,), ("vocab",))}
    else:
      labels = cfg.num_labels
      assert shapes["classifier"] == {"kernel": ((d, labels), ("embed", None)),
                                      "bias": ((labels,), (None,))}
    if head == "classify":
      assert shapes["pooler"] == {"kernel": ((d, d), ("embed", "mlp")), "bias": ((d,), ("mlp",))}
  pre = jax.eval_shape(lambda: Bert(dataclasses.replace(bert_cfg, norm_position="pre")).init(
      jax.random.key(0), tokens, tokens, tokens + 1))["params"]
  assert "ln_final" in pre and "ln_embed" not in pre


def test_scanned_bert_computes_the_same_logits(bert_cfg):
  params = scaled_params(bert_cfg)
  tokens, positions, segments, types = packed_inputs(bert_cfg.vocab_size)
  base = Bert(bert_cfg).apply({"params": params}, tokens, positions, segments, token_types=types)
  scanned = dataclasses.replace(bert_cfg, scan_layers=True, remat="full")
  out = Bert(scanned).apply({"params": stack_layers(params, 2)}, tokens, positions, segments,
                            token_types=types)
  np.testing.assert_allclose(out, base, rtol=0, atol=1e-5 * float(jnp.abs(base).max()))


@pytest.mark.parametrize("family", ["gpt", "bert"])
def test_attention_direction_per_family_and_documents_never_see_each_other(bert_cfg, family):
  cfg = dataclasses.replace(bert_cfg, family=family)
  params = scaled_params(cfg)
  tokens, positions, segments, types = packed_inputs(cfg.vocab_size)

  def forward(t):
    return np.asarray(make_model(cfg).apply({"params": params}, t, positions, segments,
                                            token_types=types))
  base = forward(tokens)
  changed = tokens.copy()
  changed[0, 10] = (changed[0, 10] + 7) % cfg.vocab_size  # inside the second document (5..11]
  moved = np.abs(forward(changed) - base).max(-1)  # [batch, seq]
  assert moved[0, 10] > 1e-3  # the changed position itself
  np.testing.assert_array_equal(moved[0, :5], 0)  # the first document never sees it
  np.testing.assert_array_equal(moved[0, 12:], 0)  # nor the third
  np.testing.assert_array_equal(moved[1], 0)  # nor another row
  if family == "bert":  # every position of its document sees it, earlier ones too
    assert (moved[0, 5:12] > 1e-4).all()
  else:  # causal: only later positions
    np.testing.assert_array_equal(moved[0, 5:10], 0)
    assert (moved[0, 10:12] > 1e-4).all()


def test_gpt_ignores_token_types_unless_it_has_a_type_table(bert_cfg):
  cfg = dataclasses.replace(bert_cfg, family="gpt", norm_position="pre", type_vocab_size=0)
  params = init_params(cfg)
  tokens, positions, segments, types = packed_inputs(cfg.vocab_size)
  plain = GPT(cfg).apply({"params": params}, tokens, positions, segments)
  np.testing.assert_array_equal(
      GPT(cfg).apply({"params": params}, tokens, positions, segments, token_types=types), plain)


def test_invalid_family_options_are_refused(bert_cfg):
  cases = [({"family": "t5"}, "model.family"), ({"head": "span"}, "model.head"),
           ({"norm_position": "middle"}, "model.norm_position"),
           ({"head": "classify", "num_labels": 0}, "num_labels >= 1"),
           ({"family": "gpt", "head": "tag", "num_labels": 3}, "needs model.family='bert'"),
           ({"tie_embeddings": False}, "tie_embeddings=True"),
           ({"type_vocab_size": -1}, "type_vocab_size")]
  for options, message in cases:
    with pytest.raises(UserError, match=message):
      dataclasses.replace(bert_cfg, **options)
  tokens = jnp.zeros((1, 4), jnp.int32)
  with pytest.raises(UserError, match="no KV-cache decoding"):
    make_model(bert_cfg, decode=True).init(jax.random.key(0), tokens, tokens, tokens + 1)


# ---- masked-LM training on a mesh, resumed, and label predictions ----

RULES = base_config().mesh.rules
SGD = OptimConfig(optimizer="sgd", momentum=0.0, lr=1.0, weight_decay=0.0, warmup_steps=0,
                  schedule="constant", grad_clip=0.0)
SPECIAL = (0, 1, 2, 3)  # [PAD] [CLS] [SEP] [MASK]


def mlm_batch(vocab: int, rows: int, seed: int, accum: int = 1) -> dict:
  """`[accum, rows / accum, SEQ]`: two documents a row, each [CLS] + random ids with token types
  0 / 1 by halves; the last 3 positions are padding (segment 0, weight 0)."""
  rng = np.random.default_rng(seed)
  shape = (accum, rows // accum, SEQ)
  inputs = rng.integers(4, vocab, shape).astype(np.int32)
  inputs[..., 0] = inputs[..., 7] = 1
  segments = np.broadcast_to(np.repeat(np.array([1, 2, 0], np.int32), [7, 6, 3]), shape).copy()
  positions = np.broadcast_to(np.concatenate([np.arange(7), np.arange(9)]).astype(np.int32),
                              shape).copy()
  types = (np.arange(SEQ) % 7 >= 4).astype(np.int32)
  return {"inputs": inputs, "targets": np.zeros(shape, np.int32), "positions": positions,
          "segment_ids": segments, "token_types": np.broadcast_to(types, shape).copy(),
          "weights": (segments > 0).astype(np.float32)}


def mlm_engine(cfg, mesh, optim=SGD):
  objective = MaskedLM(3, SPECIAL, cfg.vocab_size, 0.3)
  return build_engine(cfg, optim, mesh, RULES, 0, SEQ, objective=objective)


def run_mlm_steps(cfg, mesh, rows: int, steps: int = 3):
  engine = mlm_engine(cfg, mesh)
  state, history = engine.init(), []
  for step in range(steps):
    batch = jax.device_put(mlm_batch(cfg.vocab_size, rows, step, accum=2),
                           sharding.batch_sharding(mesh, leading_dims=1))
    state, metrics = engine.train_step(state, batch)
    history.append(jax.device_get(metrics))
  return jax.device_get(state.params), history


@pytest.fixture(scope="module")
def unsharded_mlm_runs(bert_cfg):
  one_device = sharding.make_mesh(1, 1, 1, jax.devices()[:1])
  return {rows: run_mlm_steps(bert_cfg, one_device, rows) for rows in (8, 16)}


# (mesh, rows): micro-batches of 4 rows put one row on each data x fsdp shard of the 2 x 2 x 2 mesh
# (the case that caught XLA mis-sharding the MLM head's gradient; see bert.constrain_hidden).
@pytest.mark.parametrize("mesh_shape, rows", [((2, 2, 2), 8), ((1, 8, 1), 16)])
def test_sharded_masked_lm_training_equals_one_device(bert_cfg, unsharded_mlm_runs, mesh_shape,
                                                      rows):
  params, history = run_mlm_steps(bert_cfg, sharding.make_mesh(*mesh_shape), rows)
  ref_params, ref_history = unsharded_mlm_runs[rows]
  for metrics, ref in zip(history, ref_history):
    assert metrics["tokens"] == ref["tokens"]  # the same masks, whatever the sharding
    # float32 sums in another order: a few ulps of the loss and of the gradient norm.
    assert metrics["loss"] == pytest.approx(ref["loss"], abs=1e-5)
    assert metrics["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)
  # SGD at lr 1 after 3 steps: parameters are the gradients' sums, within float32 rounding.
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_resumed_masked_lm_run_is_bit_identical(bert_cfg, tmp_path):
  cfg = dataclasses.replace(bert_cfg, dropout=0.1)  # dropout and masks both drawn per step
  mesh = sharding.make_mesh(2, 2, 2)
  batches = [jax.device_put(mlm_batch(cfg.vocab_size, 16, step, accum=2),
                            sharding.batch_sharding(mesh, leading_dims=1)) for step in range(4)]
  engine = mlm_engine(cfg, mesh, OptimConfig(warmup_steps=0, steps=10))
  assert_resume_is_bit_identical(engine, batches, str(tmp_path))


def test_predict_step_is_the_argmax_label_replicated_on_every_device(bert_cfg):
  cfg = dataclasses.replace(bert_cfg, head="tag", num_labels=5)
  mesh = sharding.make_mesh(8, 1, 1)
  engine = build_engine(cfg, SGD, mesh, RULES, 0, SEQ)
  params = jax.tree.map(lambda x: x * 10.0 if x.ndim >= 2 else x, engine.init().params)
  batch = {k: v[0] for k, v in mlm_batch(cfg.vocab_size, 8, 0).items()}
  predicted = engine.predict_step(params, batch)
  assert predicted.dtype == jnp.int32 and predicted.shape == (8, SEQ)
  assert predicted.sharding.is_fully_replicated
  logits = Bert(cfg).apply({"params": jax.device_get(params)}, batch["inputs"],
                           batch["positions"], batch["segment_ids"],
                           token_types=batch["token_types"])
  np.testing.assert_array_equal(np.asarray(predicted), np.argmax(np.asarray(logits), -1))
  assert len(np.unique(np.asarray(predicted))) > 1  # not one label everywhere


def test_evaluation_masks_follow_windows_not_batches(bert_cfg):
  """Masked-LM evaluation masks each window by its own number, so batch size and mesh (which
  decide which rows share a batch, and across hosts which windows a batch holds) cannot change
  the numbers. Keyed by the batch's number instead, batch sizes 2 and 8 mask other tokens."""
  from jaxlm.data.packing import pack_documents
  from jaxlm.eval.scoring import evaluate_split
  rng = np.random.default_rng(5)
  docs = [rng.integers(4, bert_cfg.vocab_size, rng.integers(5, 30)).tolist() for _ in range(12)]
  packed = pack_documents(docs, eos_id=1, seq_len=SEQ)
  results = []
  for mesh, batch_size in ((sharding.make_mesh(1, 1, 1, jax.devices()[:1]), 2),
                           (sharding.make_mesh(8, 1, 1), 8)):
    engine = mlm_engine(bert_cfg, mesh)
    params = engine.init().params
    results.append(evaluate_split(engine, params, packed, batch_size, 0, 1.0))
  assert results[0]["tokens"] == results[1]["tokens"] > 0
  assert results[0]["loss"] == pytest.approx(results[1]["loss"], rel=1e-5)
