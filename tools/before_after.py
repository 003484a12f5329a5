"""The end of `make run`: a task's metrics before and after finetuning, examples, and what next.

    python tools/before_after.py --task=pyfunc_params --before=runs/default --after=runs/finetune

Reads the newest `predictions/TASK_stepN.json` (metrics) and `.jsonl` (one row per example) that
`python -m jaxlm.evaluate --task=TASK` wrote in each workdir. Prints the metrics side by side, a few
test examples (prompt, expected answer, the pretrained and the finetuned model's answers), where the
runs, reports and predictions are, and the commands to try next. The last line of stdout is one
JSON object {"before": {...}, "after": {...}}.
"""

import argparse
import glob
import json
import os
import re

KEYS = ("exact_match", "bleu", "rougeL", "completion_perplexity", "examples")
EXAMPLES = 3


def newest_predictions(workdir: str, task: str) -> str:
  """The base path (no extension) of the task's predictions at the run's highest step."""
  paths = glob.glob(os.path.join(glob.escape(workdir), "predictions", f"{task}_step*.json"))
  if not paths:
    raise SystemExit(f"error: no {task} predictions in {workdir}/predictions; run "
                     f"`python -m jaxlm.evaluate --workdir={workdir} --task={task}` first")
  return max(paths, key=lambda p: int(re.search(r"_step(\d+)\.json$", p).group(1)))[:-5]


def load(base: str) -> tuple[dict, list[dict]]:
  with open(base + ".json", encoding="utf-8") as f:
    metrics = json.load(f)
  with open(base + ".jsonl", encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  return metrics, rows


def examples(before: list[dict], after: list[dict]) -> list[tuple[dict, dict]]:
  """A few examples: first ones the finetuned model gets right and the pretrained does not, then
  any it still gets wrong, so the table shows what changed and what did not."""
  pairs = list(zip(before, after))
  fixed = [(b, a) for b, a in pairs if a["exact"] and not b["exact"]]
  wrong = [(b, a) for b, a in pairs if not a["exact"]]
  return (fixed[:EXAMPLES - 1] + wrong[:1] + fixed[EXAMPLES - 1:])[:EXAMPLES]


def print_report(task: str, before_dir: str, after_dir: str) -> dict:
  before_base, after_base = newest_predictions(before_dir, task), newest_predictions(after_dir, task)
  (before, before_rows), (after, after_rows) = load(before_base), load(after_base)
  print(f"\n{'task ' + task:<24} {'pretrained':>12} {'finetuned':>12}")
  for key in KEYS:
    print(f"{key:<24} {before[key]:>12.4g} {after[key]:>12.4g}")
  print("\nexamples from the test split (functions no run trained on):")
  for b, a in examples(before_rows, after_rows):
    prompt = b["prompt"].rstrip("\n").split("\n")
    print("  prompt:     " + "\n              ".join(prompt[-3:]))
    print(f"  expected:   {b['reference']}")
    print(f"  pretrained: {b['prediction']!r}{'  (right)' if b['exact'] else ''}")
    print(f"  finetuned:  {a['prediction']!r}{'  (right)' if a['exact'] else ''}\n")
  print(f"runs:        {before_dir} (pretrained), {after_dir} (finetuned): checkpoints, "
        "metrics.jsonl, TensorBoard events")
  print(f"reports:     {before_dir}/report.png, {after_dir}/report.png")
  print(f"predictions: {before_base}.jsonl, {after_base}.jsonl")
  print("next:")
  print("  . .venv/bin/activate")
  print(f"  python -m jaxlm.sample --workdir={before_dir} --prompt='def parse(' --num_samples=2")
  print(f"  python -m jaxlm.evaluate --workdir={after_dir} --task={task}")
  print(f"  python -m jaxlm.evaluate --workdir={after_dir}   # perplexity on its validation split")
  print(f"  python -m jaxlm.report --workdir={after_dir}")
  return {"before": before, "after": after}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--task", required=True)
  parser.add_argument("--before", required=True, help="the pretrained run's workdir")
  parser.add_argument("--after", required=True, help="the finetuned run's workdir")
  args = parser.parse_args()
  print(json.dumps(print_report(args.task, args.before, args.after)))


if __name__ == "__main__":
  main()
