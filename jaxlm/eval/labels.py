"""Label metrics: classification accuracy, macro-F1 and the confusion table; entity-level precision,
recall and F1 of BIO tag sequences.

The conventions are the usual ones, so that numbers compare with published ones:
  macro-F1    scikit-learn's f1_score(average="macro"): the mean F1 over every label that occurs
              in the gold or the predicted labels (a label never predicted and never gold does not
              count; one only predicted counts with F1 0).
  entities    seqeval's default mode, which is conlleval's: an entity starts at B-X, at an I-X
              after O, or at a tag whose type differs from the previous one, and runs over the
              following I-X of the same type. An I-X without a B-X starts an entity.
  precision   correct predicted entities / predicted entities; recall: / gold entities (micro over
              the entity types); each 0 when its denominator is 0, F1 0 when both are 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _ratio(numerator: float, denominator: float) -> float:
  return numerator / denominator if denominator else 0.0


def _f1(precision: float, recall: float) -> float:
  return _ratio(2 * precision * recall, precision + recall)


def _check_lengths(gold: Sequence, pred: Sequence, what: str) -> None:
  if len(gold) != len(pred):
    raise ValueError(f"{len(gold)} gold {what} but {len(pred)} predicted")


def _label_order(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> list[str]:
  """`labels`, then any other label of gold or pred, sorted."""
  extra = sorted((set(gold) | set(pred)) - set(labels))
  return [*labels, *extra]


def confusion_matrix(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
  """[n, n] int64 counts (rows gold, columns predicted) over `labels` in order; pairs with a label
  outside `labels` are left out, as scikit-learn's confusion_matrix(labels=...) does."""
  _check_lengths(gold, pred, "labels")
  index = {label: i for i, label in enumerate(labels)}
  counts = np.zeros((len(labels), len(labels)), np.int64)  # [gold, predicted]
  for g, p in zip(gold, pred):
    if g in index and p in index:
      counts[index[g], index[p]] += 1
  return counts


def f1_by_label(gold: Sequence[str], pred: Sequence[str],
                labels: Sequence[str] = ()) -> dict[str, float]:
  """F1 of each label that occurs in gold or pred: those of `labels` first, in order."""
  _check_lengths(gold, pred, "labels")
  met = set(gold) | set(pred)
  present = _label_order(gold, pred, [label for label in labels if label in met])
  counts = confusion_matrix(gold, pred, present)  # [gold, predicted]
  true_positives = np.diag(counts)  # [n]
  precision = [_ratio(tp, n) for tp, n in zip(true_positives, counts.sum(axis=0))]
  recall = [_ratio(tp, n) for tp, n in zip(true_positives, counts.sum(axis=1))]
  return {label: float(_f1(p, r)) for label, p, r in zip(present, precision, recall)}


def classification_metrics(gold: Sequence[str], pred: Sequence[str],
                           labels: Sequence[str] = ()) -> dict:
  """accuracy, macro_f1 (see the module docstring) and the number of examples."""
  f1 = list(f1_by_label(gold, pred, labels).values())
  return {
    "accuracy": _ratio(sum(g == p for g, p in zip(gold, pred)), len(gold)),
    "macro_f1": float(np.mean(f1)) if f1 else 0.0,
    "examples": len(gold),
  }


def confusion_table(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str] = ()) -> str:
  """The confusion matrix as aligned text: a row per gold label, a column per predicted label
  (`labels` first, then any other label met), headed by the predicted labels."""
  order = _label_order(gold, pred, labels)
  counts = confusion_matrix(gold, pred, order)  # [gold, predicted]
  names = [label if label else "(none)" for label in order]
  corner = "gold \\ predicted"
  width = max([len(corner), *map(len, names)])
  cell = max([*map(len, names), *(len(str(c)) for c in counts.flat)], default=1)
  lines = [corner.ljust(width) + "".join(" " + n.rjust(cell) for n in names)]
  for name, row in zip(names, counts):
    lines.append(name.ljust(width) + "".join(" " + str(c).rjust(cell) for c in row))
  return "\n".join(lines)


def _split_tag(tag: str) -> tuple[str, str]:
  """("B" | "I" | "O", entity type) of a BIO tag."""
  if tag == "O" or len(tag) < 2 or tag[1] != "-":
    return "O", ""
  return tag[0], tag[2:]


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
  """(type, first, last) of each entity of one BIO tag sequence, by conlleval's rules (the
  module docstring); `last` is inclusive, as in seqeval's get_entities."""
  spans, start, open_type = [], None, ""
  for i, tag in enumerate([*tags, "O"]):  # the trailing O closes an entity at the end
    kind, entity_type = _split_tag(tag)
    if start is not None and (kind != "I" or entity_type != open_type):
      spans.append((open_type, start, i - 1))
      start = None
    if kind != "O" and start is None:
      start, open_type = i, entity_type
  return spans


def tagging_metrics(gold_seqs: Sequence[Sequence[str]],
                    pred_seqs: Sequence[Sequence[str]]) -> dict:
  """Entity-level precision, recall, f1 (micro over types; seqeval's default mode),
  token_accuracy over all tags, and the counts: sequences, gold and predicted entities."""
  _check_lengths(gold_seqs, pred_seqs, "sequences")
  gold_entities, pred_entities = set(), set()
  tags = correct_tags = 0
  for s, (gold, pred) in enumerate(zip(gold_seqs, pred_seqs)):
    if len(gold) != len(pred):
      raise ValueError(f"sequence {s}: {len(gold)} gold tags but {len(pred)} predicted")
    gold_entities |= {(s, *span) for span in entity_spans(gold)}
    pred_entities |= {(s, *span) for span in entity_spans(pred)}
    tags += len(gold)
    correct_tags += sum(g == p for g, p in zip(gold, pred))
  correct = len(gold_entities & pred_entities)
  precision = _ratio(correct, len(pred_entities))
  recall = _ratio(correct, len(gold_entities))
  return {
    "precision": precision,
    "recall": recall,
    "f1": _f1(precision, recall),
    "token_accuracy": _ratio(correct_tags, tags),
    "sequences": len(gold_seqs),
    "entities": len(gold_entities),
    "predicted_entities": len(pred_entities),
  }
