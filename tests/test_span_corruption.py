"""Span corruption against a plain-Python reading of its output: the documents come back exactly
from encoder inputs + targets, T5's noise and span counts per document, spans inside documents,
decoder inputs / positions / weights, cuts counted, uniform span layouts, keys, sharding."""

import types
from collections import Counter

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxlm.data import pack_documents
from jaxlm.errors import UserError
from jaxlm.training.objectives import SEQ2SEQ, objective_for
from jaxlm.training.span_corruption import SpanCorruption, span_corruption_for, target_len_for

EOS = 1
SENTINELS = tuple(range(1000, 1100))
SEQ = 96


def t5_counts(length, density=0.15, mean_span=3.0):
  """T5's random_spans_noise_mask counts, written out again; no noise below 2 tokens."""
  if length < 2:
    return 0, 0
  noise = min(max(round(length * density), 1), length - 1)
  return noise, min(max(round(noise / mean_span), 1), noise, length - noise)


def documents(inputs, segments, weights, eos=EOS):
  """The document tokens of one LM row, by the module's rule, in a Python loop."""
  docs = {}
  for p, (token, segment, weight) in enumerate(zip(inputs, segments, weights)):
    if p > 0 and weight > 0 and segment > 0 and token != eos:
      docs.setdefault(segment, []).append(int(token))
  return [docs[s] for s in sorted(docs)]


def parse(out, r):
  """(encoder tokens, target tokens) of each segment of row r, checking the layout on the way."""
  enc, enc_seg, enc_pos = (np.asarray(out[k][r]) for k in
                           ("encoder_inputs", "encoder_segment_ids", "encoder_positions"))
  tgt, dec_in, seg, pos, w = (np.asarray(out[k][r]) for k in
                              ("targets", "inputs", "segment_ids", "positions", "weights"))
  pieces = []
  for s in range(1, enc_seg.max() + 1):
    e, t = enc[enc_seg == s], tgt[seg == s]
    np.testing.assert_array_equal(enc_pos[enc_seg == s], np.arange(len(e)))
    np.testing.assert_array_equal(pos[seg == s], np.arange(len(t)))
    np.testing.assert_array_equal(dec_in[seg == s], np.concatenate([[0], t[:-1]]))
    pieces.append((list(e), list(t)))
  n_enc, n_dec = (enc_seg > 0).sum(), (seg > 0).sum()
  for segs, n in ((enc_seg, n_enc), (seg, n_dec)):  # compacted left, padding 0, in order
    assert (segs[:n] > 0).all() and (segs[n:] == 0).all() and (np.diff(segs[:n]) >= 0).all()
  assert (enc[n_enc:] == 0).all() and (tgt[n_dec:] == 0).all()
  np.testing.assert_array_equal(w, (seg > 0).astype(np.float32))
  return pieces


def reconstruct(enc, tgt, sentinels=SENTINELS, eos=EOS):
  """The document from its encoder tokens and targets, and its span lengths."""
  assert enc[-1] == eos and tgt[-1] == eos
  spans, k = [], -1
  for token in tgt[:-1]:
    if token in sentinels:
      k += 1
      assert token == sentinels[k]  # sentinel k for the k-th span
      spans.append([])
    else:
      spans[k].append(token)
  doc, used = [], 0
  for token in enc[:-1]:
    if token in sentinels:
      assert token == sentinels[used]
      doc += spans[used]
      used += 1
    else:
      doc.append(token)
  assert used == len(spans)
  return doc, [len(s) for s in spans]


def lm_rows(seed, num_rows=16, seq=SEQ, max_doc=80):
  rng = np.random.default_rng(seed)
  docs = [rng.integers(2, 900, n).tolist() for n in rng.integers(1, max_doc, 600)]
  packed = pack_documents(docs, EOS, seq)
  return packed.rows(np.arange(num_rows))


@pytest.fixture(scope="module")
def corrupted():
  rows = lm_rows(0)
  sc = SpanCorruption(SENTINELS, EOS, SEQ)  # room for everything: nothing cut
  return rows, sc, jax.device_get(jax.jit(sc.prepare)(rows, jax.random.key(3)))


def test_documents_come_back_with_t5_counts(corrupted):
  rows, _, out = corrupted
  assert out["encoder_inputs"].shape == (16, SEQ) and out["targets"].shape == (16, SEQ)
  assert out["weights"].dtype == np.float32 and out["targets"].dtype == np.int32
  seen_noise = 0
  for r in range(16):
    docs = documents(rows["inputs"][r], rows["segment_ids"][r], rows["weights"][r])
    pieces = parse(out, r)
    assert len(pieces) == len(docs)
    for doc, (enc, tgt) in zip(docs, pieces):
      got, span_lengths = reconstruct(enc, tgt)
      assert got == doc
      noise, spans = t5_counts(len(doc))
      assert (sum(span_lengths), len(span_lengths)) == (noise, spans)
      assert all(n >= 1 for n in span_lengths)
      if noise:  # T5's layout: a kept run first, a span last
        assert enc[0] not in SENTINELS and enc[-2] == SENTINELS[spans - 1]
      seen_noise += noise
    assert out["targets_cut"][r] == 0
  assert seen_noise > 100


