"""Data at scale, measured: today's in-memory path against `prepare` + training from shards.

    python tools/data_bench.py --sizes_mb=10,100 [--root=/tmp/data_bench] [--steps=20]

For each size it writes a corpus of that many MB (the built-in corpus, copy after copy, each
document of copy k starting with its own header line so that no two copies are equal), then runs,
each as a fresh `python -m jaxlm.<verb>` with configs/default.py:
  memory    train on data.source=files: start-up until the data is ready (the log's `data:` line,
            before any compilation), peak RSS;
  prepare   wall time, MB/s, peak RSS (its own and its largest worker's), shard bytes per token;
            then again with that run's tokenizer given (data.tokenizer_file): the tokenising
            and writing alone, without training SentencePiece on the sample;
  shards    train on data.source=prepared: start-up until the data is ready, peak RSS, host wait
            (metrics.jsonl's median share of a log window spent waiting for a batch).
Also the tokenizer's own throughput on one core and on all, and a small format comparison: writing and
reading random windows of flat memmapped arrays against ArrayRecord (one record per chunk of 4,096
tokens), the choice in docs/benchmarks.md. Prints one JSON line per measurement.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from jaxlm.data.stdlib_source import load_stdlib  # noqa: E402


def write_corpus(directory: str, megabytes: float) -> int:
  """Perturbed copies of the built-in corpus, one .jsonl per copy, up to `megabytes`; bytes."""
  train, val = load_stdlib(0.1)
  docs = train + val
  os.makedirs(directory, exist_ok=True)
  written, copy, limit = 0, 0, int(megabytes * 1e6)
  while written < limit:
    with open(os.path.join(directory, f"copy{copy:04d}.jsonl"), "w", encoding="utf-8") as f:
      for index, doc in enumerate(docs):
        text = f"# copy {copy} of document {index}\n{doc}"
        line = json.dumps({"text": text}) + "\n"
        f.write(line)
        written += len(line.encode())
        if written >= limit:
          break
    copy += 1
  return written


def run(args: list[str], ready_marker: str | None = None) -> dict:
  """Runs a jaxlm verb; wall seconds, seconds until `ready_marker` appears on stderr, peak RSS
  (MB) of the process and of its largest descendant, and the CPU seconds of the process and its
  workers (user + system: less sensitive than wall time to other jobs on the machine)."""
  start = time.perf_counter()
  # A wrapper process runs the verb, so that its RUSAGE_CHILDREN is the verb's and its workers'
  # alone (this process's would include every earlier run).
  proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, sys.executable, "-m", *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
  ready, lines, verb_kb, largest_kb, cpu = None, [], 0, 0, float("nan")
  for line in proc.stderr:
    lines.append(line)
    if ready is None and ready_marker and ready_marker in line:
      ready = time.perf_counter() - start
    if line.startswith("RSS_KB="):
      verb_kb, largest_kb = map(int, line[len("RSS_KB="):].split(","))
    if line.startswith("CPU_S="):
      cpu = float(line[len("CPU_S="):])
  out = proc.stdout.read()
  status = proc.wait()
  wall = time.perf_counter() - start
  if status:
    raise RuntimeError(f"{args} failed:\n{''.join(lines)[-3000:]}")
  return {"wall_s": wall, "ready_s": ready, "peak_rss_mb": verb_kb / 1024,
          "largest_child_rss_mb": largest_kb / 1024, "cpu_s": cpu, "stdout": out}


_WRAPPER = """
import os, resource, subprocess, sys
proc = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(proc.pid, 0)
largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"RSS_KB={usage.ru_maxrss},{largest}", file=sys.stderr)
print(f"CPU_S={usage.ru_utime + usage.ru_stime}", file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def host_wait(workdir: str) -> float:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    waits = [r["host_wait"] for r in map(json.loads, f) if r["split"] == "train"][1:]
  return float(np.median(waits)) if waits else float("nan")


def train_args(workdir: str, steps: int, data: list[str]) -> list[str]:
  return ["jaxlm.train", "--config=configs/default.py", f"--workdir={workdir}",
          f"--config.train.steps={steps}", "--config.train.log_every=2",
          "--config.eval.every=0", "--config.eval.max_batches=1", "--config.eval.sample_tokens=0",
          f"--config.checkpoint.every={steps}", *data]


def measure_size(root: str, megabytes: float, steps: int, workers: int,
                 memory_up_to_mb: float) -> None:
  base = os.path.join(root, f"{megabytes:g}mb")
  shutil.rmtree(base, ignore_errors=True)
  corpus = os.path.join(base, "corpus")
  num_bytes = write_corpus(corpus, megabytes)
  files = ["--config.data.source=files", f"--config.data.path={corpus}"]
  if megabytes <= memory_up_to_mb:
    memory = run(train_args(os.path.join(base, "memory"), steps, files), "data: ")
    report(megabytes, "memory", start_to_data_s=memory["ready_s"],
           peak_rss_mb=memory["peak_rss_mb"])
  out = os.path.join(base, "prepared")
  prepared = run(["jaxlm.prepare", "--config=configs/default.py", *files, f"--out={out}",
                  f"--workers={workers}"])
  summary = json.loads(prepared["stdout"].strip().splitlines()[-1])
  shard_bytes = sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(out)
                    for n in names if n.endswith((".tokens", ".docs")))
  tokens = summary["train_tokens"] + summary["val_tokens"]
  report(megabytes, "prepare", wall_s=prepared["wall_s"], mb_per_s=num_bytes / 1e6 /
         prepared["wall_s"], cpu_s=prepared["cpu_s"], peak_rss_mb=prepared["peak_rss_mb"],
         largest_worker_rss_mb=prepared["largest_child_rss_mb"], workers=workers,
         shard_bytes_per_token=shard_bytes / tokens, tokens=tokens)
  # Again with that tokenizer given: tokenising and writing alone, without training SentencePiece.
  given = run(["jaxlm.prepare", "--config=configs/default.py", *files,
               f"--out={out}_given", f"--workers={workers}",
               f"--config.data.tokenizer_file={os.path.join(out, 'tokenizer.json')}"])
  report(megabytes, "prepare_given_tokenizer", wall_s=given["wall_s"],
         mb_per_s=num_bytes / 1e6 / given["wall_s"], cpu_s=given["cpu_s"],
         mb_per_cpu_s=num_bytes / 1e6 / given["cpu_s"], peak_rss_mb=given["peak_rss_mb"],
         workers=workers)
  workdir = os.path.join(base, "shards")
  shards = run(train_args(workdir, steps, ["--config.data.source=prepared",
                                           f"--config.data.path={out}"]), "data: ")
  report(megabytes, "shards", start_to_data_s=shards["ready_s"],
         peak_rss_mb=shards["peak_rss_mb"], host_wait=host_wait(workdir))


