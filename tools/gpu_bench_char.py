"""The char run of tools/gpu_bench.py: nanoGPT's GPU char recipe through `python -m jaxlm.train`,
watched until the first validation loss at or under a target, or a time cap."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def char_command(tiny: bool, data: str, workdir: str) -> list[str]:
  """`python -m jaxlm.train` with nanoGPT's GPU char recipe (--tiny: a toy of it)."""
  overrides = {"data.path": data, "data.seq_len": 256, "model.max_len": 256, "model.d_model": 384,
               "model.num_layers": 6, "model.num_heads": 6, "model.mlp_dim": 1536,
               "model.dropout": 0.2, "model.dtype": "bfloat16", "train.batch_size": 64,
               "train.steps": 5000, "train.lr": 1e-3, "train.warmup_steps": 100,
               "train.log_every": 250, "eval.every": 250, "eval.max_batches": 20,
               "eval.batch_size": 64, "eval.sample_tokens": 0, "checkpoint.every": 100000,
               "mesh.cpu_devices": 0}
  if tiny:
    overrides.update({"data.seq_len": 32, "model.max_len": 32, "model.d_model": 32,
                      "model.num_layers": 1, "model.num_heads": 2, "model.mlp_dim": 64,
                      "train.batch_size": 8, "train.steps": 100, "train.lr": 3e-3,
                      "train.warmup_steps": 5, "train.log_every": 10, "eval.every": 20,
                      "eval.max_batches": 2, "eval.batch_size": 8})
  return [sys.executable, "-m", "jaxlm.train", "--config=configs/shakespeare_char.py",
          f"--workdir={workdir}", *(f"--config.{k}={v}" for k, v in overrides.items())]


def new_evals(metrics_path: str, seen: int, now: float) -> tuple[list[dict], int]:
  """The validation records written to metrics.jsonl since line `seen`, and the new line count."""
  if not os.path.exists(metrics_path):
    return [], seen
  with open(metrics_path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  evals = [{"step": r["step"], "loss": r["loss"], "wall_s": now}
           for r in map(json.loads, lines[seen:]) if r.get("split") == "val"]
  return evals, len(lines)


def time_to_loss(tiny: bool, data: str, workdir: str, target: float, cap_s: float,
                 owner=None) -> dict:
  """Trains the char recipe until validation loss <= target or `cap_s`; wall time from launch.
  `owner.child` holds the training process while it runs (so a hard stop can end it)."""
  # stderr to a file, not a pipe: tqdm's progress bar would fill a pipe nobody reads yet.
  log = tempfile.TemporaryFile("w+", encoding="utf-8")
  start = time.perf_counter()
  process = subprocess.Popen(char_command(tiny, data, workdir), cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
  if owner is not None:
    owner.child = process
  evals, seen, reached = [], 0, None
  while True:
    now = time.perf_counter() - start
    done = process.poll() is not None
    found, seen = new_evals(os.path.join(workdir, "metrics.jsonl"), seen, now)
    evals += found
    reached = next((e for e in evals if e["loss"] <= target), None)
    if reached or done or now > cap_s:
      break
    time.sleep(0.25)
  wall_s = time.perf_counter() - start
  if process.poll() is None:
    process.send_signal(signal.SIGTERM)  # train.py saves and exits on SIGTERM
    try:
      process.wait(20)
    except subprocess.TimeoutExpired:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
  if owner is not None:
    owner.child = None
  log.seek(0)
  stderr = log.read()
  log.close()
  status = ("ok" if reached else "timeout" if wall_s > cap_s else
            "not_reached" if process.returncode == 0 else "failed")
  record = {"status": status, "target_val_loss": target, "reached": reached, "evals": evals,
            "wall_s": wall_s, "cap_s": cap_s}
  if status in ("failed", "not_reached"):
    record["reason"] = (f"jaxlm.train ended (exit status {process.returncode}) without reaching "
                        f"{target}: " + " ".join(stderr.split()[-80:])[-600:])
  return record
