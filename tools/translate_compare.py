"""Encoder-decoder vs decoder-only on the built-in translation task, after the same wall time.

    python tools/translate_compare.py [--budget=300] [--out=runs/translate_compare] [--task=...]

Both models are trained from scratch on the task's training pairs (no pretraining), each with a
SentencePiece vocabulary of 4096 trained on them, for the same wall-clock budget of training steps:
  encdec  configs/t5_tiny.py's model (T5 v1.1 line: 3 + 3 layers of 128, relative positions,
          gated GELU, RMSNorm, untied head), source 64 + target 64 tokens a row;
  gpt     the same width and parts (RMSNorm, SwiGLU, RoPE, untied head, no biases), 7 layers so
          that the parameter counts match, prompt = source + "\\nGerman: ", completion = target,
          128 tokens a row.
Each is first run for `--calibrate` steps to time its step (after compilation); the real run then
takes budget / step time steps, with the same optimiser settings (5% warm-up, cosine decay). Both
are scored by `python -m jaxlm.evaluate --task` on the test split (catalogs never trained on),
greedy and with a beam of 4: BLEU, chrF, ROUGE-L, exact match. Prints a table and, last, one JSON
line. The CPU model (lscpu) is printed with the numbers.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys

NEW_TOKENS = 64  # the longest target of training rows (data.target_len)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--config.data.source=task", "--config.data.tokenizer=sentencepiece",
          "--config.data.vocab_size=4096", "--config.train.batch_size=32",
          "--config.train.lr=2e-3", "--config.train.b2=0.99", "--config.train.weight_decay=0.01",
          "--config.train.min_lr_ratio=0.1", "--config.train.log_every=10",
          "--config.eval.every=0", "--config.eval.sample_tokens=0", "--config.eval.batch_size=32",
          "--config.mesh.cpu_devices=2", "--config.mesh.data=1", "--config.mesh.fsdp=-1"]
MODELS = {
    "encdec": ["--config=configs/t5_tiny.py", "--config.data.format=seq2seq",
               "--config.data.seq_len=64", "--config.data.target_len=64"],
    "gpt": ["--config=configs/default.py", "--config.data.format=prompt_completion",
            "--config.data.truncate=left", "--config.data.seq_len=128",
            # RoPE: max_len only sizes the KV cache, room for a prompt and 64 new tokens.
            "--config.model.max_len=192", "--config.model.d_model=128",
            "--config.model.num_layers=7", "--config.model.num_heads=4",
            "--config.model.mlp_dim=384", "--config.model.mlp=swiglu",
            "--config.model.norm=rmsnorm", "--config.model.positions=rope",
            "--config.model.use_bias=False", "--config.model.tie_embeddings=False"],
}


def verb(args: list[str]) -> dict:
  """A jaxlm verb as a subprocess; its last stdout line (JSON)."""
  done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, check=True, text=True,
                        stdout=subprocess.PIPE)
  return json.loads(done.stdout.strip().splitlines()[-1])


def train_args(name: str, task: str, workdir: str, steps: int) -> list[str]:
  return ["jaxlm.train", *MODELS[name], *COMMON, f"--config.data.path={task}",
          f"--config.train.steps={steps}", f"--config.train.warmup_steps={max(1, steps // 20)}",
          f"--config.checkpoint.every={steps}", f"--workdir={workdir}"]


def step_seconds(workdir: str) -> float:
  """Median step time of a run's logged training steps (the compiling first step left out)."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  times = [r["step_time"] for r in records if r["split"] == "train" and r["step"] > 1]
  return statistics.median(times)


def train_metrics(workdir: str) -> dict:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  train = [r for r in records if r["split"] == "train" and r["step"] > 1]
  return {"step_time_ms": 1e3 * statistics.median(r["step_time"] for r in train),
          "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in train),
          "mfu": statistics.median(r["mfu"] for r in train)}


def compare(name: str, task: str, out: str, budget: float, calibrate: int,
            steps: int = 0) -> dict:
  """Trains (for `steps`, or as many as the calibrated step time fits in `budget`) and scores."""
  if not steps:
    probe = os.path.join(out, f"{name}_calibrate")
    shutil.rmtree(probe, ignore_errors=True)
    verb(train_args(name, task, probe, calibrate))
    steps = max(10, int(budget / step_seconds(probe)))
  workdir = os.path.join(out, name)
  shutil.rmtree(workdir, ignore_errors=True)
  trained = verb(train_args(name, task, workdir, steps))
  scores = {beam: verb(["jaxlm.evaluate", f"--workdir={workdir}", f"--task={task}",
                        f"--beam_size={beam}", f"--max_new_tokens={NEW_TOKENS}"])
            for beam in (1, 4)}
  return {"steps": steps, "train_wall_seconds": trained.get("wall_seconds"),
          "val_loss": trained.get("loss"), **train_metrics(workdir),
          "greedy": scores[1], "beam4": scores[4]}


def cpu_model() -> str:
  out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
  return next((line.split(":", 1)[1].strip() for line in out.splitlines()
               if line.startswith("Model name")), "unknown")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--budget", type=float, default=300.0, help="training seconds per model")
  parser.add_argument("--calibrate", type=int, default=20, help="steps of the timing run")
  parser.add_argument("--task", default="gettext_en_de")
  parser.add_argument("--out", default=os.path.join(REPO, "runs", "translate_compare"))
  parser.add_argument("--steps", default="", help="NAME=STEPS,...: step counts to use instead of "
                      "calibrating (e.g. when the calibration ran on a loaded machine)")
  parser.add_argument("--models", default=",".join(MODELS))
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  fixed = dict(item.split("=") for item in args.steps.split(",") if item)
  results = {name: compare(name, args.task, args.out, args.budget, args.calibrate,
                           int(fixed.get(name, 0))) for name in args.models.split(",")}
  print(f"\n{args.task}, {args.budget:.0f} s of training each; CPU: {cpu_model()}, "
        f"{os.cpu_count()} cores")
  print("| model | steps | step | MFU | val loss | decoding | BLEU | chrF | ROUGE-L | exact |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for name, r in results.items():
    for decoding in ("greedy", "beam4"):
      s = r[decoding]
      print(f"| {name} | {r['steps']} | {r['step_time_ms']:.0f} ms | {r['mfu']:.3f} | "
            f"{r['val_loss']:.3f} | {decoding} | {s['bleu']:.2f} | {s['chrf']:.2f} | "
            f"{s['rougeL']:.3f} | {s['exact_match']:.3f} |")
  print(json.dumps({"cpu": cpu_model(), "budget": args.budget, **results}))


if __name__ == "__main__":
  main()
