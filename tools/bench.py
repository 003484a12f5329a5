"""Measure a config's speed on this machine: train step, MFU, eval, sampling and the input pipeline.

    python tools/bench.py --config=configs/shakespeare_char.py \
        --config.data.path=../shared/data/tinyshakespeare.txt          # real data: pipeline + host wait
    python tools/bench.py --config=configs/shakespeare_char.py         # synthetic batches
    python tools/bench.py --config=configs/shakespeare_char.py --config.model.max_len=257 \
        --new_tokens=256    # KV cache vs recomputing the context, 256 new tokens

Set-up (`mesh.cpu_devices` included) is the config's, as `python -m jaxlm.train` would do it.
With data (a `data.path`, or a built-in source), the input pipeline is timed (tokenize + pack of
both splits, tokens/s) and the train steps take their batches from the training iterator, prepared
ahead on a thread as `train` does; host wait is the share of the timed loop spent waiting for the
next batch on the devices. Without data, batches are synthetic. Each time is the median over `repeats` timed runs of
`steps` calls after a compile-and-warm-up call. MFU uses training's FLOP count and a float32 matmul
peak measured here first (`jaxlm/metrics.py`). Sampling is greedy from one prompt token, on one
device, with the KV cache (`jaxlm.decode.generate`) and without it, two ways: the ideal no-cache
loop, which recomputes only the real context for each new token (lengths 1..n, one compiled forward
per length, compiled before timing; the headline `kv_cache_speedup`), and one jitted loop that runs
the whole fixed `[1, max_len]` buffer per token (`kv_cache_speedup_vs_full_buffer`). Prints a table
and, last, one JSON line.
"""

import json
import math
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxlm.data import train_batches
from jaxlm.data.dataset import DataConfig, build_dataset, make_tokenizer, read_corpus
from jaxlm.inference.decode import SamplingConfig, generate
from jaxlm.models import GPT, ModelConfig
from jaxlm.parallel import sharding
from jaxlm.training.engine import engine_for_config
from jaxlm.training.metrics import flops_per_token, peak_flops
from jaxlm.training.prefetch import Prefetch

