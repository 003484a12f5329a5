"""Time one decode step's attention forms on this CPU: jaxlm's elementwise `single_query_attention`
against an einsum (batched matmul) form and `jax.nn.dot_product_attention`, interleaved.

    python tools/decode_attention_bench.py [--rows=1,16,32] [--keys=128] [--heads=6] [--head_dim=32]

`layers.attend` uses the elementwise form for every one-query step because it was faster on the
AMD EPYC; on an Intel Xeon it measured ~10x slower (docs/benchmarks.md, issue 14). Run it on each
CPU before changing that choice. Checks the forms agree (float32) before timing. Last line: JSON.
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

from jaxlm.models.layers import single_query_attention  # noqa: E402


def einsum_attention(query, key, value, allowed):
  """The same attention as batched matmuls: query `[rows, 1, heads, head_dim]`."""
  rows, _, heads, head_dim = query.shape
  grouped = query.reshape(rows, heads, head_dim).astype(jnp.float32)
  scores = jnp.einsum("bhd,bkhd->bhk", grouped, key.astype(jnp.float32)) * head_dim ** -0.5
  scores = jnp.where(allowed[:, None, :], scores, jnp.finfo(jnp.float32).min)
  out = jnp.einsum("bhk,bkhd->bhd", jax.nn.softmax(scores, axis=-1), value.astype(jnp.float32))
  return out.reshape(rows, 1, heads, head_dim)


FORMS = {
    "elementwise": jax.jit(single_query_attention),
    "einsum": jax.jit(einsum_attention),
    "dot_product_attention": jax.jit(lambda q, k, v, a: jax.nn.dot_product_attention(
        q, k, v, mask=a[:, None, None, :], implementation="xla")),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", default="1,16,32")
  parser.add_argument("--keys", type=int, default=128)
  parser.add_argument("--heads", type=int, default=6)
  parser.add_argument("--head_dim", type=int, default=32)
  parser.add_argument("--calls", type=int, default=200)
  args = parser.parse_args()
  results = []
  for rows in [int(r) for r in args.rows.split(",")]:
    keys = jax.random.split(jax.random.key(rows), 3)
    query = jax.random.normal(keys[0], (rows, 1, args.heads, args.head_dim))
    key = jax.random.normal(keys[1], (rows, args.keys, args.heads, args.head_dim))
    value = jax.random.normal(keys[2], key.shape)
    allowed = jnp.arange(args.keys)[None] < jnp.arange(1, rows + 1)[:, None] * args.keys // rows
    outs = {name: f(query, key, value, allowed) for name, f in FORMS.items()}
    for name, out in outs.items():  # float32 sums of 128 terms: agree to ~1e-6
      assert float(jnp.max(jnp.abs(out - outs["elementwise"]))) < 1e-5, name
    times = {name: [] for name in FORMS}
    for _ in range(5):  # interleaved rounds: drift hits every form alike
      for name, f in FORMS.items():
        start = time.perf_counter()
        for _ in range(args.calls // 5):
          out = f(query, key, value, allowed)
        jax.block_until_ready(out)
        times[name].append((time.perf_counter() - start) / (args.calls // 5) * 1e3)
    row = {"rows": rows, **{name: min(t) for name, t in times.items()}}
    results.append(row)
    print(f"rows {rows}: " + ", ".join(f"{n} {row[n]:.3f} ms" for n in FORMS), flush=True)
  print(json.dumps({"machine": cpu_model(), "date": datetime.date.today().isoformat(),
                    "keys": args.keys, "heads": args.heads, "head_dim": args.head_dim,
                    "results": results}))


if __name__ == "__main__":
  main()
