"""The training report: WORKDIR/report.png drawn from metrics.jsonl."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from jaxlm import report
from jaxlm.errors import UserError


def write_metrics(workdir, steps=100):
  """metrics.jsonl as train writes it, with steps 60 and 80 logged twice (a resumed run)."""
  lines = []
  for step in list(range(10, steps + 1, 10)) + [60, 70, 80]:
    lines.append({"step": step, "split": "train", "loss": 5 * math.exp(-step / 50), "lr": 1e-3,
                  "grad_norm": 1.0 + 0.01 * step, "tokens_per_sec": 5000.0 + step, "mfu": 0.3})
    if step % 50 == 0:
      lines.append({"step": step, "split": "val", "loss": 5.5 * math.exp(-step / 50),
                    "perplexity": math.exp(5.5 * math.exp(-step / 50)), "bits_per_byte": 1.5,
                    "token_accuracy": 0.25, "tokens": 1000})
  lines[-1]["loss"] = 0.123  # the repeat of step 80 is the record that counts
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_read_metrics_keeps_one_record_per_step_the_last(tmp_path):
  write_metrics(tmp_path)
  splits = report.read_metrics(str(tmp_path))
  assert [r["step"] for r in splits["train"]] == list(range(10, 101, 10))
  assert [r["step"] for r in splits["val"]] == [50, 100]
  assert splits["train"][7]["loss"] == 0.123


def test_report_is_a_png_with_curves_and_the_final_metrics(tmp_path):
  write_metrics(tmp_path)
  path = report.write_report(str(tmp_path))
  assert path == str(tmp_path / "report.png")
  with Image.open(path) as image:
    assert image.format == "PNG" and image.size == (1000, 660)
    pixels = np.asarray(image.convert("RGB"))  # [height, width, 3]
  # The four curves are drawn in their colours (matplotlib's tab:blue, orange, green, red).
  for colour in ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)):
    assert (np.abs(pixels.astype(int) - colour).sum(-1) < 30).sum() > 50, colour
  line = report.final_line(report.read_metrics(str(tmp_path)))
  assert "train step 100: train loss 0.6767" in line and "tokens/s 5,100" in line
  assert "val step 100: val loss 0.7443, perplexity 2.105" in line


def test_a_workdir_without_metrics_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="metrics.jsonl does not exist"):
    report.write_report(str(tmp_path))
