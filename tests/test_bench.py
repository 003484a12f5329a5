"""tools/bench.py measures a config end to end (tiny sizes here; the numbers live in docs/)."""

import json
import subprocess
import sys

import jax
import pytest
from conftest import REPO, subprocess_env
from test_train import write_corpus

from jaxlm.training import metrics

TINY = ["--config=configs/shakespeare_char.py", "--config.data.seq_len=32",
        "--config.model.max_len=32", "--config.model.d_model=32", "--config.model.num_layers=2",
        "--config.model.num_heads=2", "--config.model.mlp_dim=64", "--config.train.batch_size=8",
        "--config.eval.batch_size=8", "--repeats=2", "--steps=3", "--new_tokens=12"]


def bench(*args: str) -> dict:
  result = subprocess.run([sys.executable, "tools/bench.py", *TINY, *args], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_bench_on_real_data_times_pipeline_host_wait_and_kv_cache(tmp_path):
  data = write_corpus(tmp_path / "corpus")
  result = bench(f"--config.data.path={data}")
  assert result["data"] == "real" and result["machine"].endswith("2 cpu device(s)")
  assert 0 <= result["host_wait"] < 1 and result["pipeline_tokens"] > 0
  assert result["pipeline_tokens_per_sec"] > 0 and result["step_time_ms"] > 0
  assert 0 < result["mfu"] < 1
  assert result["kv_cache_same_tokens"] and result["sample_new_tokens"] == 12


def test_bench_without_data_uses_synthetic_batches():
  result = bench("--config.mesh.cpu_devices=1")
  assert result["data"] == "synthetic" and result["host_wait"] is None
  assert "pipeline_tokens" not in result and result["machine"].endswith("1 cpu device(s)")


def test_cpu_peak_is_shared_by_the_host_cpu_devices(monkeypatch):
  monkeypatch.setattr(metrics, "measure_matmul_peak", lambda: 8e9)
  peak, source = metrics.peak_flops(jax.devices("cpu")[0], "float32")
  assert jax.local_device_count("cpu") == 8  # conftest
  assert peak == pytest.approx(1e9) and "shared by its CPU devices" in source


def test_ablate_counts_wall_time_to_target_without_the_earlier_evaluations(tmp_path):
  sys.path.insert(0, f"{REPO}/tools")
  import ablate
  records = [{"split": "train", "step": 50, "step_time": 0.05},
             {"split": "train", "step": 100, "step_time": 0.07},
             {"split": "train", "step": 150, "step_time": 0.06},
             {"split": "val", "step": 50, "loss": 2.5, "wall_seconds": 10.0, "eval_seconds": 2.0},
             {"split": "val", "step": 100, "loss": 1.9, "wall_seconds": 15.0, "eval_seconds": 2.0},
             {"split": "val", "step": 150, "loss": 1.8, "wall_seconds": 20.0, "eval_seconds": 2.0}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  summary = ablate.summarize(str(tmp_path), target=1.886)
  assert summary["steps_to_target"] == 150 and summary["wall_to_target"] == pytest.approx(16.0)
  assert summary["step_time_ms"] == pytest.approx(60.0) and summary["final_val_loss"] == 1.8
  assert ablate.summarize(str(tmp_path), target=1.5)["steps_to_target"] is None
