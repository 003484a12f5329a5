"""tools/before_after.py: the end of `make run` reads both runs' predictions and shows what changed."""

import json
import os
import subprocess
import sys

from conftest import REPO


def write_predictions(workdir, step, metrics, rows):
  directory = workdir / "predictions"
  directory.mkdir(parents=True)
  (directory / f"pyfunc_params_step{step}.json").write_text(json.dumps(metrics))
  (directory / f"pyfunc_params_step{step}.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in rows))
  # An older evaluation, which must not be the one read.
  (directory / f"pyfunc_params_step{step // 2}.json").write_text(json.dumps({**metrics, "bleu": -1}))


def test_before_after_prints_the_table_examples_and_next_steps(tmp_path):
  rows = [("def a(x):", "x"), ("def b(self, y):", "self, y"), ("def c(p, q):", "p, q")]
  before = [{"prompt": p + "\n# parameters: ", "reference": r, "prediction": "???", "exact": False}
            for p, r in rows]
  after = [dict(b, prediction=b["reference"] if i < 2 else "p", exact=i < 2)
           for i, b in enumerate(before)]
  metrics = {"task": "pyfunc_params", "exact_match": 0.0, "bleu": 1.0, "rougeL": 0.1,
             "completion_perplexity": 300.0, "examples": 3}
  write_predictions(tmp_path / "pre", 600, metrics, before)
  write_predictions(tmp_path / "ft", 300, {**metrics, "exact_match": 2 / 3, "bleu": 50.0}, after)
  result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "before_after.py"),
                           "--task=pyfunc_params", f"--before={tmp_path / 'pre'}",
                           f"--after={tmp_path / 'ft'}"], capture_output=True, text=True, check=True)
  out = result.stdout
  assert "exact_match                         0       0.6667" in out
  assert "bleu                                1           50" in out
  # Examples: the two the finetune fixed, then the one it still gets wrong.
  expected_order = [out.index("expected:   x\n"), out.index("expected:   self, y\n"),
                    out.index("expected:   p, q\n")]
  assert expected_order == sorted(expected_order)
  assert "finetuned:  'p'\n" in out and out.count("(right)") == 2
  assert f"--workdir={tmp_path / 'ft'} --task=pyfunc_params" in out
  assert json.loads(out.splitlines()[-1])["after"]["bleu"] == 50.0
