"""Beam search's cost per generated token against greedy decoding, on a small random GPT.

    python tools/beam_bench.py [--beams=1,4] [--batch=1] [--prompt_tokens=32] [--new_tokens=64]
        [--repeats=5] [--d_model=256] [--num_layers=4]

For one prompt batch it times, after a compiling call, greedy `decode.generate` (temperature 0, one
scan) and `decode.beam_generate` at each beam size (while_loop, per-step top-k and KV-cache
reorder), with no EOS so every call runs all `--new_tokens` steps. Reports the median wall time
of `--repeats` calls divided by the new tokens of one prompt (prefill included), and its ratio to
greedy. One CPU device (XLA_FLAGS unset). Prints a table and the CPU model; the last line is JSON.
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import cpu_model  # noqa: E402

from jaxlm.inference.beam import BeamConfig  # noqa: E402
from jaxlm.inference.decode import SamplingConfig, beam_generate, generate  # noqa: E402
from jaxlm.models import GPT, ModelConfig  # noqa: E402


def median_seconds(calls: list, repeats: int) -> list[float]:
  """Median wall time of each call; the calls take turns, so that load from others on a shared
  machine falls on all of them alike."""
  for call in calls:
    call()  # compiles
  times = [[] for _ in calls]
  for _ in range(repeats):
    for call, spent in zip(calls, times):
      start = time.perf_counter()
      call()
      spent.append(time.perf_counter() - start)
  return [statistics.median(spent) for spent in times]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--beams", default="1,4")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--prompt_tokens", type=int, default=32)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--num_layers", type=int, default=4)
  args = parser.parse_args()
  cfg = ModelConfig(vocab_size=4096, d_model=args.d_model, num_layers=args.num_layers,
                    num_heads=args.d_model // 64, mlp_dim=4 * args.d_model,
                    max_len=args.prompt_tokens + args.new_tokens)
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = jax.device_get(nn.unbox(GPT(cfg).init(jax.random.key(0), tokens, tokens, tokens + 1)
                                   ["params"]))
  rng = np.random.default_rng(0)
  prompts = rng.integers(0, cfg.vocab_size, (args.batch, args.prompt_tokens)).tolist()
  beams = [int(b) for b in args.beams.split(",")]
  calls = [lambda: generate(params, cfg, prompts, SamplingConfig(args.new_tokens, 0.0))]
  calls += [lambda b=b: beam_generate(params, cfg, prompts, BeamConfig(b, args.new_tokens))
            for b in beams]
  seconds = [s / args.new_tokens for s in median_seconds(calls, args.repeats)]
  rows = [{"decoder": "greedy (generate)" if i == 0 else "beam_generate",
           "beam": 1 if i == 0 else beams[i - 1], "ms_per_token": 1e3 * s,
           "vs_greedy": s / seconds[0]} for i, s in enumerate(seconds)]
  print(f"{'decoder':<20}{'beam':>6}{'ms/token':>10}{'x greedy':>10}")
  for row in rows:
    print(f"{row['decoder']:<20}{row['beam']:>6}{row['ms_per_token']:>10.2f}"
          f"{row['vs_greedy']:>10.2f}")
  params_count = sum(x.size for x in jax.tree.leaves(params))
  print(f"cpu: {cpu_model()} ({os.cpu_count()} cores); {jax.devices()[0].platform}; model "
        f"{params_count / 1e6:.1f}M params, batch {args.batch}, prompt {args.prompt_tokens}, "
        f"{args.new_tokens} new tokens; {datetime.date.today()}")
  print(json.dumps({"cpu": cpu_model(), "config": vars(args), "params": params_count,
                    "rows": rows}))


if __name__ == "__main__":
  main()
