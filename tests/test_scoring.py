"""Evaluation sums: every validation target scored once (the partial last window too), totals
accumulated on device in exact integers and a compensated float32 sum, bits per byte."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.config import base_config
from jaxlm.data import train_tokenizer
from jaxlm.data.dataset import pack_record_split, pack_split
from jaxlm.data.records import Record
from jaxlm.eval import scoring
from jaxlm.models import GPT
from jaxlm.parallel import sharding
from jaxlm.training.engine import build_engine
from jaxlm.training.optim import OptimConfig

SEQ = 16
BATCH = 8  # one row per simulated device: a batch has padding rows whenever windows run out
DOCS = ["café au lait, s'il vous plaît\n", "the cat sat on the mat and then ran\n" * 3,
        "naïve piñata", "x"]


@pytest.fixture(scope="module")
def tokenizer():
  return train_tokenizer("char", DOCS, vocab_size=0)


@pytest.fixture(scope="module")
def engine_and_params(tiny_model_cfg, tokenizer):
  cfg = dataclasses.replace(tiny_model_cfg, vocab_size=tokenizer.vocab_size)
  mesh = sharding.make_mesh(-1, 1, 1)  # the batch over all 8 devices
  engine = build_engine(cfg, OptimConfig(), mesh, base_config().mesh.rules, 0, SEQ)
  # Larger weights than the init's so that token NLLs differ widely: a token scored twice or
  # left out moves the mean well past float32 rounding.
  params = jax.tree.map(lambda p: p * 8.0, engine.init().params)
  return engine, params, GPT(cfg)


def hand_scores(model, params, inputs, positions, segments, targets):
  """Per-target NLL (float64 log-softmax of the model's logits) and argmax hits of one window."""
  logits = np.asarray(model.apply({"params": params}, np.asarray(inputs)[None],
                                  np.asarray(positions)[None], np.asarray(segments)[None])[0],
                      np.float64)  # [len, vocab]
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  nll = -log_probs[np.arange(len(targets)), targets]  # [len]
  return nll, logits.argmax(-1) == np.asarray(targets)


def reference_windows(token_docs, eos_id, seq_len):
  """The stream `[eos] + doc` of every document cut into windows of seq_len targets, the last one
  shorter, so every token but the first is a target once; segments are document numbers and
  positions restart at each document and each window."""
  stream = [t for doc in token_docs for t in [eos_id, *doc]]
  doc_of = [d for d, doc in enumerate(token_docs) for _ in range(len(doc) + 1)]
  for start in range(0, len(stream) - 1, seq_len):
    end = min(start + seq_len, len(stream) - 1)
    docs = doc_of[start:end]
    positions = [i - next(j for j in range(i + 1) if docs[j] == docs[i]) for i in range(len(docs))]
    yield stream[start:end], positions, [d + 1 for d in docs], stream[start + 1:end + 1]


def test_loss_is_a_hand_nll_over_every_target_including_the_partial_last_window(
    engine_and_params, tokenizer):
  engine, params, model = engine_and_params
  token_docs = [tokenizer.encode(doc) for doc in DOCS]
  num_targets = sum(len(doc) + 1 for doc in token_docs) - 1
  assert num_targets % SEQ and num_targets > BATCH * SEQ  # a partial window; two batches
  host_params = jax.device_get(params)
  nll, hits = [], []
  for window in reference_windows(token_docs, tokenizer.eos_id, SEQ):
    window_nll, window_hits = hand_scores(model, host_params, *window)
    nll.append(window_nll)
    hits.append(window_hits)
  nll, hits = np.concatenate(nll), np.concatenate(hits)
  assert len(nll) == num_targets and nll.std() > 0.5  # the test can tell targets apart
  val, bytes_per_token = pack_split(DOCS, tokenizer, SEQ)
  result = scoring.evaluate_split(engine, params, val, BATCH, 0, bytes_per_token)
  assert result["tokens"] == num_targets
  # float32 logits and sums against float64: relative error a few float32 ulps.
  assert result["loss"] == pytest.approx(nll.mean(), rel=1e-5)
  assert result["perplexity"] == pytest.approx(math.exp(nll.mean()), rel=1e-5)
  assert result["token_accuracy"] == hits.sum() / num_targets
  num_bytes = sum(len(doc.encode("utf-8")) for doc in DOCS)  # EOS targets have no bytes
  assert result["bits_per_byte"] == pytest.approx(nll.sum() / math.log(2) / num_bytes, rel=1e-5)


def test_records_loss_is_a_hand_nll_over_completion_targets(engine_and_params, tokenizer):
  engine, params, model = engine_and_params
  records = [Record("the cat ", "sat"), Record("on ", "the mat"),
             Record("café ", "au lait"), Record("x" * 40, "never fits")]
  packed, bytes_per_token = pack_record_split(records, tokenizer, SEQ, "drop", "val")
  host_params = jax.device_get(params)
  nll = []
  for record in records[:3]:  # the last one is dropped: it cannot fit a row
    prompt, completion = tokenizer.encode(record.prompt), tokenizer.encode(record.completion)
    tokens = [tokenizer.eos_id, *prompt, *completion, tokenizer.eos_id]
    record_nll, _ = hand_scores(model, host_params, tokens[:-1], range(len(tokens) - 1),
                                [1] * (len(tokens) - 1), tokens[1:])
    nll.append(record_nll[len(prompt):])  # completion and closing EOS targets
  nll = np.concatenate(nll)
  result = scoring.evaluate_split(engine, params, packed, BATCH, 0, bytes_per_token)
  assert result["tokens"] == len(nll)
  assert result["loss"] == pytest.approx(nll.mean(), rel=1e-5)
  # Bytes of the completions scored: the dropped record's are not in the denominator.
  num_bytes = sum(len(r.completion.encode("utf-8")) for r in records[:3])
  assert result["bits_per_byte"] == pytest.approx(nll.sum() / math.log(2) / num_bytes, rel=1e-5)


def _sums(nll, tokens, correct):
  return {"nll_sum": jnp.float32(nll), "weight_sum": jnp.int32(tokens),
          "correct_sum": jnp.int32(correct)}


def test_counts_accumulate_exactly_past_float32_and_int32_range():
  tokens, correct = 2**30 - 1, 2**24 + 1  # per batch; float32 cannot hold 2**24 + 1
  totals = None
  for _ in range(5):
    totals = scoring.accumulate(totals, _sums(0.5, tokens, correct))
  read = scoring.read_totals(totals)
  assert read["weight_sum"] == 5 * tokens and read["correct_sum"] == 5 * correct  # > 2**32
  assert isinstance(read["weight_sum"], int) and isinstance(read["correct_sum"], int)
  assert float(np.float32(5 * correct)) != 5 * correct  # what a float32 total would have lost
  assert read["nll_sum"] == 2.5


def test_nll_sum_stays_accurate_over_many_batches():
  rng = np.random.default_rng(0)
  batch_nll = rng.uniform(0, 1e4, size=3000).astype(np.float32)  # per-batch float32 sums
  totals = None
  for value in batch_nll:
    totals = scoring.accumulate(totals, _sums(value, 1, 1))
  exact = math.fsum(batch_nll.astype(np.float64))
  naive = np.float32(0)
  for value in batch_nll:
    naive = np.float32(naive + value)
  assert abs(float(naive) - exact) / exact > 1e-7  # a plain float32 running sum drifts
  # Compensated: the error of each addition is kept, so only the tiny correction term rounds.
  assert scoring.read_totals(totals)["nll_sum"] == pytest.approx(exact, rel=1e-12)
  assert scoring.read_totals(totals)["weight_sum"] == len(batch_nll)


def test_sums_stay_on_device_until_one_read_at_the_end(engine_and_params, tokenizer, monkeypatch):
  engine, params, _ = engine_and_params
  val, bytes_per_token = pack_split(DOCS, tokenizer, SEQ)
  events, accumulate, device_get = [], scoring.accumulate, jax.device_get

  def spy_accumulate(totals, sums):
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(sums))
    assert jnp.issubdtype(sums["weight_sum"].dtype, jnp.integer)  # eval_step's counts
    assert jnp.issubdtype(sums["correct_sum"].dtype, jnp.integer)
    totals = accumulate(totals, sums)
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(totals))  # no host copy
    events.append("accumulate")
    return totals

  def spy_device_get(tree):
    events.append("read")
    return device_get(tree)

  monkeypatch.setattr(scoring, "accumulate", spy_accumulate)
  monkeypatch.setattr(jax, "device_get", spy_device_get)
  scoring.evaluate_split(engine, params, val, BATCH, 0, bytes_per_token)
  num_batches = math.ceil(len(val) / BATCH)
  assert num_batches > 1 and events == ["accumulate"] * num_batches + ["read"]
