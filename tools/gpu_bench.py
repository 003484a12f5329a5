"""The GPU benchmark behind tools/gpu_bench.sh: GPT-2 124M throughput/MFU and nanoGPT's char recipe.

    python tools/gpu_bench.py [--tiny] [--out=DIR] [--data=tinyshakespeare.txt] [--budget_s=540]

Prepared for one device call on an H200; it has not run on a GPU yet. Steps, each in its own
subprocess under its own time cap, so an OOM, a compile failure, an unsupported cuDNN kernel or a
slow case is recorded (status "failed" / "oom" / "timeout" and a reason) and the rest still run:

1. environment: jax/jaxlib and plugin versions, device kind and count, XLA_FLAGS, package versions;
   then cudnn_check: cuDNN vs XLA attention on packed documents (one train step, same parameters).
2. throughput, 12 rows: GPT-2 124M (12 layers x 768, vocab 50304, T=1024; bf16 compute, float32
   master weights, optimizer state and loss) on synthetic tokens, batch 32/16/8 x model.remat
   none/dots x attention cudnn/xla (model.attention_impl; "cudnn" = cuDNN flash attention on).
   Per row: the median train-step time over the timed steps after compile and two warm-up steps,
   tokens/s, and MFU by PaLM's formula with attention (6N + 12·layers·T·d_model FLOPs per token,
   jaxlm/training/metrics.py) against the device's datasheet peak (989 TFLOP/s bf16 dense on an
   H100/H200), and the peak device memory.
3. char: nanoGPT's GPU char recipe (configs/shakespeare_char.py at 6 layers x 384, 6 heads, T=256,
   batch 64, dropout 0.2, lr 1e-3, 5000 steps, bf16 as nanoGPT's autocast) run by
   `python -m jaxlm.train`: wall time from launch to the first validation record with loss <= 1.47
   (the run is stopped there).

OUT/gpu_bench.json is rewritten (atomically) before the first step and after every step, with every
row present from the start (status "pending" until it runs), so a run cut short still leaves all it
did; "complete" turns true at the end. The char run's metrics.jsonl is copied to
OUT/char_metrics.jsonl; nothing else is left under OUT. The whole script keeps to --budget_s: a step
gets at most what is left (the char run's cap kept back for it) and is "skipped" when too little is
left.
`--tiny` shrinks everything so the whole script runs on a CPU in about a minute (there the cudnn
rows fail, as cuDNN needs a GPU: the failure path, exercised). Budget of the full run: 540 s = the
char run's 150 s cap + 390 s for the environment, the cuDNN check (60 s cap) and the 12 rows (each
capped at 90 s, so a slow compile still yields the first rows, the largest batches).
"""

import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench_char import time_to_loss  # noqa: E402
RESULT_MARK = "GPU_BENCH_RESULT "  # a child's last stdout line: this mark, then its JSON
GPT2_SHAPE = dict(vocab_size=50304, d_model=768, num_layers=12, num_heads=12, mlp_dim=3072,
                  max_len=1024)
TINY_SHAPE = dict(vocab_size=256, d_model=64, num_layers=1, num_heads=2, mlp_dim=256, max_len=64)
# Largest batch first: the likeliest best MFU (and OOM) is measured before the budget can run out.
BATCHES, TINY_BATCHES = (32, 16, 8), (4, 2)
PACKAGES = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda13-pjrt", "flax", "optax",
            "orbax-checkpoint", "numpy", "grain", "ml-collections", "tensorboardX",
            "nvidia-cudnn-cu13")
# --tiny's char-run target: on a text that repeats one line, a model that learns nothing stays at
# ln(vocab) and one that learns only character frequencies at their entropy (~3.0 nats for
# tests/test_gpu_bench.py's line); 2.0 needs the context. Measured (bf16, 2026-12-01): 2.51 at
# step 20, 1.89 at 40, 1.52 at 60.
TINY_TARGET = 2.0
SKIPPED = {"status": "skipped", "reason": "the total budget (--budget_s) is used up"}


def rows(tiny: bool) -> list[dict]:
  """The throughput configurations, in run order: each batch with cuDNN on and off, remat none and
  dots."""
  return [{"name": f"b{batch}_{remat}_{attention}", "batch": batch, "remat": remat,
           "attention": attention}
          for batch in (TINY_BATCHES if tiny else BATCHES)
          for attention in ("cudnn", "xla") for remat in ("none", "dots")]


