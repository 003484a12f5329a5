"""Print a task's metrics before and after finetuning side by side.

    python tools/before_after.py runs/default/predictions/pyfunc_names_step600.json \
        runs/finetune/predictions/pyfunc_names_step300.json

Each file is the metrics JSON that `python -m jaxlm.evaluate --task=...` writes beside its
predictions. The last line of stdout is one JSON object {"before": {...}, "after": {...}}.
"""

import json
import sys

KEYS = ("exact_match", "bleu", "rougeL", "completion_perplexity", "examples")


def main(before_path: str, after_path: str) -> None:
  with open(before_path) as f:
    before = json.load(f)
  with open(after_path) as f:
    after = json.load(f)
  print(f"{'task ' + before['task']:<24} {'pretrained':>12} {'finetuned':>12}")
  for key in KEYS:
    print(f"{key:<24} {before[key]:>12.4g} {after[key]:>12.4g}")
  print(json.dumps({"before": before, "after": after}))


if __name__ == "__main__":
  if len(sys.argv) != 3:
    sys.exit("usage: python tools/before_after.py BEFORE.json AFTER.json")
  main(sys.argv[1], sys.argv[2])
