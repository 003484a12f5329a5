"""Training-speed accounting (FLOPs, MFU) and the metrics writers (JSONL + TensorBoard).

MFU = achieved model FLOP/s / peak FLOP/s, where the model FLOPs per token follow PaLM (appendix B):
  6 * N  +  12 * num_layers * seq_len * d_model
N counts every parameter that takes part in a matmul: not the position or token-type tables, which
are only added, nor an input embedding that is only looked up (untied, or a BERT classify / tag
model's; a tied one that is also the output projection counts). BERT's pooler, MLM transform and
classifier are matmuls and count. The second term is the attention scores and weighted sum
(forward + backward) over all T x T query-key pairs, so it counts BERT's bidirectional attention
the same as GPT's causal one (which could skip half). Peak:
on CPU a float32 matmul benchmark measured at start-up (one host's, split over its CPU devices); on
GPU/TPU the datasheet dense peak for the run's compute dtype: bf16 for bfloat16 runs, and for
float32 runs what JAX's default matmul precision uses (TF32 tensor cores on Ampere and later NVIDIA
GPUs, plain FP32 on older ones, one bf16 pass on TPU). The train loop leaves the first step of
each run (compilation) out of its first window.
"""

import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.models import ModelConfig

# Dense peak FLOP/s per chip from the vendors' datasheets (no sparsity): (bfloat16, float32 at
# JAX's default precision). float32: TF32 on A100/A10/L4/H100/H200; plain FP32 on V100 and T4 (no
# TF32); on TPU float32 matmuls run as one bf16 pass by default, so both numbers are the same.
DATASHEET_PEAK = {
    "H200": (989e12, 495e12), "H100": (989e12, 495e12), "A100": (312e12, 156e12),
    "L4": (121e12, 60e12), "A10": (125e12, 62.5e12), "V100": (125e12, 15.7e12),
    "T4": (65e12, 8.1e12), "TPU v6": (918e12, 918e12), "TPU v5p": (459e12, 459e12),
    "TPU v5 lite": (197e12, 197e12), "TPU v5e": (197e12, 197e12), "TPU v4": (275e12, 275e12),
    "TPU v3": (123e12, 123e12), "TPU v2": (45e12, 45e12),
}


def param_count(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def flops_per_token(cfg: ModelConfig, seq_len: int, params: Any) -> float:
  """Training FLOPs (forward + backward) per token, PaLM's formula; see the module docstring."""
  lookups = cfg.max_len * cfg.d_model if cfg.positions == "learned" else 0
  lookups += cfg.type_vocab_size * cfg.d_model
  if not cfg.tie_embeddings or cfg.head != "lm":  # the embedding is not the output projection
    lookups += cfg.vocab_size * cfg.d_model
  matmul_params = param_count(params) - lookups
  return 6.0 * matmul_params + 12.0 * cfg.num_layers * seq_len * cfg.d_model


def encdec_flops_per_token(cfg: ModelConfig, enc_len: int, dec_len: int, params: Any) -> float:
  """Training FLOPs (forward + backward) of an encoder-decoder per decoder position, for rows of
  `enc_len` encoder and `dec_len` decoder positions (multiply by rows x dec_len for a step).

  PaLM's formula applied to each stack: every matmul parameter costs 6 FLOPs per token it is
  applied to: the encoder's and each cross-attention's key/value projection (`cross_attn/kv`)
  per encoder token, the rest of the decoder and the output projection per decoder token; the
  attention scores and weighted sums cost 12 * heads * head_dim per query-key pair, over
  enc_len^2 pairs per encoder layer, dec_len^2 (self) + dec_len * enc_len (cross) per decoder
  layer. Lookups (the token embedding, position and relative-bias tables) are not matmuls."""
  per_token = {"encoder": 0, "decoder": 0}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = [getattr(key, "key", str(key)) for key in path]
    if names[0] not in per_token or names[-1] in ("pos_embedding", "relative_bias"):
      continue
    encoder_side = names[0] == "encoder" or ("cross_attn" in names and "kv" in names)
    per_token["encoder" if encoder_side else "decoder"] += int(np.prod(leaf.shape))
  per_token["decoder"] += cfg.target_vocab * cfg.d_model  # the output projection, tied or not
  width = cfg.num_heads * cfg.head_dim
  attention = 12.0 * width * (cfg.num_layers * enc_len ** 2 +
                              cfg.decoder_layers * (dec_len ** 2 + dec_len * enc_len))
  row = 6.0 * (per_token["encoder"] * enc_len + per_token["decoder"] * dec_len) + attention
  return row / dec_len


@functools.cache  # a machine's peak: measured once per process
def measure_matmul_peak(sizes: tuple[int, ...] = (1024, 2048), repeats: int = 5) -> float:
  """Best float32 matmul FLOP/s of the default device: the best of `repeats` at each size.

  Two sizes because XLA:CPU sometimes runs one size on a single thread for a whole process
  (measured: 1024 at half speed in one process of six, 2048 at full speed in the same process).
  """
  best_rate = 0.0
  for size in sizes:
    a = jnp.ones((size, size), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    for _ in range(repeats):
      start = time.perf_counter()
      matmul(a).block_until_ready()
      best_rate = max(best_rate, 2.0 * size**3 / (time.perf_counter() - start))
  return best_rate


def peak_flops(device: jax.Device, dtype: str) -> tuple[float, str]:
  """(peak FLOP/s per device for a model computing in `dtype`, where the number comes from)."""
  if device.platform != "cpu":
    kind = device.device_kind
    for name, (bf16_peak, f32_peak) in DATASHEET_PEAK.items():
      if name.lower() in kind.lower():
        if dtype == "bfloat16":
          return bf16_peak, f"datasheet bf16 dense peak of {kind}"
        return f32_peak, f"datasheet float32 (default matmul precision) dense peak of {kind}"
    return float("nan"), f"no datasheet peak known for {kind}"
  # The CPU devices of one host (mesh.cpu_devices) share its cores: a matmul on one device alone
  # already runs on all of them, so each device's share is the host peak over their number.
  return (measure_matmul_peak() / jax.local_device_count("cpu"),
          "measured float32 matmul peak of the host, shared by its CPU devices")


def drop_partial_line(path: str) -> None:
  """Cuts a last line that a killed run left half-written, so appended lines stay valid JSON."""
  if not os.path.exists(path):
    return
  with open(path, "rb+") as f:
    data = f.read()
    if data and not data.endswith(b"\n"):
      f.truncate(data.rfind(b"\n") + 1)


class MetricsWriter:
  """Appends one JSON line per record to WORKDIR/metrics.jsonl and mirrors scalars to TensorBoard.

  Only process 0 writes; the other processes get a writer that drops everything.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if enabled:
      from tensorboardX import (
        SummaryWriter,  # imported here: only the writing process needs it
      )
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      drop_partial_line(path)
      # Open for the writer's lifetime (appended to at every log step); `close` closes it.
      self._jsonl = open(path, "a", encoding="utf-8")  # noqa: SIM115
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, record: dict[str, float], prefix: str = "train") -> None:
    if not self.enabled:
      return
    self._jsonl.write(json.dumps({"step": step, "split": prefix, **record}) + "\n")
    self._jsonl.flush()
    for name, value in record.items():
      if isinstance(value, (int, float)):
        self._tb.add_scalar(f"{prefix}/{name}", value, step)

  def text(self, step: int, tag: str, text: str) -> None:
    if self.enabled:
      self._tb.add_text(tag, text, step)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
