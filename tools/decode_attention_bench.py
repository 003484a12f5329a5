"""Time one decode step's attention forms on this CPU, interleaved: jaxlm's
`single_query_attention` (two einsums), elementwise products and sums (4-D, multi-head only, and
the 5-D grouped form jaxlm used until 2026-12-06) and `jax.nn.dot_product_attention`.

    python tools/decode_attention_bench.py [--rows=1,16,32] [--keys=128] [--heads=6] [--head_dim=32]
    python tools/decode_attention_bench.py --engine [--rows=1,16,32]   # whole serving steps

`--engine` times one-token serving calls (`Engine.steps`) of configs/default.py's model (random weights: speed
does not depend on them) with each form patched into `layers.attend`, its tokens fetched to the
host every step, as the server does. Checks the forms agree (float32) before timing. Last line: JSON.
"""

import argparse
import datetime
import json
import os
import sys
import time

import jax
import jax.numpy as jnp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import cpu_model  # noqa: E402

from jaxlm.models import layers  # noqa: E402
from jaxlm.models.layers import single_query_attention  # noqa: E402


def elementwise_attention(query, key, value, allowed, scale=None, bias=None):
  """The same attention as broadcast products and sums (multi-head only: no kv-head groups)."""
  scale = query.shape[-1] ** -0.5 if scale is None else scale
  scores = jnp.sum(query * key, axis=-1) * scale  # [rows, keys, heads]
  if bias is not None:
    scores = scores + jnp.transpose(bias[:, :, 0], (0, 2, 1))
  scores = jnp.where(allowed[:, :, None], scores, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=1)
  return jnp.sum(weights[..., None] * value, axis=1)[:, None]


def grouped_elementwise_attention(query, key, value, allowed, scale=None, bias=None):
  """jaxlm's form until 2026-12-06: the same products and sums over kv-head groups, with the
  query reshaped to `[rows, 1, kv_heads, group, head_dim]` (5-D broadcasts: 10-25x slower)."""
  rows, _, heads, head_dim = query.shape
  kv_heads, keys = key.shape[2], key.shape[1]
  grouped = query.reshape(rows, 1, kv_heads, heads // kv_heads, head_dim)
  scale = head_dim ** -0.5 if scale is None else scale
  scores = jnp.sum(grouped * key[:, :, :, None], axis=-1) * scale
  if bias is not None:
    scores = scores + jnp.transpose(bias[:, :, 0], (0, 2, 1)).reshape(
        rows, keys, kv_heads, heads // kv_heads)
  scores = jnp.where(allowed[:, :, None, None], scores, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=1)
  out = jnp.sum(weights[..., None] * value[:, :, :, None], axis=1)
  return out.reshape(rows, 1, heads, head_dim)


def xla_attention(query, key, value, allowed, scale=None, bias=None):
  return jax.nn.dot_product_attention(query, key, value, bias=bias, scale=scale,
                                      mask=allowed[:, None, None, :], implementation="xla")


FORMS = {"einsum": single_query_attention, "elementwise": elementwise_attention,
         "elementwise_5d": grouped_elementwise_attention, "dot_product_attention": xla_attention}


def time_engine(rows: int, steps: int) -> dict:
  """Milliseconds per one-token `Engine.steps` call (tokens fetched each step) with each form in `attend`."""
  import runpy  # noqa: PLC0415
  from jaxlm.models import GPT  # noqa: PLC0415
  from jaxlm.serving.engine import Engine  # noqa: PLC0415
  from jaxlm.training.engine import model_config  # noqa: PLC0415
  config = runpy.run_path(os.path.join(REPO, "configs", "default.py"))["get_config"]()
  cfg = model_config(config, config.data.vocab_size)
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = GPT(cfg).init(jax.random.key(0), tokens, tokens, tokens + 1)["params"]
  times = {name: [] for name in FORMS}
  for round_ in range(5):  # interleaved rounds
    for name, form in FORMS.items():
      layers.single_query_attention = form
      jax.clear_caches()  # the step compiles again with this form
      engine = Engine(cfg, rows)
      state = engine.init_state()
      for _ in range(3):  # compile and warm up
        state, out, _ = engine.steps(params, state, 1, rows)
      jax.device_get(out)
      start = time.perf_counter()
      for _ in range(steps):
        state, out, _ = engine.steps(params, state, 1, rows)
        jax.device_get(out)
      times[name].append((time.perf_counter() - start) / steps * 1e3)
  layers.single_query_attention = FORMS["einsum"]
  return {name: min(t) for name, t in times.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", default="1,16,32")
  parser.add_argument("--keys", type=int, default=128)
  parser.add_argument("--heads", type=int, default=6)
  parser.add_argument("--head_dim", type=int, default=32)
  parser.add_argument("--calls", type=int, default=200)
  parser.add_argument("--engine", action="store_true", help="time whole serving steps")
  args = parser.parse_args()
  results = []
  for rows in [int(r) for r in args.rows.split(",")]:
    if args.engine:
      row = {"rows": rows, **time_engine(rows, args.calls // 5)}
      results.append(row)
      print(f"engine step, {rows} slots: " + ", ".join(f"{n} {row[n]:.2f} ms" for n in FORMS),
            flush=True)
      continue
    keys = jax.random.split(jax.random.key(rows), 3)
    query = jax.random.normal(keys[0], (rows, 1, args.heads, args.head_dim))
    key = jax.random.normal(keys[1], (rows, args.keys, args.heads, args.head_dim))
    value = jax.random.normal(keys[2], key.shape)
    allowed = jnp.arange(args.keys)[None] < jnp.arange(1, rows + 1)[:, None] * args.keys // rows
    forms = {name: jax.jit(form) for name, form in FORMS.items()}
    outs = {name: f(query, key, value, allowed) for name, f in forms.items()}
    for name, out in outs.items():  # float32 sums of 128 terms: agree to ~1e-6
      assert float(jnp.max(jnp.abs(out - outs["einsum"]))) < 1e-5, name
    times = {name: [] for name in FORMS}
    for _ in range(5):  # interleaved rounds: drift hits every form alike
      for name, f in forms.items():
        start = time.perf_counter()
        for _ in range(args.calls // 5):
          out = f(query, key, value, allowed)
        jax.block_until_ready(out)
        times[name].append((time.perf_counter() - start) / (args.calls // 5) * 1e3)
    row = {"rows": rows, **{name: min(t) for name, t in times.items()}}
    results.append(row)
    print(f"rows {rows}: " + ", ".join(f"{n} {row[n]:.3f} ms" for n in FORMS), flush=True)
  print(json.dumps({"machine": cpu_model(), "date": datetime.date.today().isoformat(),
                    "engine": args.engine,
                    "keys": args.keys, "heads": args.heads, "head_dim": args.head_dim,
                    "results": results}))


if __name__ == "__main__":
  main()