def error_record(error: BaseException) -> dict:
  message = " ".join(f"{type(error).__name__}: {error}".split())[:600]
  oom = "RESOURCE_EXHAUSTED" in message or "out of memory" in message.lower()
  return {"status": "oom" if oom else "failed", "reason": message}


def environment() -> dict:
  """The facts of this machine that a number depends on (run in a child, like every step)."""
  import importlib.metadata
  import platform

  import jax
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  device = jax.devices()[0]
  return {"jax": jax.__version__, "backend": jax.default_backend(), "device_kind":
          device.device_kind, "device_count": jax.device_count(),
          "platform_version": getattr(getattr(device, "client", None), "platform_version", None),
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "python": platform.python_version(),
          "packages": versions, "jax_environment": jax.print_environment_info(return_string=True)}


def measure(spec: dict, tiny: bool, steps: int) -> dict:
  """One throughput row in this process: compile, two warm-up steps, `steps` timed steps."""
  import jax
  from bench import synthetic_batch

  from jaxlm.config import base_config
  from jaxlm.models import ModelConfig
  from jaxlm.models.layers import attention_implementation
  from jaxlm.parallel import sharding
  from jaxlm.training.engine import build_engine
  from jaxlm.training.metrics import flops_per_token, peak_flops
  from jaxlm.training.optim import OptimConfig

  shape = TINY_SHAPE if tiny else GPT2_SHAPE
  seq_len, batch = shape["max_len"], spec["batch"]
  cfg = ModelConfig(**shape, dtype="bfloat16", remat=spec["remat"],
                    attention_impl=spec["attention"])
  engine = build_engine(cfg, OptimConfig(steps=1000, warmup_steps=10),
                        sharding.make_mesh(-1, 1, 1), base_config().mesh.rules, 0, seq_len)
  start = time.perf_counter()
  state = engine.init()
  data = engine.train_feed(batch, 1).assemble(synthetic_batch(batch, seq_len, cfg.vocab_size))
  state, metrics = engine.train_step(state, data)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  for _ in range(2):
    state, metrics = engine.train_step(state, data)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = engine.train_step(state, data)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  step_s = statistics.median(times)
  tokens_per_sec = batch * seq_len / step_s
  flops = flops_per_token(cfg, seq_len, state.params)
  peak, peak_source = peak_flops(jax.devices()[0], "bfloat16")
  memory = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
  return {"status": "ok", "seq_len": seq_len,
          "attention_used": attention_implementation(cfg, False),
          "param_dtypes": sorted({str(x.dtype) for x in jax.tree.leaves(state.params)}),
          "step_ms": step_s * 1e3, "step_ms_min": min(times) * 1e3, "timed_steps": steps,
          "tokens_per_sec": tokens_per_sec, "compile_and_first_step_s": compile_s,
          "flops_per_token": flops, "mfu": tokens_per_sec * flops / (peak * jax.device_count()),
          "peak_tflops": peak / 1e12, "peak_source": peak_source, "peak_memory_bytes": memory,
          "loss": float(metrics["loss"])}


def document_batch(rows: int, seq_len: int, vocab: int) -> dict:
  """Synthetic tokens packed as documents of random lengths (segment ids 1, 2, ...; positions
  restart at each), so attention must keep to each document."""
  import numpy as np
  from bench import synthetic_batch
  batch = synthetic_batch(rows, seq_len, vocab)
  rng = np.random.default_rng(1)
  for row in range(rows):
    starts = np.sort(rng.choice(np.arange(1, seq_len), size=7, replace=False))
    segment = np.searchsorted(starts, np.arange(seq_len), side="right")  # [seq] 0..7
    batch["segment_ids"][row] = segment + 1
    start_of = np.concatenate([[0], starts])[segment]  # [seq] each token's document start
    batch["positions"][row] = np.arange(seq_len) - start_of
  return batch


