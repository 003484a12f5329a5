"""Does masked-LM pretraining help? A built-in classification task learned three ways.

    python tools/bert_benefit.py [--pretrained=runs/bert] [--out=runs/bert_benefit] \
        [--task=docstring_package|python_syntax] [--pretrain_steps=N] [--seeds=1] [--ft_lr=LR] \
        [--ft_steps=N] [--ft_batch=B] [--train_examples=N]

1. pretrained: `configs/bert_classify.py` finetuned from the MLM run `--pretrained` (trained first
   with `configs/bert_tiny.py` when that workdir holds no run, for `--pretrain_steps` steps if
   given, with 5% of them warm-up);
2. scratch: the same architecture (the pretrained run's), the same tokenizer (the pretrained run's
   tokenizer.json, copied into the workdir before training) and the same finetuning settings
   (steps, lr, batch), trained on the labels alone from a random initialisation;
3. tf-idf: scikit-learn's TfidfVectorizer (word 1-2-grams, sublinear tf) + LogisticRegression
   (C=10) on the same training texts; and tfidf_val, the best on validation of 1-2- or 1-3-grams
   and C in {0.1, 1, 10, 100}. python_syntax's texts are tokens, so its TF-IDF reads every token
   (`\\S+`); sklearn's default (words of 2+ letters) would see the same words in both classes.
With `--seeds=N`, pretrained and scratch are each finetuned N times, with train.seed 0..N-1 (the
seed of the new head's and scratch's initialisation, of the batch order and of dropout); tf-idf is
deterministic. `--ft_lr` / `--ft_steps` / `--ft_batch` change bert_classify's finetuning for
both alike (a batch is of windows of 128 tokens, which pack several short examples each).
`--train_examples=N` (a learning-curve point) gives all three methods the same N of the training
examples (docstring_package: 1,193) instead of all: a subsample stratified by label (each label's
share of N in proportion to its share of the training split, rounded by largest remainder, at least one each, so
every label is still learned), drawn with `--subsample_seed` (0) and not with the finetuning seeds,
so every seed and method sees one subsample. The networks then read it, and the validation split,
as JSONL files written to `--out` (`data.source=files`); validation and test are unchanged. 100
examples pack into 16 windows: give `--ft_batch=16` or less.

All three are scored on the task's validation and test splits (from stdlib files that neither
pretraining nor the training split read; the test split is given to `evaluate` as a JSONL file),
and on both together ("val+test": 175 docstrings, or 896 python_syntax lines): accuracy and
macro-F1 by `jaxlm.eval.labels`, mean and spread over the seeds. Nothing here is chosen by the held-out
scores (no early stopping: every run is scored at its last step), so val+test is a clean test
set unless the finetuning settings were tuned on validation; then read the test rows. The pretrained
model is compared with each baseline by paired tests on the same examples (tools/paired_tests.py):
McNemar's exact test per seed and a sign-flip test over the seeds' mean correctness. Prints the
tables; the last line of stdout is one JSON object.
"""

import argparse
import json
import os
import random
import runpy
import shutil
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tools"))

from paired_tests import mcnemar_exact, sign_flip_test  # noqa: E402

DEFAULT_TASK = "docstring_package"
# Texts that are tokens with one space between (python_syntax) are read token by token: sklearn's
# default reads words of two or more letters only, which both of its classes share.
TOKEN_PATTERNS = {"python_syntax": r"\S+"}
DEFAULT_TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # sklearn's
TFIDF_NGRAMS, TFIDF_CS = ((1, 2), (1, 3)), (0.1, 1.0, 10.0, 100.0)  # tfidf_val's grid
SPLITS = ("val", "test")
BOTH = "val+test"


def run(args: list[str]) -> dict:
  """A jaxlm verb as a subprocess; its last stdout line (JSON)."""
  done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, check=True, text=True,
                        stdout=subprocess.PIPE)
  return json.loads(done.stdout.strip().splitlines()[-1])


