"""Benchmark `python -m jaxlm.serve`: streaming clients at several concurrencies, fixed lengths.

    python tools/serve_bench.py --workdir=runs/default [--concurrency=1,4,16,32] [--slots=16]
        [--prompt_tokens=32] [--output_tokens=64] [--requests=2] [--decode_steps=8]

Starts the server (`--slots`, then `--slots=1` at `--baseline_concurrency`; both with
`--decode_steps`), and for each concurrency C runs C client threads that each send `--requests`
streaming completions one after the other: a fixed prompt of `--prompt_tokens` tokens,
`--output_tokens` tokens out (`ignore_eos`). Reports vLLM's measures: request throughput and output
tokens/s over the wall time of the level; TTFT (request sent to first chunk), TPOT ((latency -
TTFT) / (output tokens - 1)) and ITL (the gaps between chunks: a chunk carries a decode call's
tokens, `--decode_steps` of them), as p50 / p99. Then single-stream tokens/s of
`jaxlm.inference.decode.generate` (what `python -m jaxlm.sample` runs) for the same lengths, in
this process, against each server's at concurrency 1. Clients and server share this machine's
CPUs. Prints a table; the last line is JSON.
"""

import argparse
import concurrent.futures
import datetime
import http.client
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import cpu_model  # noqa: E402

from jaxlm.serving.launch import launch  # noqa: E402


def stream_once(host: str, port: int, model: str, prompt: str, output_tokens: int) -> dict:
  """One streaming request: its TTFT, chunk gaps, latency and output tokens."""
  connection = http.client.HTTPConnection(host, port, timeout=600)
  body = {"model": model, "prompt": prompt, "max_tokens": output_tokens, "temperature": 0,
          "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
  start = time.perf_counter()
  connection.request("POST", "/v1/completions", json.dumps(body),
                     {"content-type": "application/json"})
  response = connection.getresponse()
  assert response.status == 200, response.read()
  times, tokens = [], 0
  for line in response:
    if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
      continue
    chunk = json.loads(line[6:])
    if chunk.get("usage"):
      tokens = chunk["usage"]["completion_tokens"]
    if chunk["choices"]:
      times.append(time.perf_counter())
  end = time.perf_counter()
  connection.close()
  ttft = times[0] - start
  return {"ttft": ttft, "itl": np.diff(times).tolist(), "latency": end - start, "tokens": tokens,
          "tpot": (end - start - ttft) / max(tokens - 1, 1)}


def run_level(host, port, model, prompt, output_tokens, concurrency, requests) -> dict:
  def client(_):
    return [stream_once(host, port, model, prompt, output_tokens) for _ in range(requests)]

  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
    results = [r for rs in pool.map(client, range(concurrency)) for r in rs]
  wall = time.perf_counter() - start
  pct = lambda xs, q: float(np.percentile(xs, q)) * 1000  # noqa: E731  (ms)
  ttft, tpot = [r["ttft"] for r in results], [r["tpot"] for r in results]
  itl = [gap for r in results for gap in r["itl"]]
  return {"concurrency": concurrency, "requests": len(results),
          "req_per_s": len(results) / wall,
          "out_tok_per_s": sum(r["tokens"] for r in results) / wall,
          "ttft_p50_ms": pct(ttft, 50), "ttft_p99_ms": pct(ttft, 99),
          "tpot_p50_ms": pct(tpot, 50), "tpot_p99_ms": pct(tpot, 99),
          "itl_p50_ms": pct(itl, 50), "itl_p99_ms": pct(itl, 99)}


def bench_server(workdir, slots, levels, prompt, output_tokens, requests,
                 decode_steps) -> list[dict]:
  process, host, port, _ = launch(workdir, f"--slots={slots}", "--max_waiting=1024",
                                  f"--decode_steps={decode_steps}")
  try:
    model = os.path.basename(os.path.normpath(workdir))
    stream_once(host, port, model, prompt, output_tokens)  # compiles this prompt's bucket
    return [{"slots": slots, "decode_steps": decode_steps, **run_level(host, port, model, prompt, output_tokens, c, requests)}
            for c in levels]
  finally:
    process.terminate()
    process.wait(60)


def sample_tokens_per_s(workdir: str, prompt: str, output_tokens: int, repeats: int = 3) -> float:
  """Single-stream greedy tokens/s of `generate` (jaxlm.sample's path), compiled first."""
  from jaxlm.inference import trained
  from jaxlm.inference.decode import SamplingConfig, generate
  run = trained.load(workdir)
  ids = [run.tokenizer.eos_id, *run.tokenizer.encode(prompt)]
  sampling = SamplingConfig(output_tokens, 0.0, 0, 1.0)
  generate(run.params, run.model_cfg, [ids], sampling)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    generate(run.params, run.model_cfg, [ids], sampling)
    times.append(time.perf_counter() - start)
  return output_tokens / min(times)


def prompt_of(workdir: str, tokens: int) -> str:
  """A text of about `tokens` tokens (with the leading EOS) in the run's tokenizer."""
  from jaxlm.training import checkpoint
  from jaxlm.data import tokenizer_from_json
  tokenizer = tokenizer_from_json(checkpoint.restore_metadata(workdir)[2])
  text = "def parse(self, path, mode='r'):\n    return open(path, mode).read()\n" * 20
  while len(tokenizer.encode(text)) > tokens - 1:
    text = text[:-1]
  return text


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/default")
  parser.add_argument("--concurrency", default="1,4,16,32")
  parser.add_argument("--slots", type=int, default=16, help="the server's (its default: 16)")
  parser.add_argument("--prompt_tokens", type=int, default=32)
  parser.add_argument("--output_tokens", type=int, default=64)
  parser.add_argument("--requests", type=int, default=2, help="per client, one after another")
  parser.add_argument("--decode_steps", type=int, default=8,
                      help="the servers' --decode_steps (tokens per slot per decode call)")
  parser.add_argument("--baseline_concurrency", default="1,16",
                      help="levels run against a --slots=1 server too ('' = none)")
  args = parser.parse_args()
  levels = [int(c) for c in args.concurrency.split(",")]
  prompt = prompt_of(args.workdir, args.prompt_tokens)
  rows = bench_server(args.workdir, args.slots, levels, prompt, args.output_tokens, args.requests,
                      args.decode_steps)
  if args.baseline_concurrency:
    baseline = [int(c) for c in args.baseline_concurrency.split(",")]
    rows += bench_server(args.workdir, 1, baseline, prompt, args.output_tokens, args.requests,
                         args.decode_steps)
  sample = sample_tokens_per_s(args.workdir, prompt, args.output_tokens)
  header = ["slots", "concurrency", "requests", "req_per_s", "out_tok_per_s", "ttft_p50_ms",
            "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "itl_p50_ms", "itl_p99_ms"]
  print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
  for row in rows:
    print("| " + " | ".join(f"{row[h]:.4g}" if isinstance(row[h], float) else str(row[h])
                            for h in header) + " |")
  for single in (r for r in rows if r["concurrency"] == 1):
    print(f"single stream: {single['slots']}-slot server {single['out_tok_per_s']:.1f} tok/s = "
          f"{single['out_tok_per_s'] / sample:.0%} of generate (jaxlm.sample's path), "
          f"{sample:.1f} tok/s")
  print(json.dumps({"machine": cpu_model(), "date": datetime.date.today().isoformat(),
                    "prompt_tokens": args.prompt_tokens, "output_tokens": args.output_tokens,
                    "rows": rows, "sample_tok_per_s": sample}))


if __name__ == "__main__":
  main()
