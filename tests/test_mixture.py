"""Mixtures of prepared sources: rows dealt by weight, stages, per-process rows, exact resume,
tokens per source in the metrics and per-source evaluation."""

import os
import shutil

import jax
import numpy as np
import pytest
from test_prepare import prepare_tiny, prepared_config
from test_train import read_metrics, write_corpus

from jaxlm.data.manifest import open_prepared
from jaxlm.data.mixture import MixtureBatches, deal, schedule_of
from jaxlm.errors import UserError
from jaxlm.evaluate import evaluate
from jaxlm.inference import trained
from jaxlm.training import checkpoint
from jaxlm.training.loop import train

SEQ_LEN, BATCH = 32, 16


def write_other_corpus(directory) -> str:
  """Another toy grammar over the same characters (so one char tokenizer covers both)."""
  return write_corpus(directory, "dog log ran then slowly under".split(), seed=1, docs=10,
                      name="other")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  """Two prepared directories sharing the first one's tokenizer, and the first corpus."""
  root = tmp_path_factory.mktemp("mixture")
  corpus_a = write_corpus(root / "corpus_a")
  prepare_tiny(corpus_a, root / "a")
  prepare_tiny(write_other_corpus(root / "corpus_b"), root / "b",
               tokenizer_file=str(root / "a" / "tokenizer.json"))
  return corpus_a, str(root / "a"), str(root / "b")


def opened_trains(sources):
  return [open_prepared(d, SEQ_LEN).train for d in sources[1:]]


def test_rows_are_dealt_as_a_hand_computed_weighted_round_robin():
  credit, drawn = [0.0, 0.0], [0, 0]
  # credits (.75,.25) -> 0; (.5,.5) tie -> 0; (.25,.75) -> 1; (1,0) -> 0; then it repeats
  assert deal(credit, drawn, (0.75, 0.25), 8) == [(0, 0), (0, 1), (1, 0), (0, 2), (0, 3), (0, 4),
                                                  (1, 1), (0, 5)]
  assert drawn == [6, 2]


def test_weights_of_0_8_and_0_2_draw_each_source_within_1_percent_over_1000_batches(sources):
  trains = opened_trains(sources)
  # Which source a row came from, by its content (every window of each source, as a key).
  owner = {}
  for index, split in enumerate(trains):
    rows = split.rows(np.arange(split.num_full_windows))["inputs"]
    owner.update({row.tobytes(): index for row in rows})
  assert len(owner) == sum(s.num_full_windows for s in trains)  # no window in both
  # Batches of 4 rows: shares hold at any batch size, and 1,000 tiny batches read quickly.
  batches = MixtureBatches(trains, schedule_of((("a", "A", 4.0), ("b", "B", 1.0)), ()), 4,
                           seed=0, process_index=0, process_count=1)
  counts, seen_a = np.zeros(2), []
  for _ in range(1000):
    for row in next(batches)["inputs"]:
      counts[owner[row.tobytes()]] += 1
      if owner[row.tobytes()] == 0:
        seen_a.append(row.tobytes())
  np.testing.assert_allclose(counts / counts.sum(), [0.8, 0.2], atol=0.01)
  # Source a's windows come in epochs: each once before any twice.
  epoch = trains[0].num_full_windows
  assert len(set(seen_a[:epoch])) == epoch


def test_a_stage_changes_the_weights_from_its_step_on(sources):
  schedule = schedule_of((("a", "A", 0.8), ("b", "B", 0.2)), ((10, (1, 3)),))
  assert schedule.weights(9) == (0.8, 0.2) and schedule.weights(10) == (0.25, 0.75)
  batches = MixtureBatches(opened_trains(sources), schedule, BATCH, 0, 0, 1)
  for _ in range(10):
    next(batches)
  at_stage = batches.get_state()["drawn"]
  assert abs(at_stage[0] - 0.8 * 10 * BATCH) <= 1
  for _ in range(20):
    next(batches)
  after = np.array(batches.get_state()["drawn"]) - at_stage
  assert np.all(np.abs(after - np.array([0.25, 0.75]) * 20 * BATCH) <= 1.5)