def cudnn_check(tiny: bool) -> dict:
  """cuDNN vs XLA attention on packed documents: one train step of a 2-layer GPT-2-width model
  from the same initial parameters (same seed). Their losses must agree within 1% (bf16), and
  their gradient norms closer than a third of what dropping the document mask (one document per
  row, XLA) changes, so a cuDNN call that lost the mask fails."""
  import numpy as np

  from jaxlm.config import base_config
  from jaxlm.models import ModelConfig
  from jaxlm.parallel import sharding
  from jaxlm.training.engine import build_engine
  from jaxlm.training.optim import OptimConfig

  shape = TINY_SHAPE if tiny else {**GPT2_SHAPE, "num_layers": 2}
  seq_len, rows_ = shape["max_len"], 8
  docs = document_batch(rows_, seq_len, shape["vocab_size"])
  one_doc = {**docs, "segment_ids": np.ones_like(docs["segment_ids"]),
             "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (rows_, seq_len))}
  results = {}
  for name, attention, batch in (("cudnn", "cudnn", docs), ("xla", "xla", docs),
                                 ("xla_one_document", "xla", one_doc)):
    cfg = ModelConfig(**shape, dtype="bfloat16", remat="none", attention_impl=attention)
    engine = build_engine(cfg, OptimConfig(steps=1000, warmup_steps=10),
                          sharding.make_mesh(-1, 1, 1), base_config().mesh.rules, 0, seq_len)
    _, metrics = engine.train_step(engine.init(), engine.train_feed(rows_, 1).assemble(batch))
    results[name] = {k: float(metrics[k]) for k in ("loss", "grad_norm")}
  def relative(a: str, b: str) -> dict:
    return {k: abs(results[a][k] - results[b][k]) / abs(results[b][k]) for k in results[b]}

  gap, mask_effect = relative("cudnn", "xla"), relative("xla_one_document", "xla")
  # At initialisation attention is near-uniform, so the document mask moves the loss little
  # (measured on the CPU, tiny model: 3e-4 relative) but the gradient norm more (1.6%): a cuDNN
  # that ignored the mask would sit about that far from XLA.
  agree = gap["loss"] < 1e-2 and gap["grad_norm"] < mask_effect["grad_norm"] / 3
  return {"status": "ok" if agree else "failed", **results, "relative_gap": gap,
          "relative_change_without_document_mask": mask_effect,
          **({} if agree else {"reason": "cuDNN and XLA attention disagree on packed documents "
                                         "(gradient-norm gap not under a third of the mask's "
                                         "effect, or loss gap over 1%)"})}


def child_main(args) -> None:
  """`--step=env` or `--step=ROW`: does that one step and prints its record after RESULT_MARK."""
  try:
    if args.step == "env":
      record = {"status": "ok", **environment()}
    elif args.step == "cudnn_check":
      record = cudnn_check(args.tiny)
    else:
      spec = next(r for r in rows(args.tiny) if r["name"] == args.step)
      record = measure(spec, args.tiny, args.steps or (3 if args.tiny else 20))
  except Exception as e:  # recorded, not raised: the parent writes it into the results
    record = error_record(e)
  print(RESULT_MARK + json.dumps(record), flush=True)


class Runner:
  """Runs steps as children under caps within a total budget; rewrites the results after each."""

  def __init__(self, args, result: dict):
    self.args, self.result = args, result
    self.path = os.path.join(args.out, "gpu_bench.json")
    self.deadline = time.monotonic() + args.budget_s if args.budget_s > 0 else float("inf")
    self.child = None
    self.write()

  def write(self) -> None:
    tmp = self.path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(self.result, f, indent=1)
    os.replace(tmp, self.path)  # a reader never sees half a file

  def cap(self, name: str, default: float, reserve: float = 0.0) -> float | None:
    """The step's time cap: its own (--cap NAME=S wins), but no more than the budget leaves after
    `reserve`; None when under a second is left."""
    caps = dict(item.split("=") for item in self.args.cap)
    left = self.deadline - time.monotonic() - reserve
    return min(float(caps.get(name, default)), left) if left >= 1.0 else None

  def child_step(self, name: str, cap: float | None) -> dict:
    if cap is None:
      return SKIPPED
    command = [sys.executable, os.path.abspath(__file__), f"--step={name}",
               f"--steps={self.args.steps}"] + (["--tiny"] if self.args.tiny else [])
    start = time.perf_counter()
    # Its own process group, so a timeout ends the child and anything it started.
    self.child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
      stdout, stderr = self.child.communicate(timeout=cap)
      returncode = self.child.returncode
    except subprocess.TimeoutExpired:
      self.kill_child()
      return {"status": "timeout", "reason": f"over its cap of {cap:.1f} s",
              "wall_s": time.perf_counter() - start}
    finally:
      self.child = None
    marked = [line for line in stdout.splitlines() if line.startswith(RESULT_MARK)]
    record = (json.loads(marked[-1][len(RESULT_MARK):]) if marked else  # else it crashed
              {"status": "failed", "reason": f"exit status {returncode}: "
               + " ".join(stderr.split()[-80:])[-600:]})
    return {**record, "wall_s": time.perf_counter() - start}

  def kill_child(self) -> None:
    if self.child is not None and self.child.poll() is None:
      os.killpg(self.child.pid, signal.SIGKILL)
      self.child.wait()

  def run(self, char_data: str | None) -> None:
    char_reserve = self.args.char_cap_s if char_data else 0.0
    self.result["environment"] = self.child_step("env", self.cap("env", 60, char_reserve))
    self.write()
    self.result["cudnn_check"] = self.child_step("cudnn_check",
                                                 self.cap("cudnn_check", 60, char_reserve))
    self.write()
    for row in self.result["throughput"]:
      row.update(self.child_step(row["name"], self.cap(row["name"], self.args.row_cap_s,
                                                       char_reserve)))
      print(json.dumps(row), flush=True)
      self.write()
    if char_data:
      self.result["char"] = self.char_step(char_data)
    self.result["complete"] = True
    self.write()

  def char_step(self, data: str) -> dict:
    cap = self.cap("char", self.args.char_cap_s)
    if cap is None:
      return SKIPPED
    # The run's directory (checkpoints, TensorBoard) stays out of OUT: the device tool brings back
    # only 8 files, 2 folders down; its metrics.jsonl is copied there.
    workdir = tempfile.mkdtemp(prefix="gpu_bench_char_")
    try:
      target = TINY_TARGET if self.args.tiny else 1.47
      return time_to_loss(self.args.tiny, data, workdir, target, cap, self)
    except Exception as e:
      return error_record(e)
    finally:
      metrics = os.path.join(workdir, "metrics.jsonl")
      if os.path.exists(metrics):
        shutil.copy(metrics, os.path.join(self.args.out, "char_metrics.jsonl"))
      shutil.rmtree(workdir, ignore_errors=True)


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true", help="tiny sizes: a CPU smoke run")
  parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_bench_out",
                      help="directory for results and runs (default: $OUT, else gpu_bench_out)")
  parser.add_argument("--data", default="", help="tinyshakespeare.txt (default: look in "
                      ".gpu_data/, shared/data/ and ../shared/data/)")
  parser.add_argument("--steps", type=int, default=0, help="timed steps per row (0: 20; tiny 3)")
  parser.add_argument("--row_cap_s", type=float, default=90.0, help="time cap of each row")
  parser.add_argument("--char_cap_s", type=float, default=150.0, help="time cap of the char run")
  parser.add_argument("--budget_s", type=float, default=540.0,
                      help="the whole script's time (0: no limit); steps get what is left")
  parser.add_argument("--cap", action="append", default=[], metavar="STEP=SECONDS",
                      help="a cap for one step (env, a row name such as b8_none_cudnn, or char)")
  parser.add_argument("--step", default="", help=argparse.SUPPRESS)  # a child's one step
  return parser.parse_args()


