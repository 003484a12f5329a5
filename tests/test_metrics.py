"""What MFU counts: model FLOPs per token, the peak it is measured against, the time it covers."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import pytest
from test_train import corpus_dir, tiny_config  # noqa: F401 (fixture)

from jaxlm.models import make_model
from jaxlm.training import metrics
from jaxlm.training.loop import train


def params_of(cfg):
  tokens = jnp.zeros((1, 8), jnp.int32)
  return jax.eval_shape(lambda: make_model(cfg).init(jax.random.key(0), tokens, tokens,
                                                     tokens + 1))["params"]


def hand_flops(cfg, seq_len: int) -> float:
  """PaLM's 6N + 12·L·T·d with N counted by hand for a bias-free GELU model: per layer qkv
  (3d²), out (d²), MLP (2·d·mlp) and the two norm scales; the final norm; the output projection
  (V·d)."""
  d, layers = cfg.d_model, cfg.num_layers
  per_layer = 3 * d * d + d * d + 2 * d * cfg.mlp_dim + 2 * d
  n = layers * per_layer + d + cfg.vocab_size * d
  return 6.0 * n + 12.0 * layers * seq_len * d


@pytest.mark.parametrize("tie", [True, False])
def test_flops_count_the_output_projection_once_and_no_lookup_table(tiny_model_cfg, tie):
  cfg = dataclasses.replace(tiny_model_cfg, use_bias=False, tie_embeddings=tie)
  assert metrics.flops_per_token(cfg, 16, params_of(cfg)) == hand_flops(cfg, 16)


def hand_bert_flops(cfg, seq_len: int) -> float:
  """The same count for a bias-free post-norm BERT: its blocks are GPT's; ln_embed's scale; the
  head's matmuls (MLM transform + its norm + the tied decoder V·d; or the pooler d² and the
  classifier d·labels; or the classifier alone). The token-type and position tables are lookups,
  and so is the embedding of a classify / tag model."""
  d, layers, labels = cfg.d_model, cfg.num_layers, cfg.num_labels
  per_layer = 3 * d * d + d * d + 2 * d * cfg.mlp_dim + 2 * d
  head = {"lm": d * d + d + cfg.vocab_size * d, "classify": d * d + d * labels,
          "tag": d * labels}[cfg.head]
  n = layers * per_layer + d + head
  return 6.0 * n + 12.0 * layers * seq_len * d


@pytest.mark.parametrize("head", ["lm", "classify", "tag"])
def test_bert_flops_count_its_head_matmuls_and_no_lookup_table(tiny_model_cfg, head):
  cfg = dataclasses.replace(tiny_model_cfg, family="bert", head=head, num_labels=3,
                            norm_position="post", type_vocab_size=2, use_bias=False)
  assert metrics.flops_per_token(cfg, 16, params_of(cfg)) == hand_bert_flops(cfg, 16)


@dataclasses.dataclass
class FakeDevice:
  platform: str
  device_kind: str


def test_gpu_peak_follows_the_compute_dtype():
  h200 = FakeDevice("gpu", "NVIDIA H200")
  assert metrics.peak_flops(h200, "bfloat16")[0] == 989e12
  # float32 matmuls run on TF32 tensor cores at JAX's default precision: half the bf16 rate.
  assert metrics.peak_flops(h200, "float32")[0] == 495e12
  assert metrics.peak_flops(FakeDevice("gpu", "Tesla V100-SXM2-16GB"), "float32")[0] == 15.7e12


def test_the_first_log_window_leaves_compilation_out(corpus_dir, tmp_path):  # noqa: F811
  """Compiling the train step takes hundreds of steps' time; it must not enter step_time or MFU.

  A timing check, but not a flaky one: with the compilation cache off, compiling takes about 100
  times a step of this model, and the bound is 5 times the later windows' median.
  """
  config = tiny_config(corpus_dir, steps=12)
  config.train.log_every, config.eval.every, config.eval.sample_tokens = 3, 0, 0
  config.model.d_model = 40  # a shape no other test compiles in this process
  config.model.num_heads = 4
  enabled = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    train(config, str(tmp_path))
  finally:
    jax.config.update("jax_enable_compilation_cache", enabled)
  with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
    times = [r["step_time"] for r in map(json.loads, f) if r["split"] == "train"]
  later = sorted(times[1:])[len(times[1:]) // 2]
  assert len(times) == 4 and times[0] < 5 * later, times