def test_two_processes_read_the_rows_of_one_and_resume_exactly_across_a_stage(sources):
  trains = opened_trains(sources)
  schedule = schedule_of((("a", "A", 0.7), ("b", "B", 0.3)), ((9, (0.1, 0.9)),))
  single = MixtureBatches(trains, schedule, BATCH, 5, 0, 1)
  pair = [MixtureBatches(trains, schedule, BATCH, 5, p, 2) for p in range(2)]
  for _ in range(7):
    expected = next(single)
    halves = [next(p) for p in pair]
    for name, values in expected.items():
      np.testing.assert_array_equal(np.concatenate([h[name] for h in halves]), values)
  resumed = MixtureBatches(trains, schedule, BATCH, 5, 0, 1)
  resumed.set_state(single.get_state())
  for _ in range(6):  # across the stage change at batch 9
    a, b = next(single), next(resumed)
    for name in a:
      np.testing.assert_array_equal(a[name], b[name])


def mixture_config(sources, steps=40):
  corpus_a, a, b = sources
  c = prepared_config(corpus_a, "", steps)
  c.data.mixture = (("a", a, 0.8), ("b", b, 0.2))
  c.data.mixture_stages = ((30, (0.5, 0.5)),)
  return c


@pytest.fixture(scope="module")
def mixture_run(sources, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("mixture_run"))
  final = train(mixture_config(sources), workdir)
  return workdir, final


def test_a_mixture_run_counts_tokens_per_source_and_resumes_exactly_across_a_stage(
    mixture_run, sources, tmp_path):
  workdir, _ = mixture_run
  records = [r for r in read_metrics(workdir) if r["split"] == "train"]
  for r in records:
    rows = r["step"] * BATCH
    assert r["tokens_a"] + r["tokens_b"] == rows * SEQ_LEN
    expected_a = 0.8 * min(rows, 30 * BATCH) + 0.5 * max(rows - 30 * BATCH, 0)
    assert abs(r["tokens_a"] / SEQ_LEN - expected_a) <= 1.5, r
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(checkpoint.checkpoint_dir(resumed), "40"))  # back to step 20
  train(mixture_config(sources), resumed)
  for x, y in zip(jax.tree.leaves(trained.load(workdir).params),
                  jax.tree.leaves(trained.load(resumed).params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  after = [r for r in read_metrics(resumed) if r["split"] == "train"][len(records):]
  assert [(r["loss"], r["tokens_a"]) for r in after] == [(r["loss"], r["tokens_a"])
                                                         for r in records if r["step"] > 20]


def test_evaluate_reports_each_source_and_all_of_them_together(mixture_run, sources):
  workdir, final = mixture_run
  result = evaluate(workdir, None, {})
  for name in ("a", "b"):
    alone = evaluate(workdir, None, {"data.mixture": (), "data.mixture_stages": (),
                                     "data.path": sources[1 if name == "a" else 2]})
    for key in ("loss", "perplexity", "bits_per_byte", "tokens"):
      assert result[f"{name}/{key}"] == pytest.approx(alone[key], rel=1e-6), (name, key)
  tokens = result["a/tokens"] + result["b/tokens"]
  assert result["tokens"] == tokens
  assert result["loss"] == pytest.approx(
      (result["a/loss"] * result["a/tokens"] + result["b/loss"] * result["b/tokens"]) / tokens,
      rel=1e-6)
  assert final["loss"] == pytest.approx(result["loss"], rel=1e-6)
  assert final["a/loss"] == pytest.approx(result["a/loss"], rel=1e-6)


@pytest.mark.parametrize("mixture, stages, message", [
    ((("a", "A", 0.0), ("b", "B", 0.0)), (), "do not sum to a positive number"),
    ((("a", "A", -1.0), ("b", "B", 2.0)), (), "do not sum to a positive number"),
    ((("a", "A", 1.0), ("b", "B", 1.0)), ((5, (0, 0)),), "step 5 weights (0, 0) do not sum"),
    ((("a", "A", 1.0), ("a", "B", 1.0)), (), "names the source name 'a' twice"),
    ((("a", "A", 1.0), ("b", "A", 1.0)), (), "names the source directory 'A' twice"),
    ((("a", "A", 1.0),), ((5, (1, 2)),), "must give 1 weights"),
    ((("a", "A"),), (), "must be ((name, directory, weight), ...)"),
    ((("a", "A", 1.0),), ((5, (1,)), (3, (1,))), "positive, increasing steps"),
])
def test_bad_mixtures_are_refused(mixture, stages, message):
  with pytest.raises(UserError) as raised:
    schedule_of(mixture, stages)
  assert message in str(raised.value)
