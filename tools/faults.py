"""Fault injection: kill a training run at random moments, restart it, and compare with a clean run.

    python tools/faults.py --kills=20 [--steps=300] [--seed=0] [--workdir=/tmp/jaxlm_faults]
        [--data=files|prepared|mixture]

A tiny model trains on a generated corpus, first uninterrupted (the reference), then again in a
second workdir where each attempt is SIGKILLed at a random step, every other time at the moment a
checkpoint is being written, and restarted with the same command, until it finishes. Reported, with a JSON
line last: kills, resumes, kills that hit a checkpoint save, corrupt checkpoints (a restart that
could not resume, or a kept checkpoint that does not restore), steps lost, and whether the final
parameters and the per-step losses equal the reference bit for bit.
"""

import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "the a cat dog sat ran on under mat log and then quickly slowly".split()
CONFIG = """
from jaxlm.config import base_config

def get_config():
  c = base_config()
  c.data.source, c.data.tokenizer, c.data.path = "files", "char", {corpus!r}
  c.data.seq_len = c.model.max_len = 32
  c.model.d_model, c.model.num_layers, c.model.num_heads, c.model.mlp_dim = 32, 2, 2, 64
  c.train.batch_size, c.train.steps, c.train.warmup_steps, c.train.lr = 8, {steps}, 10, 3e-3
  c.train.log_every = 1  # every step's loss is compared with the reference
  c.eval.every, c.eval.sample_tokens = 0, 0
  c.checkpoint.every, c.checkpoint.keep = {every}, 2
{data}
  return c
"""


def write_inputs(root: str, steps: int, every: int, data: str = "files") -> str:
  """The corpus and the config; with `data` "prepared" the corpus prepared once and trained from
  its shards, with "mixture" prepared twice (two validation splits, one tokenizer) and mixed
  0.7/0.3, then 0.3/0.7 from half-way."""
  rng = random.Random(0)
  corpus = os.path.join(root, "corpus")
  os.makedirs(corpus, exist_ok=True)
  for doc in range(8):
    with open(os.path.join(corpus, f"doc{doc}.txt"), "w") as f:
      f.write("\n".join(" ".join(rng.choices(WORDS, k=rng.randint(3, 7))) for _ in range(40)))
  config = os.path.join(root, "config.py")
  with open(config, "w") as f:
    f.write(CONFIG.format(corpus=corpus, steps=steps, every=every, data=""))
  if data == "files":
    return config
  first, second = os.path.join(root, "prepared"), os.path.join(root, "prepared_b")
  prepare = [sys.executable, "-m", "jaxlm.prepare", f"--config={config}", "--workers=1"]
  subprocess.run([*prepare, f"--out={first}"], cwd=REPO, env=env(), check=True,
                 capture_output=True)
  lines = f"  c.data.source, c.data.path = 'prepared', {first!r}"
  if data == "mixture":
    subprocess.run([*prepare, f"--out={second}", "--config.data.val_fraction=0.4",
                    f"--config.data.tokenizer_file={first}/tokenizer.json"], cwd=REPO, env=env(),
                   check=True, capture_output=True)
    lines = (f"  c.data.source, c.data.path = 'prepared', ''\n"
             f"  c.data.mixture = (('a', {first!r}, 0.7), ('b', {second!r}, 0.3))\n"
             f"  c.data.mixture_stages = (({steps // 2}, (0.3, 0.7)),)")
  with open(config, "w") as f:
    f.write(CONFIG.format(corpus=corpus, steps=steps, every=every, data=lines))
  return config


def command(config: str, workdir: str) -> list[str]:
  return [sys.executable, "-m", "jaxlm.train", f"--config={config}", f"--workdir={workdir}"]


def env() -> dict:
  return dict(os.environ, XLA_FLAGS="", PYTHONPATH=REPO)


def losses(workdir: str) -> dict[int, float]:
  """The last logged loss of each step (a restarted run logs re-done steps again)."""
  by_step = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      if record["split"] == "train":
        by_step[record["step"]] = record["loss"]
  return by_step


def checkpoint_steps(workdir: str) -> list[int]:
  names = os.listdir(os.path.join(workdir, "checkpoints")) if os.path.isdir(
      os.path.join(workdir, "checkpoints")) else []
  return sorted(int(n) for n in names if n.isdigit())


