"""Does masked-LM pretraining help? The built-in classification task learned three ways.

    python tools/bert_benefit.py [--pretrained=runs/bert] [--out=runs/bert_benefit]

1. pretrained: `configs/bert_classify.py` finetuned from the MLM run `--pretrained` (trained first
   with `configs/bert_tiny.py` when that workdir holds no run);
2. scratch: the same architecture (bert_tiny's), the same tokenizer (the pretrained run's
   tokenizer.json, copied into the workdir before training) and the same finetuning settings
   (steps, lr, batch), trained on the labels alone from a random initialisation;
3. tf-idf: scikit-learn's TfidfVectorizer (word 1-2-grams, sublinear tf) + LogisticRegression on
   the same training texts.
All three are scored on the task's validation split (docstrings from stdlib files that neither
pretraining nor the training split read): accuracy and macro-F1 by `jaxlm.eval.labels`. Prints a
table; the last line of stdout is one JSON object.
"""

import argparse
import json
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


def finetuned(pretrained: str, workdir: str) -> dict:
  run(["jaxlm.train", "--config=configs/bert_classify.py", f"--config.init_from={pretrained}",
       f"--workdir={workdir}"])
  return run(["jaxlm.evaluate", f"--workdir={workdir}"])


def scratch(pretrained: str, workdir: str) -> dict:
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
  return run(["jaxlm.evaluate", f"--workdir={workdir}"])


def tfidf() -> dict:
  from sklearn.feature_extraction.text import TfidfVectorizer
  from sklearn.linear_model import LogisticRegression

  from jaxlm.data.label_tasks import load_label_task
  from jaxlm.eval.labels import classification_metrics
  train, val = load_label_task(TASK, "train"), load_label_task(TASK, "val")
  vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
  features = vectorizer.fit_transform([r.text for r in train])
  model = LogisticRegression(max_iter=2000, C=10.0)
  model.fit(features, [str(r.label) for r in train])
  predicted = model.predict(vectorizer.transform([r.text for r in val]))
  labels = sorted({str(r.label) for r in train})
  return classification_metrics([str(r.label) for r in val], list(predicted), labels)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pretrained", default="runs/bert")
  parser.add_argument("--out", default="runs/bert_benefit")
  args = parser.parse_args()
  if not os.path.isdir(os.path.join(args.pretrained, "checkpoints")):
    run(["jaxlm.train", "--config=configs/bert_tiny.py", f"--workdir={args.pretrained}"])
  results = {"pretrained": finetuned(args.pretrained, os.path.join(args.out, "finetuned")),
             "scratch": scratch(args.pretrained, os.path.join(args.out, "scratch")),
             "tfidf": tfidf()}
  print(f"\n{TASK} (validation split)   {'accuracy':>10} {'macro_f1':>10}")
  for name, metrics in results.items():
    print(f"{name:<32} {metrics['accuracy']:>10.4f} {metrics['macro_f1']:>10.4f}")
  print(json.dumps(results))


if __name__ == "__main__":
  main()
