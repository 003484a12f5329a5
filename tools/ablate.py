"""Time to quality, one change at a time: the ablation table of configs/shakespeare_char_fast.py.

    python tools/ablate.py --data=../shared/data/tinyshakespeare.txt --out=/tmp/ablate

Trains each variant below with `python -m jaxlm.train` (a fresh process and workdir each, the
shipped config plus the variant's overrides), evaluating on the full validation split every
`--eval_every` steps. For each it reports the median train step, the first evaluated step whose
validation loss is <= `--target`, and the wall time to get there: the run's seconds up to the end
of that evaluation, less the earlier evaluations (a run that stopped there would have evaluated
once). Variants run one after another, so compare them inside one run of this tool. Writes
OUT/ablation.json and prints a Markdown table.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/shakespeare_char_fast.py"

# name -> overrides of the shipped fast config; each undoes one of its changes from nanoGPT's recipe.
VARIANTS = {
    "shipped fast config": [],
    "learned positions (no RoPE)": ["--config.model.positions=learned"],
    "LayerNorm (no RMSNorm)": ["--config.model.norm=layernorm"],
    "GELU 512 (no SwiGLU)": ["--config.model.mlp=gelu", "--config.model.mlp_dim=512"],
    "lr 1e-3, warm-up 100 (nanoGPT's)": ["--config.train.lr=1e-3",
                                         "--config.train.warmup_steps=100"],
    "one CPU device (no mesh.cpu_devices)": ["--config.mesh.cpu_devices=1",
                                             "--config.mesh.data=-1", "--config.mesh.fsdp=1"],
    "all four model/optimizer changes undone": [
        "--config.model.positions=learned", "--config.model.norm=layernorm",
        "--config.model.mlp=gelu", "--config.model.mlp_dim=512", "--config.train.lr=1e-3",
        "--config.train.warmup_steps=100"],
}


def read_metrics(path: str) -> tuple[list[dict], list[dict]]:
  with open(path) as f:
    records = [json.loads(line) for line in f]
  return ([r for r in records if r["split"] == "train"], [r for r in records if r["split"] == "val"])


def summarize(workdir: str, target: float) -> dict:
  train, val = read_metrics(os.path.join(workdir, "metrics.jsonl"))
  summary = {"step_time_ms": 1e3 * statistics.median(r["step_time"] for r in train),
             "final_step": val[-1]["step"], "final_val_loss": val[-1]["loss"],
             "steps_to_target": None, "wall_to_target": None}
  earlier_evals = 0.0
  for record in val:
    if record["loss"] <= target:
      summary["steps_to_target"] = record["step"]
      summary["wall_to_target"] = record["wall_seconds"] - earlier_evals
      break
    earlier_evals += record["eval_seconds"]
  return summary


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True, help="tinyshakespeare.txt")
  parser.add_argument("--out", required=True, help="directory for the runs and ablation.json")
  parser.add_argument("--target", type=float, default=1.886, help="validation loss to reach")
  parser.add_argument("--eval_every", type=int, default=50)
  parser.add_argument("--only", default="", help="comma-separated variant numbers (0 = shipped)")
  args = parser.parse_args()
  names = list(VARIANTS)
  if args.only:
    names = [names[int(i)] for i in args.only.split(",")]
  results = {}
  for name in names:
    workdir = os.path.join(args.out, f"variant{list(VARIANTS).index(name)}")
    if os.path.exists(workdir):
      sys.exit(f"error: {workdir} exists; give a new --out")
    command = [sys.executable, "-m", "jaxlm.train", f"--config={CONFIG}",
               f"--config.data.path={os.path.abspath(args.data)}", f"--workdir={workdir}",
               f"--config.eval.every={args.eval_every}", *VARIANTS[name]]
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    results[name] = {"overrides": VARIANTS[name], **summarize(workdir, args.target)}
    print(name, json.dumps(results[name]), flush=True)
  with open(os.path.join(args.out, "ablation.json"), "w") as f:
    json.dump({"target": args.target, "eval_every": args.eval_every, "variants": results}, f,
              indent=1)
  print(f"\n| change | step | steps to {args.target} | wall time to {args.target} | "
        "val loss at the last step |\n|---|---|---|---|---|")
  for name, r in results.items():
    if r["steps_to_target"] is None:
      steps, wall = "-", "not reached"
    else:
      steps, wall = r["steps_to_target"], f"{r['wall_to_target']:.1f} s"
    print(f"| {name} | {r['step_time_ms']:.1f} ms | {steps} | {wall} | "
          f"{r['final_val_loss']:.4f} (step {r['final_step']}) |")


if __name__ == "__main__":
  main()
