"""Tests for jaxlm.eval.labels against the reference packages: seqeval (entity-level scores, default
conlleval mode) and scikit-learn (accuracy, macro-F1, confusion matrix)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from seqeval import metrics as seqeval_metrics
from seqeval.metrics.sequence_labeling import get_entities
from sklearn import metrics as sk_metrics

from jaxlm.eval.labels import (
  classification_metrics,
  confusion_matrix,
  confusion_table,
  entity_spans,
  f1_by_label,
  tagging_metrics,
)

TAGS = ("O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-MISC-X", "I-MISC-X")
# The edge cases of the conlleval rules, each a sequence of its own.
EDGE_SEQUENCES = [
  ["I-PER"],  # I- without B- starts an entity
  ["O", "I-PER", "I-PER"],
  ["B-PER", "I-LOC"],  # a type switch inside: two entities
  ["I-PER", "I-LOC", "I-LOC"],
  ["B-PER", "B-PER", "I-PER"],  # B- after B- of the same type
  ["O", "O", "B-LOC"],  # an entity at the end of the sequence
  ["B-LOC", "I-LOC"],
  ["I-LOC", "B-LOC", "I-LOC", "O", "I-LOC"],
  ["O"],
  ["B-MISC-X", "I-MISC-X", "I-PER"],
]


def _random_sequences(rng, n: int) -> list[list[str]]:
  return [list(rng.choice(TAGS, size=int(rng.integers(1, 12)))) for _ in range(n)]


def _noisy(rng, sequences, p: float) -> list[list[str]]:
  """A prediction: each tag replaced by a random one with probability p."""
  return [[str(rng.choice(TAGS)) if rng.random() < p else tag for tag in seq] for seq in sequences]


def _seqeval(gold, pred) -> dict:
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # its "ill-defined" warnings: the score is 0 then, as ours
    return {"precision": seqeval_metrics.precision_score(gold, pred),
            "recall": seqeval_metrics.recall_score(gold, pred),
            "f1": seqeval_metrics.f1_score(gold, pred),
            "token_accuracy": seqeval_metrics.accuracy_score(gold, pred)}


def test_entity_spans_match_seqeval_get_entities():
  rng = np.random.default_rng(0)
  for seq in EDGE_SEQUENCES + _random_sequences(rng, 300):
    assert entity_spans(seq) == get_entities(seq), seq
  assert entity_spans(["I-PER", "I-LOC", "O", "B-LOC", "I-LOC"]) == [
    ("PER", 0, 0), ("LOC", 1, 1), ("LOC", 3, 4)]  # written out by hand too
  assert entity_spans([]) == []


@pytest.mark.parametrize("noise", [0.0, 0.1, 0.4, 1.0])
def test_tagging_metrics_match_seqeval(noise):
  rng = np.random.default_rng(int(noise * 10))
  gold = EDGE_SEQUENCES + _random_sequences(rng, 200)
  pred = _noisy(rng, gold, noise)
  ours = tagging_metrics(gold, pred)
  for name, value in _seqeval(gold, pred).items():
    assert ours[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name
  assert ours["sequences"] == len(gold)
  assert ours["entities"] == sum(len(get_entities(seq)) for seq in gold)
  assert ours["predicted_entities"] == sum(len(get_entities(seq)) for seq in pred)
  if noise == 0.0:
    assert ours["f1"] == ours["token_accuracy"] == 1.0


def test_entities_do_not_cross_sequences():
  # Joined, these would read as one entity I-PER I-PER; apart they are two, and one is wrong.
  gold, pred = [["O", "B-PER"], ["I-PER", "O"]], [["O", "B-PER"], ["O", "O"]]
  ours = tagging_metrics(gold, pred)
  assert (ours["precision"], ours["recall"], ours["entities"]) == (1.0, 0.5, 2)
  assert ours == pytest.approx({**_seqeval(gold, pred), "sequences": 2, "entities": 2,
                                "predicted_entities": 1})


def test_tagging_metrics_without_entities_are_zero():
  ours = tagging_metrics([["O", "O"]], [["O", "O"]])
  assert (ours["precision"], ours["recall"], ours["f1"], ours["token_accuracy"]) == (0, 0, 0, 1)
  assert tagging_metrics([], [])["token_accuracy"] == 0.0
  with pytest.raises(ValueError, match="sequence 0: 2 gold tags but 1 predicted"):
    tagging_metrics([["O", "O"]], [["O"]])


def _random_labels(rng, n: int) -> tuple[list[str], list[str]]:
  """Gold over a..d; predictions also over e (never gold) and "" (no prediction)."""
  gold = [str(x) for x in rng.choice(list("abcd"), size=n, p=[0.5, 0.3, 0.15, 0.05])]
  pred = [g if rng.random() < 0.6 else str(rng.choice(list("abcde") + [""])) for g in gold]
  return gold, pred


@pytest.mark.parametrize("seed", range(6))
def test_classification_metrics_match_sklearn(seed):
  rng = np.random.default_rng(seed)
  gold, pred = _random_labels(rng, int(rng.integers(1, 60)))
  ours = classification_metrics(gold, pred, ["d", "c", "b", "a"])
  assert ours["accuracy"] == pytest.approx(sk_metrics.accuracy_score(gold, pred), rel=1e-12)
  assert ours["macro_f1"] == pytest.approx(
    sk_metrics.f1_score(gold, pred, average="macro", zero_division=0), rel=1e-12)
  assert ours["examples"] == len(gold)
  by_label = f1_by_label(gold, pred, ["d", "c", "b", "a"])
  present = sorted(set(gold) | set(pred))
  reference = sk_metrics.f1_score(gold, pred, labels=present, average=None, zero_division=0)
  assert by_label == pytest.approx(dict(zip(present, reference.tolist())), rel=1e-12)
  assert list(by_label)[:2] == [x for x in "dcba" if x in present][:2]  # given order first


def test_macro_f1_hand_computed():
  # a: P=1/2, R=1/2 -> 1/2; b: P=1, R=1/2 -> 2/3; c: only predicted -> 0; d: never met, left out.
  ours = classification_metrics(["a", "b", "b", "a"], ["a", "b", "a", "c"], ["a", "b", "c", "d"])
  assert ours["macro_f1"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
  assert ours["accuracy"] == 0.5
  assert classification_metrics([], [])["macro_f1"] == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_confusion_matrix_and_table_match_sklearn(seed):
  rng = np.random.default_rng(seed)
  gold, pred = _random_labels(rng, 40)
  labels = ["a", "b", "c", "d"]
  np.testing.assert_array_equal(confusion_matrix(gold, pred, labels),
                                sk_metrics.confusion_matrix(gold, pred, labels=labels))
  order = labels + sorted((set(gold) | set(pred)) - set(labels))  # extra labels after the given
  expected = sk_metrics.confusion_matrix(gold, pred, labels=order)
  lines = confusion_table(gold, pred, labels).split("\n")
  header = lines[0].split()
  assert header[:3] == ["gold", "\\", "predicted"]
  assert header[3:] == [label or "(none)" for label in order]
  assert [line.split()[0] for line in lines[1:]] == [label or "(none)" for label in order]
  table = np.array([[int(x) for x in line.split()[1:]] for line in lines[1:]])
  np.testing.assert_array_equal(table, expected)
  assert len({len(line) for line in lines}) == 1  # aligned columns
