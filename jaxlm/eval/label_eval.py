"""Label metrics of a classification or tagging run: accuracy and macro-F1, or entity-level
precision / recall / F1 (seqeval's convention), from the model's argmax at each labelled position.

Classification puts one label target on each example's [CLS]; tagging one on the first piece of
each word. `predict_rows` runs the compiled `predict_step` over every packed row once (in the same
evaluation batches as the token metrics, so any mesh and any number of hosts give the same rows);
`per_example` maps the labelled positions back to their examples through the packing's
bookkeeping. Words cut off by data.seq_len count as predicted "O", so a long sentence is scored on
all of its gold entities.
"""

import json
import os

import jax
import numpy as np

from jaxlm.data import eval_batches
from jaxlm.eval.labels import classification_metrics, confusion_table, tagging_metrics
from jaxlm.training.engine import Engine


def predict_rows(engine: Engine, params, packed, batch_size: int) -> np.ndarray:
  """The argmax label id at every position of every row of `packed`  # [rows, seq] int32."""
  feed = engine.eval_feed(batch_size)
  local = feed.local_rows
  predicted = np.zeros((len(packed), packed.seq_len), np.int32)  # [rows, seq]
  # Block k of each global batch holds rows share_k[b * local : (b + 1) * local] (see
  # pipeline.eval_batches), at batch rows [k * local, (k + 1) * local).
  shares = [range(k, len(packed), feed.blocks) for k in range(feed.blocks)]
  for b, rows in enumerate(eval_batches(packed, local, feed.block, feed.blocks)):
    batch_predicted = np.asarray(jax.device_get(engine.predict_step(params, feed.assemble(rows))))
    for k, share in enumerate(shares):
      ids = list(share[b * local:(b + 1) * local])
      predicted[ids] = batch_predicted[k * local:k * local + len(ids)]
  return predicted


def per_example(packed, predicted: np.ndarray, num_examples: int) -> list[list[int]]:
  """The predicted label ids of each example's labelled positions, in order."""
  example = packed.example_of_target  # [rows, seq] int32, -1 where no label is scored
  labelled = example >= 0
  out: list[list[int]] = [[] for _ in range(num_examples)]
  for example_id, label_id in zip(example[labelled].tolist(), predicted[labelled].tolist()):
    out[example_id].append(label_id)
  return out


def classification_report(records, predicted_ids: list[list[int]],
                          labels: tuple[str, ...]) -> tuple[dict, list[dict], str]:
  """(metrics, one row per example, the confusion table) of a classification split."""
  gold = [str(r.label) for r in records]
  pred = [labels[ids[0]] if ids else "" for ids in predicted_ids]
  metrics = classification_metrics(gold, pred, list(labels))
  rows = [{"text": r.text, "label": g, "prediction": p} for r, g, p in zip(records, gold, pred)]
  return metrics, rows, confusion_table(gold, pred, list(labels))


def tagging_report(records, predicted_ids: list[list[int]],
                   labels: tuple[str, ...]) -> tuple[dict, list[dict], str]:
  """(metrics, one row per example, "") of a tagging split; cut-off words are predicted "O"."""
  gold = [list(r.tags) for r in records]
  pred = [[labels[i] for i in ids] + ["O"] * (len(tags) - len(ids))
          for ids, tags in zip(predicted_ids, gold)]
  metrics = tagging_metrics(gold, pred)
  rows = [{"tokens": list(r.tokens), "tags": g, "prediction": p}
          for r, g, p in zip(records, gold, pred)]
  return metrics, rows, ""


def write_report(workdir: str, name: str, metrics: dict, rows: list[dict], table: str) -> str:
  """WORKDIR/predictions/NAME.jsonl (one line per example), .json (metrics) and, for
  classification, _confusion.txt; each written whole under its final name. Returns the .jsonl."""
  if jax.process_index() != 0:
    return ""
  directory = os.path.join(workdir, "predictions")
  os.makedirs(directory, exist_ok=True)
  base = os.path.join(directory, name)
  files = [(base + ".jsonl", "".join(json.dumps(r) + "\n" for r in rows)),
           (base + ".json", json.dumps(metrics, indent=1) + "\n")]
  if table:
    files.append((base + "_confusion.txt", table + "\n"))
  for path, text in files:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(path + ".tmp", path)
  return base + ".jsonl"