def test_same_key_same_batch_other_key_other_batch(corrupted):
  rows, sc, out = corrupted
  again = jax.device_get(jax.jit(sc.prepare)(rows, jax.random.key(3)))
  other = jax.device_get(jax.jit(sc.prepare)(rows, jax.random.key(4)))
  for name in out:
    np.testing.assert_array_equal(again[name], out[name])
  assert (other["encoder_inputs"] != out["encoder_inputs"]).any()


def test_layouts_are_uniform():
  # 8 tokens at density 0.5, mean span 2: 4 noise tokens in 2 spans, 4 kept in 2 runs; the 3 x 3
  # compositions must be equally likely.
  rows_n = 900
  inputs = np.tile(np.array([EOS, *range(10, 18)], np.int32), (rows_n, 1))
  batch = {"inputs": inputs, "segment_ids": np.ones_like(inputs),
           "weights": np.ones(inputs.shape, np.float32)}
  sc = SpanCorruption(SENTINELS, EOS, 16, noise_density=0.5, mean_noise_span=2.0)
  out = jax.device_get(jax.jit(sc.prepare)(batch, jax.random.key(0)))
  masks = Counter()
  for r in range(rows_n):
    (enc, tgt), = parse(out, r)
    doc, _ = reconstruct(enc, tgt)
    assert doc == list(range(10, 18))
    noise = set(t for t in tgt if t not in SENTINELS and t != EOS)
    masks["".join("1" if t in noise else "0" for t in doc)] += 1
  assert len(masks) == 9 and all(m.startswith("0") and m.endswith("1") for m in masks)
  # Each ~100 of 900 (sd ~9.4): within 5 sd.
  assert all(53 <= n <= 147 for n in masks.values()), masks


def test_targets_past_target_len_are_cut_and_counted():
  rows = lm_rows(1, max_doc=6)  # many short documents: long targets
  full, cut = (jax.device_get(jax.jit(SpanCorruption(SENTINELS, EOS, n).prepare)(
      rows, jax.random.key(0))) for n in (SEQ, 24))
  need = (full["segment_ids"] > 0).sum(axis=1)
  np.testing.assert_array_equal(cut["targets_cut"], np.maximum(need - 24, 0))
  assert (cut["targets_cut"] > 0).any()
  np.testing.assert_array_equal(cut["targets"], full["targets"][:, :24])
  np.testing.assert_array_equal(cut["encoder_inputs"], full["encoder_inputs"])


def test_padding_rows_and_windows_give_nothing():
  rows = lm_rows(2, num_rows=2)
  rows = {k: v.copy() for k, v in rows.items()}
  rows["weights"][1] = 0.0  # an eval padding row
  rows["weights"][0, 50:] = 0.0  # a padded partial window
  prepare = jax.jit(SpanCorruption(SENTINELS, EOS, SEQ).prepare)
  out = jax.device_get(prepare(rows, jax.random.key(0)))
  assert (out["encoder_segment_ids"][1] == 0).all() and (out["weights"][1] == 0).all()
  docs = documents(rows["inputs"][0], rows["segment_ids"][0], rows["weights"][0])
  assert [reconstruct(e, t)[0] for e, t in parse(out, 0)] == docs


def test_sharded_equals_one_device(corrupted):
  rows, sc, out = corrupted
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  placed = jax.device_put(rows, NamedSharding(mesh, PartitionSpec("data")))
  sharded = jax.device_get(jax.jit(sc.prepare)(placed, jax.random.key(3)))
  for name in out:
    np.testing.assert_array_equal(sharded[name], out[name])


def test_target_len_rule_and_objective_choice():
  # T5's rule for one 255-token document: round(38.25) = 38 noise, 13 spans, + EOS = 52, + 8.
  assert target_len_for(256, 0.15, 3.0) == 64
  tok = types.SimpleNamespace(kind="sentencepiece", sentinel_ids=SENTINELS, eos_id=EOS)
  sc = span_corruption_for("text", 256, 0, 0.15, 3.0, tok)
  assert sc.target_len == 64 and sc.sentinel_ids == SENTINELS
  assert span_corruption_for("seq2seq", 256, 0, 0.15, 3.0, tok) is None
  encdec = types.SimpleNamespace(family="encdec", head="lm")
  assert objective_for(encdec, None, 0.15, False, sc) is sc
  assert objective_for(encdec, None, 0.15, False) is SEQ2SEQ


@pytest.mark.parametrize("kwargs, message", [
    ({"seq_len": 4096}, "noise spans but the tokenizer has 100 sentinels"),
    ({"noise_density": 1.0}, "train.noise_density=1.0 is not in (0, 1)"),
    ({"mean_noise_span": 0.5}, "train.mean_noise_span=0.5 is below 1"),
])
def test_bad_options(kwargs, message):
  tok = types.SimpleNamespace(kind="sentencepiece", sentinel_ids=SENTINELS, eos_id=EOS)
  args = {"seq_len": 256, "noise_density": 0.15, "mean_noise_span": 3.0, **kwargs}
  with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
    span_corruption_for("text", args["seq_len"], 0, args["noise_density"],
                        args["mean_noise_span"], tok)


def test_tokenizer_without_sentinels():
  tok = types.SimpleNamespace(kind="byte", eos_id=EOS)
  with pytest.raises(UserError, match="span corruption needs sentinel tokens"):
    span_corruption_for("text", 256, 0, 0.15, 3.0, tok)
