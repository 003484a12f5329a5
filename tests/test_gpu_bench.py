"""tools/gpu_bench.sh runs end to end at toy sizes on the CPU, so it works before a GPU is spent."""

import json
import os
import subprocess

from conftest import REPO, subprocess_env


def test_gpu_bench_tiny_runs_end_to_end(tmp_path):
  data = tmp_path / "tiny.txt"
  data.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 200)
  out = tmp_path / "out"
  subprocess.run([os.path.join(REPO, "tools", "gpu_bench.sh"), "--tiny", f"--out={out}",
                  f"--data={data}"], cwd=REPO, env=subprocess_env(), check=True, timeout=600,
                 capture_output=True, text=True)
  result = json.loads((out / "gpu_bench.json").read_text())
  assert [(r["batch"], r["remat"]) for r in result["throughput"]] == [(4, "none"), (4, "dots")]
  for row in result["throughput"]:
    assert row["tokens_per_sec"] > 0 and 0 < row["mfu"] and row["loss"] > 0
  char = result["char"]
  assert char["evals"] and char["reached"]["loss"] <= char["target_val_loss"]