def saving_in_progress(workdir: str) -> bool:
  return bool(glob.glob(os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp*")))


def metrics_size(workdir: str) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  return os.path.getsize(path) if os.path.exists(path) else 0


def last_logged(workdir: str, offset: int = 0) -> int:
  """The last step logged in metrics.jsonl after byte `offset` (0 if none)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path, "rb") as f:
    f.seek(offset)
    lines = [line for line in f.read().split(b"\n") if line.strip()]
  for line in reversed(lines):
    try:
      return json.loads(line)["step"]
    except ValueError:
      continue  # a line cut by a kill
  return 0


def attempt(config: str, workdir: str, kill_at: int | None, during_save: bool,
            log: str) -> tuple[str, bool, str]:
  """One run, killed once step `kill_at` is logged (and, with `during_save`, a checkpoint is
  being written): ("killed" | "finished" | "failed", whether a save was under way, output)."""
  offset = metrics_size(workdir)  # only this attempt's own progress counts
  with open(log, "w") as out:
    process = subprocess.Popen(command(config, workdir), cwd=REPO, env=env(), stdout=out,
                               stderr=subprocess.STDOUT)
    outcome, in_save = None, False
    while outcome is None:
      if process.poll() is not None:
        outcome = "finished" if process.returncode == 0 else "failed"
      elif (kill_at is not None and last_logged(workdir, offset) >= kill_at
            and checkpoint_steps(workdir)  # a complete checkpoint exists: the rerun resumes
            and (not during_save or saving_in_progress(workdir))):
        process.send_signal(signal.SIGKILL)
        process.wait()
        outcome, in_save = "killed", saving_in_progress(workdir)
      else:
        time.sleep(0.002)
  with open(log) as f:
    return outcome, in_save, f.read()


def run(kills: int, steps: int, every: int, seed: int, root: str, data: str = "files") -> dict:
  shutil.rmtree(root, ignore_errors=True)
  os.makedirs(root)
  config = write_inputs(root, steps, every, data)
  reference, faulty = os.path.join(root, "reference"), os.path.join(root, "faulty")
  started = time.perf_counter()
  outcome, _, output = attempt(config, reference, None, False, os.path.join(root, "ref.log"))
  if outcome != "finished":
    raise SystemExit(f"the reference run failed:\n{output[-2000:]}")
  reference_seconds = time.perf_counter() - started

  rng = random.Random(seed)
  report = {"kills": 0, "resumes": 0, "kills_during_save": 0, "corrupt_checkpoints": 0,
            "steps_lost": 0, "attempts": 0}
  killed_at = 0
  while True:
    report["attempts"] += 1
    kill_at = None
    if report["kills"] < kills:
      # Spread the kills so that all of them happen before the run ends.
      done = max(checkpoint_steps(faulty), default=0)
      chunk = max(1, (steps - done) // (kills - report["kills"] + 1))
      kill_at = min(steps - 1, done + rng.randint(1, 2 * chunk))
    outcome, in_save, output = attempt(config, faulty, kill_at, report["kills"] % 2 == 1,
                                       os.path.join(root, f"attempt{report['attempts']}.log"))
    if "resumed from step" in output:
      report["resumes"] += 1
      resumed = int(output.split("resumed from step ")[1].split()[0])
      report["steps_lost"] += max(0, killed_at - resumed)
    if outcome == "failed":
      report["corrupt_checkpoints"] += 1
      raise SystemExit(f"a restart failed (corrupt checkpoint?):\n{output[-2000:]}")
    if outcome == "finished":
      break
    report["kills"] += 1
    report["kills_during_save"] += in_save
    killed_at = last_logged(faulty)

  report["corrupt_checkpoints"] += verify_checkpoints(faulty)
  report.update(compare(reference, faulty))
  report["reference_seconds"] = round(reference_seconds, 1)
  return report


def verify_checkpoints(workdir: str) -> int:
  """How many kept checkpoints fail to restore completely (params, optimizer state, data)."""
  sys.path.insert(0, REPO)
  from jaxlm.inference import trained  # imported late: only this check needs jax here
  from jaxlm.training import checkpoint
  bad = 0
  for step in checkpoint_steps(workdir):
    try:
      run = trained.load(workdir, step)
      with checkpoint.manager(workdir, read_only=True) as mngr:
        checkpoint.restore(mngr, step, run.engine.abstract_state)
    except Exception:  # noqa: BLE001  (any failure to restore counts as corrupt)
      bad += 1
  return bad


def compare(reference: str, faulty: str) -> dict:
  import jax
  import numpy as np

  from jaxlm.inference import trained
  ref_params, new_params = trained.load(reference).params, trained.load(faulty).params
  equal = all(np.array_equal(np.asarray(a), np.asarray(b))
              for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(new_params)))
  ref_losses, new_losses = losses(reference), losses(faulty)
  return {"final_params_equal": bool(equal), "losses_equal": ref_losses == new_losses,
          "steps": max(ref_losses)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--kills", type=int, default=20)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--checkpoint_every", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workdir", default="/tmp/jaxlm_faults")
  parser.add_argument("--data", choices=("files", "prepared", "mixture"), default="files",
                      help="train on the files, on them prepared, or on a mixture of two "
                      "prepared directories with a stage change half-way")
  args = parser.parse_args()
  report = run(args.kills, args.steps, args.checkpoint_every, args.seed, args.workdir, args.data)
  for key, value in report.items():
    print(f"{key:<22} {value}")
  print(json.dumps(report))


if __name__ == "__main__":
  main()
