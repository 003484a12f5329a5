"""A picture of a training run: WORKDIR/report.png from WORKDIR/metrics.jsonl.

    python -m jaxlm.report --workdir=DIR

Four panels against the step: train and validation loss, learning rate, tokens/s and gradient norm,
with the final metrics written underneath. `train` draws it when it finishes; this command redraws it
at any time (during training too). A resumed run appends to metrics.jsonl, so a step logged twice
keeps its last record.
"""

import json
import math
import os

from absl import app, flags

# A bare Figure draws with Agg and never touches pyplot's global backend (no window, and a notebook's
# inline plots are left alone).
from matplotlib.figure import Figure

from jaxlm import cli
from jaxlm.errors import UserError

REPORT_FILE = "report.png"
METRICS_FILE = "metrics.jsonl"
# (key, label, format) of the final metrics line, for the keys a record has.
FINAL_TRAIN = (("loss", "train loss", ".4f"), ("lr", "lr", ".2e"), ("grad_norm", "grad norm", ".3f"),
               ("tokens_per_sec", "tokens/s", ",.0f"), ("mfu", "MFU", ".2%"))
FINAL_VAL = (("loss", "val loss", ".4f"), ("perplexity", "perplexity", ".3f"),
             ("bits_per_byte", "bits/byte", ".4f"), ("token_accuracy", "token accuracy", ".2%"))


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "The training run's directory.")


def read_metrics(workdir: str) -> dict[str, list[dict]]:
  """Records of metrics.jsonl by split ("train", "val"), one per step (the last), by step."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    raise UserError(f"{path} does not exist; --workdir must be a training run "
                      "(`python -m jaxlm.train` writes it)")
  by_key = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        by_key[record["split"], record["step"]] = record
  splits = {}
  for (split, _), record in sorted(by_key.items(), key=lambda item: item[0][1]):
    splits.setdefault(split, []).append(record)
  return splits


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
  pairs = [(r["step"], r[key]) for r in records
           if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
  return [s for s, _ in pairs], [v for _, v in pairs]


def final_line(splits: dict[str, list[dict]]) -> str:
  """The last train and validation numbers, a line each."""
  parts = []
  for split, keys in (("train", FINAL_TRAIN), ("val", FINAL_VAL)):
    if splits.get(split):
      last = splits[split][-1]
      parts.append(f"{split} step {last['step']}: " + ", ".join(
          f"{label} {last[key]:{fmt}}" for key, label, fmt in keys
          if isinstance(last.get(key), (int, float))))
  return "\n".join(parts)


def draw(splits: dict[str, list[dict]], title: str) -> Figure:
  train, val = splits.get("train", []), splits.get("val", [])
  fig = Figure(figsize=(10, 6.6), dpi=100, layout="constrained")
  loss_ax, lr_ax, speed_ax, grad_ax = fig.subplots(2, 2, sharex=True).ravel()
  loss_ax.plot(*_series(train, "loss"), label="train", color="tab:blue")
  loss_ax.plot(*_series(val, "loss"), "o-", label="validation", color="tab:orange")
  loss_ax.set(title="loss (nats / token)")
  loss_ax.legend()
  lr_ax.plot(*_series(train, "lr"), color="tab:green")
  lr_ax.set(title="learning rate")
  lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
  speed_ax.plot(*_series(train, "tokens_per_sec"), color="tab:purple")
  speed_ax.set(title="tokens / s", xlabel="step")
  speed_ax.set_ylim(bottom=0)
  grad_ax.plot(*_series(train, "grad_norm"), color="tab:red")
  grad_ax.set(title="gradient norm (before clipping)", xlabel="step")
  for ax in (loss_ax, lr_ax, speed_ax, grad_ax):
    ax.grid(alpha=0.3)
  fig.suptitle(title)
  fig.text(0.5, 0.005, final_line(splits), ha="center", va="bottom", fontsize=9)
  fig.get_layout_engine().set(rect=(0, 0.06, 1, 0.94))  # room for the final metrics
  return fig


def write_report(workdir: str) -> str:
  """Draws WORKDIR/report.png from WORKDIR/metrics.jsonl; returns its path."""
  splits = read_metrics(workdir)
  path = os.path.join(workdir, REPORT_FILE)
  fig = draw(splits, f"jaxlm run {os.path.basename(os.path.abspath(workdir))}")
  fig.savefig(path)
  return path


def main(argv):
  del argv
  workdir = flags.FLAGS.workdir

  def run():
    path = write_report(cli.require_workdir(workdir))
    print(f"wrote {path}")
    cli.emit_json({"report": path})

  cli.run(run)


if __name__ == "__main__":
  define_flags()
  app.run(main)