def find_data(path: str) -> str | None:
  if path and not os.path.exists(path):
    sys.exit(f"error: --data={path} does not exist")
  candidates = [path, os.path.join(REPO, ".gpu_data", "tinyshakespeare.txt"),
                os.path.join(REPO, "shared", "data", "tinyshakespeare.txt"),
                os.path.join(REPO, "..", "shared", "data", "tinyshakespeare.txt")]
  return next((os.path.abspath(p) for p in candidates if p and os.path.exists(p)), None)


def main() -> None:
  args = parse_args()
  if args.step:
    return child_main(args)
  os.makedirs(args.out, exist_ok=True)
  data = find_data(args.data)
  result = {"started_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "complete": False, "tiny": args.tiny, "argv": sys.argv[1:], "environment": None,
            "cudnn_check": {"status": "pending"},
            "throughput": [{**row, "status": "pending"} for row in rows(args.tiny)],
            "char": {"status": "pending"} if data else
                    {"status": "skipped", "reason": "tinyshakespeare.txt not found; pass --data"}}
  runner = Runner(args, result)

  def stop(signum, frame):  # the shell's hard timeout: keep what is done, end the running child
    runner.kill_child()
    result["stopped"] = f"signal {signum}"
    runner.write()
    sys.exit(128 + signum)

  signal.signal(signal.SIGTERM, stop)
  runner.run(data)
  print(json.dumps({k: result[k] for k in ("complete", "throughput", "char")}))


if __name__ == "__main__":
  main()