def predictions(workdir: str, extra: list[str]) -> list[str]:
  """The predicted label of each example `evaluate` scores (its validation split, or the file
  that `extra` names), read from the predictions file before the next evaluation overwrites it."""
  step = run(["jaxlm.evaluate", f"--workdir={workdir}", *extra])["step"]
  path = os.path.join(workdir, "predictions", f"val_step{step}.jsonl")
  with open(path, encoding="utf-8") as f:
    return [json.loads(line)["prediction"] for line in f]


def scored(workdir: str, test_file: str) -> dict[str, list[str]]:
  """{"val": predictions, "test": predictions} of a trained classifier."""
  test = ["--config.data.source=files", "--config.data.format=classification",
          f"--config.data.path={test_file}", f"--config.data.val_path={test_file}"]
  return {"val": predictions(workdir, []), "test": predictions(workdir, test)}


def finetune_options(ft_lr: float, ft_steps: int, ft_batch: int = 0) -> list[str]:
  """bert_classify's optimisation, with --ft_lr / --ft_steps / --ft_batch when given (0: the
  config's)."""
  ft = runpy.run_path(os.path.join(REPO, "configs", "bert_classify.py"))["get_config"]()
  steps = ft_steps or ft.train.steps
  # Warm-up and evaluation keep bert_classify's proportions when the steps change.
  warmup = ft.train.warmup_steps * steps // ft.train.steps
  every = max(1, ft.eval.every * steps // ft.train.steps)
  return [f"--config.train.steps={steps}", f"--config.train.lr={ft_lr or ft.train.lr}",
          f"--config.train.batch_size={ft_batch or ft.train.batch_size}",
          f"--config.train.warmup_steps={warmup}",
          f"--config.train.weight_decay={ft.train.weight_decay}",
          f"--config.eval.every={every}", f"--config.checkpoint.every={every}"]


def subsample(records: list, n: int, seed: int) -> list:
  """`n` of classification `records`, stratified by label: each label gets its proportional share
  of `n` (floor, at least 1, then the remaining places to the largest shortfalls, ties by label
  name), drawn at random with `seed`; in the records' order. All of them when n >= len(records)."""
  if n >= len(records):
    return list(records)
  by_label: dict[str, list[int]] = {}
  for i, r in enumerate(records):
    by_label.setdefault(str(r.label), []).append(i)
  if n < len(by_label):
    raise SystemExit(f"--train_examples={n}: fewer than the {len(by_label)} labels")
  share = {label: n * len(idx) / len(records) for label, idx in by_label.items()}
  quota = {label: max(1, int(s)) for label, s in share.items()}
  by_remainder = sorted(share, key=lambda label: (quota[label] - share[label], label))
  for label in by_remainder[:max(0, n - sum(quota.values()))]:
    quota[label] += 1
  while sum(quota.values()) > n:  # the minimum of 1 overshot: take from the largest quota
    quota[max(sorted(quota), key=lambda label: quota[label])] -= 1
  rng = random.Random(seed)
  chosen = {i for label in sorted(by_label) for i in rng.sample(by_label[label], quota[label])}
  return [records[i] for i in sorted(chosen)]


def write_jsonl(path: str, records: list) -> str:
  """Classification records as the {"text", "label"} JSONL a user would give train/evaluate."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps({"text": r.text, "label": r.label}) + "\n")
  return path


def data_options(out: str, train: list | None, task: str = DEFAULT_TASK) -> list[str]:
  """The finetunes' data: the built-in `task`, or (`train` given, a subsample) `train` and the
  task's validation split as JSONL files under `out`."""
  ft = runpy.run_path(os.path.join(REPO, "configs", "bert_classify.py"))["get_config"]()
  if train is None:
    return [f"--config.data.source={ft.data.source}", f"--config.data.path={task}",
            f"--config.data.format={ft.data.format}"]
  from jaxlm.data.label_tasks import load_label_task
  val = write_jsonl(os.path.join(out, "val.jsonl"), load_label_task(task, "val"))
  return ["--config.data.source=files", f"--config.data.format={ft.data.format}",
          f"--config.data.path={write_jsonl(os.path.join(out, 'train.jsonl'), train)}",
          f"--config.data.val_path={val}"]


def finetuned(pretrained: str, workdir: str, test_file: str, options: list[str]) -> dict:
  """`options`: the data and optimisation (data_options, finetune_options, the seed)."""
  run(["jaxlm.train", "--config=configs/bert_classify.py", f"--config.init_from={pretrained}",
       f"--workdir={workdir}", *options])
  return scored(workdir, test_file)


def architecture(pretrained: str) -> list[str]:
  """Overrides of bert_tiny's model options that give the pretrained run's architecture (a run
  pretrained with, say, --config.model.positions=rope): its saved model.* options that the
  checkpoint fixes, where they differ from bert_tiny's; the head is the task's."""
  from jaxlm.config import TASK_OPTIONS, fixed_by_checkpoint
  from jaxlm.training.checkpoint import restore_metadata
  tiny = runpy.run_path(os.path.join(REPO, "configs", "bert_tiny.py"))["get_config"]().model
  saved = restore_metadata(pretrained)[1]["model"]
  return [f"--config.model.{key}={value}" for key, value in sorted(saved.items())
          if key in tiny and fixed_by_checkpoint(f"model.{key}")
          and f"model.{key}" not in TASK_OPTIONS and value != tiny[key]]


def scratch(pretrained: str, workdir: str, test_file: str, options: list[str]) -> dict:
  """The pretrained run's architecture with bert_classify's sequence length and the finetunes'
  `options` (data, optimisation, seed), from random weights."""
  ft = runpy.run_path(os.path.join(REPO, "configs", "bert_classify.py"))["get_config"]()
  os.makedirs(workdir, exist_ok=True)
  shutil.copy(os.path.join(pretrained, "tokenizer.json"), os.path.join(workdir, "tokenizer.json"))
  model = [f"--config.data.seq_len={ft.data.seq_len}", "--config.model.head=classify",
           *architecture(pretrained)]
  run(["jaxlm.train", "--config=configs/bert_tiny.py", f"--workdir={workdir}", *model, *options])
  return scored(workdir, test_file)


def _tfidf_fit(train: list, held_out: dict[str, list], token_pattern: str, ngrams: tuple,
               c: float, min_df: int) -> dict[str, list[str]]:
  from sklearn.feature_extraction.text import TfidfVectorizer
  from sklearn.linear_model import LogisticRegression
  vectorizer = TfidfVectorizer(ngram_range=ngrams, sublinear_tf=True, min_df=min_df,
                               token_pattern=token_pattern)
  model = LogisticRegression(max_iter=3000, C=c)
  model.fit(vectorizer.fit_transform([r.text for r in train]), [str(r.label) for r in train])
  return {split: [str(p) for p in model.predict(vectorizer.transform([r.text for r in records]))]
          for split, records in held_out.items()}


def tfidf(train: list, held_out: dict[str, list], token_pattern: str) -> dict[str, list[str]]:
  """TF-IDF (word 1-2-grams, min_df 2) + logistic regression (C=10) trained on `train`; its
  predictions on each split of `held_out`."""
  return _tfidf_fit(train, held_out, token_pattern, (1, 2), 10.0, 2)


def tfidf_val(train: list, held_out: dict[str, list], token_pattern: str) -> tuple[dict, dict]:
  """The TF-IDF + logistic regression of TFIDF_NGRAMS x TFIDF_CS (min_df 1) with the best
  validation accuracy (ties: the larger C, then the shorter n-grams): its predictions and its
  settings. The strongest baseline chosen as the networks' lr is, on validation."""
  best, best_key = None, None
  for ngrams in TFIDF_NGRAMS:
    for c in TFIDF_CS:
      predicted = _tfidf_fit(train, held_out, token_pattern, ngrams, c, 1)
      right = sum(p == str(r.label) for p, r in zip(predicted["val"], held_out["val"]))
      key = (right, c, -ngrams[1])
      if best_key is None or key > best_key:
        best, best_key = (predicted, {"ngrams": list(ngrams), "C": c}), key
  return best


def with_both(runs: list[dict[str, list[str]]]) -> list[dict[str, list[str]]]:
  """Each run's predictions with "val+test": the two held-out splits as one, val first."""
  return [{**r, BOTH: r["val"] + r["test"]} for r in runs]


def summarize(runs: list[dict[str, list[str]]], gold: dict[str, list[str]],
              task: str = DEFAULT_TASK) -> dict:
  """Per split: each seed's accuracy and macro-F1, their mean and sample standard deviation."""
  from jaxlm.data.label_tasks import LABEL_TASKS
  from jaxlm.eval.labels import classification_metrics
  out = {}
  for split, labels in gold.items():
    seeds = [classification_metrics(labels, r[split], list(LABEL_TASKS[task].labels))
             for r in runs]
    out[split] = {"examples": len(labels)}
    for key in ("accuracy", "macro_f1"):
      values = [m[key] for m in seeds]
      out[split][key] = {"mean": statistics.fmean(values), "values": values,
                         "std": statistics.stdev(values) if len(values) > 1 else 0.0}
  return out


def correctness(runs: list[dict[str, list[str]]], gold: list[str], split: str) -> list[list[bool]]:
  return [[p == g for p, g in zip(r[split], gold)] for r in runs]


def compare(best: list[dict], other: list[dict], gold: dict[str, list[str]]) -> dict:
  """Paired tests of `best` against `other` per split: McNemar per seed (a deterministic `other`,
  one run, is paired with every seed of `best`) and the sign-flip test over the seeds' means."""
  out = {}
  for split, labels in gold.items():
    a, b = correctness(best, labels, split), correctness(other, labels, split)
    per_seed = [mcnemar_exact(a[s], b[s % len(b)]) for s in range(len(a))]
    mean_a = [statistics.fmean(col) for col in zip(*a)]  # [examples]
    mean_b = [statistics.fmean(col) for col in zip(*b)]
    out[split] = {"mcnemar": per_seed,
                  "difference": statistics.fmean(mean_a) - statistics.fmean(mean_b),
                  "sign_flip_p": sign_flip_test([x - y for x, y in zip(mean_a, mean_b)])}
  return out


def print_tables(summary: dict, tests: dict, task: str = DEFAULT_TASK) -> None:
  print(f"\n{task:<11} {'split':<9} {'n':>4} {'seeds':>5} {'accuracy (sd)':>16} "
        f"{'macro_f1 (sd)':>16}  per-seed accuracy")
  for name, splits in summary.items():
    for split, m in splits.items():
      acc, f1 = m["accuracy"], m["macro_f1"]
      print(f"{name:<11} {split:<9} {m['examples']:>4} {len(acc['values']):>5} "
            f"{acc['mean']:>9.4f} ({acc['std']:.3f}) {f1['mean']:>9.4f} ({f1['std']:.3f})  "
            + " ".join(f"{v:.3f}" for v in acc["values"]))
  print(f"\n{'pretrained vs':<14} {'split':<9} {'acc diff':>9} {'sign-flip p':>12}  "
        "McNemar per seed (pretrained only / other only, p)")
  for name, splits in tests.items():
    for split, t in splits.items():
      seeds = "  ".join(f"{m['a_only']}/{m['b_only']} {m['p']:.3g}" for m in t["mcnemar"])
      p = f"{t['sign_flip_p']:.4f}" if t["sign_flip_p"] >= 1e-4 else "<0.0001"
      print(f"{name:<14} {split:<9} {t['difference']:>+9.4f} {p:>12}  {seeds}")


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--pretrained", default="runs/bert")
  parser.add_argument("--out", default="runs/bert_benefit")
  parser.add_argument("--pretrain_steps", type=int, default=0,
                      help="Pretraining steps (default: configs/bert_tiny.py's).")
  parser.add_argument("--seeds", type=int, default=1,
                      help="Finetunes of pretrained and of scratch each, train.seed 0..N-1.")
  parser.add_argument("--ft_lr", type=float, default=0.0,
                      help="Finetuning peak lr of both (default: configs/bert_classify.py's).")
  parser.add_argument("--ft_steps", type=int, default=0,
                      help="Finetuning steps of both (default: configs/bert_classify.py's).")
  parser.add_argument("--ft_batch", type=int, default=0,
                      help="Finetuning batch (windows of data.seq_len tokens) of both (default: "
                           "configs/bert_classify.py's).")
  parser.add_argument("--train_examples", type=int, default=0,
                      help="Train all three on a stratified subsample of this many training "
                           "examples (default: all).")
  parser.add_argument("--subsample_seed", type=int, default=0,
                      help="Seed of --train_examples' subsample.")
  parser.add_argument("--task", default=DEFAULT_TASK,
                      choices=["docstring_package", "python_syntax"],
                      help="The built-in classification task (jaxlm/data/label_tasks.py).")
  return parser.parse_args()


def main() -> None:
  from jaxlm.data.label_tasks import load_label_task
  args = parse_args()
  if args.seeds < 1:
    raise SystemExit(f"--seeds={args.seeds}: at least one finetune per model")
  if not os.path.isdir(os.path.join(args.pretrained, "checkpoints")):
    steps = ([f"--config.train.steps={args.pretrain_steps}",
              f"--config.train.warmup_steps={args.pretrain_steps // 20}"]
             if args.pretrain_steps else [])
    run(["jaxlm.train", "--config=configs/bert_tiny.py", f"--workdir={args.pretrained}", *steps])
  held_out = {split: load_label_task(args.task, split) for split in SPLITS}
  test_file = write_jsonl(os.path.join(args.out, "test.jsonl"), held_out["test"])
  train = load_label_task(args.task, "train")
  if args.train_examples:
    train = subsample(train, args.train_examples, args.subsample_seed)
  options = [*data_options(args.out, train if args.train_examples else None, args.task),
             *finetune_options(args.ft_lr, args.ft_steps, args.ft_batch)]
  runs = {"pretrained": [], "scratch": []}
  for seed in range(args.seeds):
    seeded = [*options, f"--config.train.seed={seed}"]
    out = os.path.join(args.out, "{}_s%d" % seed)
    runs["pretrained"].append(finetuned(args.pretrained, out.format("finetuned"), test_file,
                                        seeded))
    runs["scratch"].append(scratch(args.pretrained, out.format("scratch"), test_file, seeded))
  token_pattern = TOKEN_PATTERNS.get(args.task, DEFAULT_TOKEN_PATTERN)
  runs["tfidf"] = [tfidf(train, held_out, token_pattern)]
  selected, settings = tfidf_val(train, held_out, token_pattern)
  runs["tfidf_val"] = [selected]
  runs = {name: with_both(r) for name, r in runs.items()}
  gold = {split: [str(r.label) for r in held_out[split]] for split in SPLITS}
  gold[BOTH] = gold["val"] + gold["test"]
  summary = {name: summarize(r, gold, args.task) for name, r in runs.items()}
  tests = {other: compare(runs["pretrained"], runs[other], gold)
           for other in ("scratch", "tfidf", "tfidf_val")}
  print_tables(summary, tests, args.task)
  print(f"tfidf_val chose {settings}")
  print(json.dumps({"task": args.task, "options": options, "seeds": args.seeds,
                    "train_examples": len(train), "tfidf_val": settings, "summary": summary,
                    "tests": tests, "predictions": runs}))


if __name__ == "__main__":
  main()
