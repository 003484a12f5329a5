"""tools/gpu_bench.sh runs end to end at toy sizes on the CPU, so it works before a GPU is spent."""

import collections
import json
import math
import os
import subprocess

import pytest
from conftest import REPO, subprocess_env

LINE = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
# --tiny's throughput model (tools/gpu_bench.py): vocab, d_model, layers, mlp_dim, seq_len.
VOCAB, D_MODEL, LAYERS, MLP, SEQ = 256, 64, 2, 256, 64


def tiny_flops_per_token() -> float:
  """PaLM's 6N + 12·layers·T·d for the tiny GPT-2-shaped model, its N counted here by hand:
  every parameter but the (only added) position table; the tied embedding is the output head."""
  layer = (2 * 2 * D_MODEL  # two LayerNorms, scale and bias
           + D_MODEL * 3 * D_MODEL + 3 * D_MODEL  # qkv
           + D_MODEL * D_MODEL + D_MODEL  # attention output
           + D_MODEL * MLP + MLP + MLP * D_MODEL + D_MODEL)  # MLP
  matmul_params = LAYERS * layer + VOCAB * D_MODEL + 2 * D_MODEL  # + final LayerNorm
  return 6.0 * matmul_params + 12.0 * LAYERS * SEQ * D_MODEL


def test_gpu_bench_tiny_runs_end_to_end(tmp_path):
  data = tmp_path / "tiny.txt"
  data.write_text(LINE * 200)
  out = tmp_path / "out"
  subprocess.run([os.path.join(REPO, "tools", "gpu_bench.sh"), "--tiny", f"--out={out}",
                  f"--data={data}"], cwd=REPO, env=subprocess_env(), check=True, timeout=600,
                 capture_output=True, text=True)
  result = json.loads((out / "gpu_bench.json").read_text())
  assert [(r["batch"], r["remat"]) for r in result["throughput"]] == [(4, "none"), (4, "dots")]
  for row in result["throughput"]:
    # A few steps on uniformly random tokens cannot get far from the uniform loss ln(vocab).
    assert abs(row["loss"] - math.log(VOCAB)) < 0.5
    assert row["tokens_per_sec"] == pytest.approx(row["batch"] * SEQ / (row["step_ms"] / 1e3))
    # One CPU device in the subprocess (subprocess_env), so the peak is the device's.
    assert row["mfu"] == pytest.approx(
        row["tokens_per_sec"] * tiny_flops_per_token() / (row["peak_tflops"] * 1e12))
  # The char run's target must need a model that learns: one that learns nothing stays at
  # ln(vocab), one that learns only character frequencies at their entropy.
  counts = collections.Counter(LINE)
  char_vocab = len(counts) + 2  # + EOS and <unk> (the char tokenizer)
  entropy = -sum(n / len(LINE) * math.log(n / len(LINE)) for n in counts.values())  # ~2.97 nats
  char = result["char"]
  assert char["target_val_loss"] < entropy - 0.5 < math.log(char_vocab)
  assert char["evals"] and char["reached"]["loss"] <= char["target_val_loss"]
