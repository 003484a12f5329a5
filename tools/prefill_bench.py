"""Time and memory of a prefill, interleaved: logits at the last prompt token only (what
`decode.prefill` and the server compute since 2026-12-06) against every position's (before).

    python tools/prefill_bench.py [--lengths=64,512] [--vocabs=2048,32000] [--d_model=192]

A random `configs/default.py`-shaped model (4 layers, 6 heads) with the given width and
vocabulary, one prompt row; XLA's compiled temp bytes and the fastest of `--repeats` timings,
alternating the two forms. Last line: JSON.
"""

import argparse
import datetime
import json
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import cpu_model  # noqa: E402

from jaxlm.models import GPT, ModelConfig  # noqa: E402


def compiled_prefill(cfg: ModelConfig, params, length: int, last_only: bool):
  model = GPT(cfg, decode=True)
  tokens = jnp.ones((1, length), jnp.int32)
  positions, segments = jnp.arange(length)[None], jnp.ones((1, length), jnp.int32)

  def run(params):
    cache = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens[:, :1], positions[:, :1],
                                              segments[:, :1]))["cache"]
    cache = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), cache)
    logits_at = jnp.full((1, 1), length - 1) if last_only else None
    logits, _ = model.apply({"params": params, "cache": cache}, tokens, positions, segments,
                            logits_at=logits_at, mutable=["cache"])
    return logits[:, -1]

  return jax.jit(run).lower(params).compile()


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--lengths", default="64,512")
  parser.add_argument("--vocabs", default="2048,32000")
  parser.add_argument("--d_model", type=int, default=192)
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  rows = []
  for vocab in (int(v) for v in args.vocabs.split(",")):
    for length in (int(n) for n in args.lengths.split(",")):
      cfg = ModelConfig(vocab_size=vocab, d_model=args.d_model, num_layers=4, num_heads=6,
                        mlp_dim=4 * args.d_model, max_len=max(length, 128))
      one = jnp.ones((1, 8), jnp.int32)
      params = GPT(cfg).init(jax.random.key(0), one, jnp.arange(8)[None], one)["params"]
      forms = {name: compiled_prefill(cfg, params, length, name == "last")
               for name in ("all", "last")}
      times = {name: [] for name in forms}
      for _ in range(args.repeats):
        for name, fn in forms.items():
          fn(params).block_until_ready()
          start = time.perf_counter()
          fn(params).block_until_ready()
          times[name].append(time.perf_counter() - start)
      row = {"vocab": vocab, "prompt": length,
             **{f"{n}_ms": round(1e3 * min(t), 2) for n, t in times.items()},
             **{f"{n}_temp_mb": round(f.memory_analysis().temp_size_in_bytes / 1e6, 1)
                for n, f in forms.items()}}
      rows.append(row)
      print(f"vocab {vocab:>6} prompt {length:>5}: all positions {row['all_ms']:8.2f} ms "
            f"{row['all_temp_mb']:7.1f} MB, last only {row['last_ms']:8.2f} ms "
            f"{row['last_temp_mb']:7.1f} MB", flush=True)
  print(json.dumps({"cpu": cpu_model(), "date": datetime.date.today().isoformat(),
                    "d_model": args.d_model, "rows": rows}))


if __name__ == "__main__":
  main()
