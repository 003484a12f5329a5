"""Does masked-LM pretraining help? The built-in classification task learned three ways.

    python tools/bert_benefit.py [--pretrained=runs/bert] [--out=runs/bert_benefit] \
        [--pretrain_steps=N]

1. pretrained: `configs/bert_classify.py` finetuned from the MLM run `--pretrained` (trained first
   with `configs/bert_tiny.py` when that workdir holds no run, for `--pretrain_steps` steps if
   given, with 5% of them warm-up);
2. scratch: the same architecture (bert_tiny's), the same tokenizer (the pretrained run's
   tokenizer.json, copied into the workdir before training) and the same finetuning settings
   (steps, lr, batch), trained on the labels alone from a random initialisation;
3. tf-idf: scikit-learn's TfidfVectorizer (word 1-2-grams, sublinear tf) + LogisticRegression on
   the same training texts.
All three are scored on the task's validation and test splits (docstrings from stdlib files that
neither pretraining nor the training split read; the test split is given to `evaluate` as a JSONL
file): accuracy and macro-F1 by `jaxlm.eval.labels`. The splits are small (80 and 95 examples), so
the table also prints each accuracy's binomial standard error. Prints a table; the last line of
stdout is one JSON object.
"""

import argparse
import json
import math
import os
import runpy
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

TASK = "docstring_package"


def run(args: list[str]) -> dict:
  """A jaxlm verb as a subprocess; its last stdout line (JSON)."""
  done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, check=True, text=True,
                        stdout=subprocess.PIPE)
  return json.loads(done.stdout.strip().splitlines()[-1])


def scored(workdir: str, test_file: str) -> dict:
  """{"val": metrics, "test": metrics} of a trained classifier."""
  test = ["--config.data.source=files", "--config.data.format=classification",
          f"--config.data.path={test_file}", f"--config.data.val_path={test_file}"]
  return {"val": run(["jaxlm.evaluate", f"--workdir={workdir}"]),
          "test": run(["jaxlm.evaluate", f"--workdir={workdir}", *test])}


def finetuned(pretrained: str, workdir: str, test_file: str) -> dict:
  run(["jaxlm.train", "--config=configs/bert_classify.py", f"--config.init_from={pretrained}",
       f"--workdir={workdir}"])
  return scored(workdir, test_file)


def scratch(pretrained: str, workdir: str, test_file: str) -> dict:
  """bert_tiny's architecture with bert_classify's data and optimisation, from random weights."""
  ft = runpy.run_path(os.path.join(REPO, "configs", "bert_classify.py"))["get_config"]()
  os.makedirs(workdir, exist_ok=True)
  shutil.copy(os.path.join(pretrained, "tokenizer.json"), os.path.join(workdir, "tokenizer.json"))
  overrides = [f"--config.data.source={ft.data.source}", f"--config.data.path={ft.data.path}",
               f"--config.data.format={ft.data.format}", f"--config.data.seq_len={ft.data.seq_len}",
               "--config.model.head=classify", f"--config.train.steps={ft.train.steps}",
               f"--config.train.lr={ft.train.lr}",
               f"--config.train.batch_size={ft.train.batch_size}",
               f"--config.train.warmup_steps={ft.train.warmup_steps}",
               f"--config.train.weight_decay={ft.train.weight_decay}",
               f"--config.eval.every={ft.eval.every}", f"--config.checkpoint.every={ft.eval.every}"]
  run(["jaxlm.train", "--config=configs/bert_tiny.py", f"--workdir={workdir}", *overrides])
  return scored(workdir, test_file)


def tfidf() -> dict:
  from sklearn.feature_extraction.text import TfidfVectorizer
  from sklearn.linear_model import LogisticRegression

  from jaxlm.data.label_tasks import load_label_task
  from jaxlm.eval.labels import classification_metrics
  train = load_label_task(TASK, "train")
  vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
  features = vectorizer.fit_transform([r.text for r in train])
  model = LogisticRegression(max_iter=2000, C=10.0)
  model.fit(features, [str(r.label) for r in train])
  labels = sorted({str(r.label) for r in train})
  scores = {}
  for split in ("val", "test"):
    records = load_label_task(TASK, split)
    predicted = model.predict(vectorizer.transform([r.text for r in records]))
    scores[split] = classification_metrics([str(r.label) for r in records], list(predicted), labels)
  return scores


def write_test_split(path: str) -> str:
  """The task's test split as the {"text", "label"} JSONL a user would give `evaluate`."""
  from jaxlm.data.label_tasks import load_label_task
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for r in load_label_task(TASK, "test"):
      f.write(json.dumps({"text": r.text, "label": r.label}) + "\n")
  return path


def main() -> None:
  from jaxlm.data.label_tasks import load_label_task
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pretrained", default="runs/bert")
  parser.add_argument("--out", default="runs/bert_benefit")
  parser.add_argument("--pretrain_steps", type=int, default=0,
                      help="Pretraining steps (default: configs/bert_tiny.py's).")
  args = parser.parse_args()
  if not os.path.isdir(os.path.join(args.pretrained, "checkpoints")):
    steps = ([f"--config.train.steps={args.pretrain_steps}",
              f"--config.train.warmup_steps={args.pretrain_steps // 20}"]
             if args.pretrain_steps else [])
    run(["jaxlm.train", "--config=configs/bert_tiny.py", f"--workdir={args.pretrained}", *steps])
  test_file = write_test_split(os.path.join(args.out, "test.jsonl"))
  results = {"pretrained": finetuned(args.pretrained, os.path.join(args.out, "finetuned"),
                                     test_file),
             "scratch": scratch(args.pretrained, os.path.join(args.out, "scratch"), test_file),
             "tfidf": tfidf()}
  print(f"\n{TASK:<20} {'split':<6} {'n':>4} {'accuracy':>9} {'(s.e.)':>8} {'macro_f1':>9}")
  for name, splits in results.items():
    for split, m in splits.items():
      n = len(load_label_task(TASK, split))
      stderr = math.sqrt(m["accuracy"] * (1 - m["accuracy"]) / n)
      print(f"{name:<20} {split:<6} {n:>4} {m['accuracy']:>9.4f} {stderr:>8.4f} "
            f"{m['macro_f1']:>9.4f}")
  print(json.dumps(results))


if __name__ == "__main__":
  main()