def report(megabytes: float, what: str, **numbers) -> None:
  print(json.dumps({"size_mb": megabytes, "what": what, **{
      k: round(v, 4) if isinstance(v, float) else v for k, v in numbers.items()}}), flush=True)


def tokenizer_throughput(root: str) -> None:
  """MB/s of the default config's tokenizer (prepared at the smallest size) on one core, and on
  all of this process's cores. `encode_batch` spreads one call over every core it may use
  (SentencePiece's num_threads), so one core means pinning the process to one."""
  from jaxlm.data.tokenizer import load_tokenizer  # noqa: PLC0415
  sizes = sorted(d for d in os.listdir(root) if d.endswith("mb"))
  tokenizer = load_tokenizer(os.path.join(root, sizes[0], "prepared", "tokenizer.json"))
  train, _ = load_stdlib(0.1)
  docs = train[:200]
  megabytes = sum(len(d.encode()) for d in docs) / 1e6
  cores = os.sched_getaffinity(0)
  rates, cpu = {}, {}
  for name, allowed in (("one_core", {min(cores)}), ("all_cores", cores)):
    os.sched_setaffinity(0, allowed)
    start, start_cpu = time.perf_counter(), time.process_time()
    tokenizer.encode_batch(docs)
    rates[name] = megabytes / (time.perf_counter() - start)
    cpu[name] = megabytes / (time.process_time() - start_cpu)
  os.sched_setaffinity(0, cores)
  report(0, "tokenizer", mb_per_s_one_core=rates["one_core"],
         mb_per_s_all_cores=rates["all_cores"], mb_per_cpu_s_one_core=cpu["one_core"],
         mb_per_cpu_s_all_cores=cpu["all_cores"], cores=len(cores))


def format_comparison(root: str, num_tokens: int = 50_000_000, reads: int = 20_000,
                      seq_len: int = 128) -> None:
  """Flat memmapped uint16 array vs ArrayRecord chunks: write time, size, random window reads."""
  from array_record.python import array_record_module  # noqa: PLC0415
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 2048, num_tokens, dtype=np.uint16)
  starts = rng.integers(0, num_tokens - seq_len - 1, reads)
  flat = os.path.join(root, "flat.tokens")
  began = time.perf_counter()
  tokens.tofile(flat)
  write_flat = time.perf_counter() - began
  mapped = np.memmap(flat, dtype=np.uint16, mode="r")
  began = time.perf_counter()
  for s in starts:
    np.asarray(mapped[s : s + seq_len + 1], dtype=np.int32)
  read_flat = time.perf_counter() - began
  chunk = 4096
  path = os.path.join(root, "chunks.arrayrecord")
  began = time.perf_counter()
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  for i in range(0, num_tokens, chunk):
    writer.write(tokens[i : i + chunk].tobytes())
  writer.close()
  write_ar = time.perf_counter() - began
  reader = array_record_module.ArrayRecordReader(path)
  began = time.perf_counter()
  for s in starts:
    first, last = s // chunk, (s + seq_len) // chunk
    data = b"".join(reader.read(list(range(first, last + 1))))
    window = np.frombuffer(data, np.uint16)[s - first * chunk : s - first * chunk + seq_len + 1]
    window.astype(np.int32)
  read_ar = time.perf_counter() - began
  for name, write_s, read_s, size in (("flat_memmap", write_flat, read_flat, os.path.getsize(flat)),
                                      ("array_record", write_ar, read_ar, os.path.getsize(path))):
    report(0, f"format_{name}", write_mb_per_s=num_tokens * 2 / 1e6 / write_s,
           bytes_per_token=size / num_tokens, random_window_us=read_s / reads * 1e6)
  os.remove(flat)
  os.remove(path)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes_mb", default="10,100")
  parser.add_argument("--root", default="/tmp/jaxlm_data_bench")
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  parser.add_argument("--skip_formats", action="store_true")
  parser.add_argument("--memory_up_to_mb", type=float, default=float("inf"),
                      help="measure today's in-memory path only up to this size (1 GB of it "
                      "needs about 18 GB of memory)")
  args = parser.parse_args()
  os.makedirs(args.root, exist_ok=True)
  if not args.skip_formats:
    format_comparison(args.root)
  for size in args.sizes_mb.split(","):
    measure_size(args.root, float(size), args.steps, args.workers, args.memory_up_to_mb)
  tokenizer_throughput(args.root)


if __name__ == "__main__":
  main()