_CONFIG = config_flags.DEFINE_config_file("config", "configs/shakespeare_char.py", "Config file.")
_VOCAB = flags.DEFINE_integer("vocab_size", 65, "Vocabulary size of the model without data.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats; the median is reported.")
_STEPS = flags.DEFINE_integer("steps", 20, "Calls per timed repeat.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 0, "Tokens to sample (0 = model.max_len - 1).")


def median_seconds(fn, repeats: int, calls: int) -> float:
  """Median wall time of one call; `fn` must block until its result is ready."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      fn()
    times.append((time.perf_counter() - start) / calls)
  return statistics.median(times)


def time_train(engine, state, next_batch, repeats: int, steps: int):
  """(state, median step seconds, median share of the loop spent in `next_batch`)."""
  state, metrics = engine.train_step(state, next_batch())
  jax.block_until_ready(metrics)
  step_times, waits = [], []
  for _ in range(repeats):
    start, wait = time.perf_counter(), 0.0
    for _ in range(steps):
      fetch = time.perf_counter()
      batch = next_batch()
      wait += time.perf_counter() - fetch
      state, metrics = engine.train_step(state, batch)  # dispatched; runs while we fetch the next
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - start
    step_times.append(elapsed / steps)
    waits.append(wait / elapsed)
  return state, statistics.median(step_times), statistics.median(waits)


def no_cache_generator(cfg: ModelConfig, new_tokens: int):
  """Jitted greedy decoding that recomputes the whole context buffer for each new token."""
  model = GPT(cfg)

  @jax.jit
  def run(params, first_token):
    context = jnp.zeros((1, cfg.max_len), jnp.int32).at[0, 0].set(first_token)
    positions = jnp.arange(cfg.max_len, dtype=jnp.int32)[None]
    segments = jnp.ones_like(context)

    def step(length, context):
      logits = model.apply({"params": params}, context, positions, segments)  # [1, max_len, vocab]
      token = jnp.argmax(logits[0, length - 1]).astype(jnp.int32)
      return context.at[0, length].set(token)

    context = jax.lax.fori_loop(1, new_tokens + 1, step, context)
    return context[0, 1:new_tokens + 1]

  return run


def growing_context_loop(params, cfg: ModelConfig, tokens: list[int]):
  """The ideal no-cache greedy loop, as a function returning its seconds: each new token recomputes
  only the real context so far (lengths 1, 2, ..., n), one compiled forward per length, all
  compiled here by a first, untimed pass. Checks that it picks the same tokens as the KV-cache run
  that produced `tokens`."""
  model = GPT(cfg)
  forward = jax.jit(lambda p, ids: model.apply({"params": p}, ids, jnp.arange(ids.shape[1])[None],
                                               jnp.ones_like(ids))[0, -1])  # [vocab]
  context = [1] + list(tokens)  # the prompt token, then the KV-cache run's tokens

  def run() -> float:
    start = time.perf_counter()
    for length in range(1, len(context)):
      next_token = int(jnp.argmax(forward(params, jnp.asarray([context[:length]], jnp.int32))))
      if next_token != context[length]:
        raise AssertionError(f"no-cache loop chose {next_token} at {length}, the cache "
                             f"{context[length]}")
    return time.perf_counter() - start

  run()  # compiles every length
  return run


def cpu_model() -> str:
  """The CPU's model name, as `lscpu` prints it (from /proc/cpuinfo), or the platform's."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def matmul_rates(cfg: ModelConfig, rows: int, repeats: int = 7, products: int = 100) -> dict:
  """GFLOP/s of the model's projection matmuls ([rows, in] x [in, out]) on one JAX device and in
  PyTorch (a test dependency; skipped when absent), best of `repeats`.

  Each rate is taken over `products` matmuls in a row, `acc += (x + i) @ w`: inside one compiled
  `fori_loop` for JAX, a Python loop for PyTorch (whose eager per-op cost is part of its step).
  Timing one jitted call per product instead (`jax_matmul_gflops_per_call`) mostly measures
  dispatch at these sizes: that is how a 2-3x "gap" appears that the compiled step does not have.
  """
  shapes = [(cfg.d_model, 3 * cfg.d_model), (cfg.d_model, cfg.d_model), (cfg.d_model, cfg.mlp_dim),
            (cfg.mlp_dim, cfg.d_model)]
  flops = sum(2.0 * rows * k * n for k, n in shapes) * products
  device = jax.devices()[0]
  pairs = [(jax.device_put(jnp.ones((rows, k), jnp.float32), device),
            jax.device_put(jnp.full((k, n), 1e-3, jnp.float32), device)) for k, n in shapes]

  @jax.jit
  def chain(x, w):  # products matmuls; `+ i` keeps XLA from hoisting the product out of the loop
    add_product = lambda i, acc: acc + (x + i.astype(x.dtype)) @ w
    return jax.lax.fori_loop(0, products, add_product, jnp.zeros((x.shape[0], w.shape[1])))

  matmul = jax.jit(lambda a, b: a @ b)
  jax_seconds = best_seconds(lambda: [chain(a, b).block_until_ready() for a, b in pairs], repeats)
  per_call = best_seconds(lambda: [matmul(a, b).block_until_ready() for a, b in pairs
                                   for _ in range(products)], repeats)
  rates = {"matmul_shapes": [[rows, k, n] for k, n in shapes],
           "jax_matmul_gflops": flops / jax_seconds / 1e9,
           "jax_matmul_gflops_per_call": flops / per_call / 1e9}
  try:
    import torch
  except ImportError:
    return rates
  tensors = [(torch.ones(rows, k), torch.full((k, n), 1e-3)) for k, n in shapes]

  def torch_chain(x, w):
    acc = torch.zeros(x.shape[0], w.shape[1])
    for i in range(products):
      acc += (x + i) @ w
    return acc

  torch_seconds = best_seconds(lambda: [torch_chain(a, b) for a, b in tensors], repeats)
  rates["torch_threads"] = torch.get_num_threads()
  rates["torch_matmul_gflops"] = flops / torch_seconds / 1e9
  rates["torch_over_jax_matmul"] = jax_seconds / torch_seconds
  return rates


def best_seconds(fn, repeats: int) -> float:
  fn()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def synthetic_batch(rows: int, seq_len: int, vocab: int, leading: tuple[int, ...] = ()):
  rng = np.random.default_rng(0)
  shape = (*leading, rows, seq_len)
  return {"inputs": rng.integers(0, vocab, shape, dtype=np.int32),
          "targets": rng.integers(0, vocab, shape, dtype=np.int32),
          "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), shape).copy(),
          "segment_ids": np.ones(shape, np.int32), "weights": np.ones(shape, np.float32)}


def load_data(config):
  """(dataset, pipeline numbers), or (None, {}) when the config names no data."""
  data_cfg = DataConfig.from_config(config.data)
  if data_cfg.source == "files" and not data_cfg.path:
    return None, {}
  corpus = read_corpus(data_cfg)
  tokenizer = make_tokenizer(data_cfg, corpus.train)
  start = time.perf_counter()
  dataset = build_dataset(data_cfg, corpus, tokenizer)  # tokenize + pack, both splits
  seconds = time.perf_counter() - start
  tokens = (dataset.train.num_full_windows + dataset.val.num_full_windows) * data_cfg.seq_len
  return dataset, {"pipeline_tokens": tokens, "pipeline_tokens_per_sec": tokens / seconds}


def bench(config) -> dict:
  # First, before anything else runs.
  peak, peak_source = peak_flops(jax.devices()[0], config.model.dtype)
  dataset, result = load_data(config)
  vocab = dataset.tokenizer.vocab_size if dataset else _VOCAB.value
  seq_len, batch, accum = config.data.seq_len, config.train.batch_size, config.train.grad_accum_steps
  engine = engine_for_config(config, vocab)
  model_cfg = engine.model.cfg
  state = engine.init()
  feed = engine.train_feed(batch, accum)
  if dataset:  # batches as train.py gets them: prepared ahead on a thread
    prefetched = Prefetch(iter(train_batches(dataset.train, batch, config.train.seed, 0, 1)),
                          feed.assemble)
    next_batch = lambda: next(prefetched)
  else:
    fixed = feed.assemble(synthetic_batch(batch, seq_len, vocab))
    next_batch = lambda: fixed
  state, step_time, host_wait = time_train(engine, state, next_batch, _REPEATS.value, _STEPS.value)
  if dataset:
    prefetched.close()

  params = state.params
  eval_batch = engine.eval_feed(config.eval.batch_size).assemble(
      synthetic_batch(config.eval.batch_size, seq_len, vocab))
  eval_time = median_seconds(lambda: jax.block_until_ready(engine.eval_step(params, eval_batch)),
                             _REPEATS.value, _STEPS.value)
  # An encoder does not generate: sampling is timed for GPTs only.
  sampling = time_sampling(params, model_cfg) if model_cfg.family == "gpt" else {}
  train_tps = batch * seq_len / step_time
  split = math.prod(engine.mesh.shape[axis] for axis in engine.train_batch_axes)
  return {
      "machine": f"{cpu_model()}, {jax.device_count()} {jax.devices()[0].device_kind} device(s)",
      "params": int(sum(x.size for x in jax.tree.leaves(params))),
      "data": "real" if dataset else "synthetic",
      "step_time_ms": step_time * 1e3,
      "train_tokens_per_sec": train_tps,
      "mfu": train_tps * flops_per_token(model_cfg, seq_len, params) / (peak * jax.device_count()),
      "peak_tflops": peak * jax.device_count() / 1e12,
      "peak_source": peak_source,
      "host_wait": host_wait if dataset else None,
      **result,
      "eval_tokens_per_sec": config.eval.batch_size * seq_len / eval_time,
      **sampling,
      # The projections' matmuls at one device's share of a micro-batch.
      **matmul_rates(model_cfg, batch // accum // split * seq_len),
  }


def time_sampling(params, model_cfg: ModelConfig) -> dict:
  """Greedy sampling speed with the KV cache and without it (both no-cache loops)."""
  # Sampling runs on one device, as `python -m jaxlm.sample` does on a CPU host: one token per step
  # is far too little work to split over devices.
  params = jax.device_put(params, jax.devices()[0])
  new_tokens = _NEW_TOKENS.value or model_cfg.max_len - 1
  sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0)
  no_cache = no_cache_generator(model_cfg, new_tokens)
  cached_tokens = generate(params, model_cfg, [[1]], sampling)[0]
  same_tokens = cached_tokens == np.asarray(no_cache(params, 1)).tolist()
  # Interleaved (cache, no cache, cache, ...) so load on a shared machine hits both alike.
  growing = growing_context_loop(params, model_cfg, cached_tokens)
  sample_times, no_cache_times, growing_times = [], [], []
  for repeat in range(_REPEATS.value):
    sample_times.append(median_seconds(lambda: generate(params, model_cfg, [[1]], sampling), 1, 1))
    no_cache_times.append(median_seconds(
        lambda: jax.block_until_ready(no_cache(params, 1)), 1, 1))
    if repeat < 3:  # a Python loop of n calls: three repeats are enough
      growing_times.append(growing())
  sample_time, no_cache_time = statistics.median(sample_times), statistics.median(no_cache_times)
  growing_time = statistics.median(growing_times)
  return {
      "sample_new_tokens": new_tokens,
      "sample_tokens_per_sec": new_tokens / sample_time,
      "sample_no_cache_tokens_per_sec": new_tokens / no_cache_time,
      "sample_growing_context_tokens_per_sec": new_tokens / growing_time,
      # Headline: against the ideal no-cache loop (only the real context recomputed per token).
      "kv_cache_speedup": growing_time / sample_time,
      "kv_cache_speedup_vs_full_buffer": no_cache_time / sample_time,
      "kv_cache_same_tokens": same_tokens,
  }


def main(argv):
  del argv
  config = _CONFIG.value
  sharding.split_cpu_host(config.mesh.cpu_devices)
  result = bench(config)
  for key, value in result.items():
    print(f"{key:<32} {value:.4g}" if isinstance(value, float) else f"{key:<32} {value}")
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
