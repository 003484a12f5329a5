"""Full finetune vs LoRA on the built-in finetuning task (the `make run` flow).

    python tools/lora_bench.py [--root=runs/lora_bench] [--ranks=4,16,64] [--steps=300]
    python tools/lora_bench.py --skip_full --ranks=16 --lora_lr=6e-3,1e-2   # a learning-rate sweep

Pretrains configs/default.py once (or reuses ROOT/pretrain), then finetunes it with
configs/finetune.py on pyfunc_params: fully (its train.lr, 5e-4) and with LoRA at each rank
(alpha = 2 x rank, every attention and MLP projection, train.lr 3e-3: adapters start at B = 0 and
need a larger rate). Each run is evaluated on the task's test split. Prints one JSON line per run:
exact match, BLEU, ROUGE-L, trainable share, median step time and the peak RSS of the training
process.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEASURE = """
import resource, subprocess, sys
result = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stderr.write(result.stderr[-3000:])
print(result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "{}")
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
sys.exit(result.returncode)
"""


def run(*args: str) -> tuple[dict, int]:
  """(last JSON line of stdout, peak RSS in bytes) of `python -m jaxlm.<args>`."""
  out = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", *args], cwd=REPO,
                       env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True)
  if out.returncode:
    raise SystemExit(out.stderr[-3000:])
  lines = out.stdout.strip().splitlines()
  return json.loads(lines[-2]), int(lines[-1])


def step_time(workdir: str) -> float:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return statistics.median(r["step_time"] for r in rows if "step_time" in r)


def trainable_share(workdir: str) -> float:
  sys.path.insert(0, REPO)
  from jaxlm.inference import trained
  from jaxlm.models import lora
  from jaxlm.training.metrics import param_count
  params = trained.load(workdir).params
  return param_count(lora.split(params)[0]) / param_count(params)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--root", default="runs/lora_bench")
  parser.add_argument("--ranks", default="4,16,64")
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--lora_lr", default="3e-3", help="LoRA runs' train.lr; a list sweeps it")
  parser.add_argument("--skip_full", action="store_true", help="LoRA runs only")
  args = parser.parse_args()
  root = os.path.abspath(args.root)
  pretrain = os.path.join(root, "pretrain")
  if not os.path.isdir(os.path.join(pretrain, "checkpoints")):
    run("jaxlm.train", "--config=configs/default.py", f"--workdir={pretrain}")
  variants = [] if args.skip_full else [("full", [])]
  for lr in args.lora_lr.split(","):
    suffix = "" if lr == "3e-3" else f"_lr{lr}"
    variants += [(f"lora_r{r}{suffix}", [f"--config.train.lora.rank={r}",
                                         f"--config.train.lora.alpha={2 * r}",
                                         f"--config.train.lr={lr}"])
                 for r in map(int, args.ranks.split(","))]
  for name, extra in variants:
    workdir = os.path.join(root, name)
    _, rss = run("jaxlm.train", "--config=configs/finetune.py", f"--config.init_from={pretrain}",
                 f"--config.train.steps={args.steps}", f"--workdir={workdir}", *extra)
    metrics, _ = run("jaxlm.evaluate", f"--workdir={workdir}", "--task=pyfunc_params")
    print(json.dumps({"run": name, **{k: metrics.get(k) for k in ("exact_match", "bleu",
                                                                    "rougeL")},
                      "trainable_share": trainable_share(workdir),
                      "step_time_s": step_time(workdir), "train_peak_rss_bytes": rss}),
          flush=True)


if __name__ == "__main__":
  main()
