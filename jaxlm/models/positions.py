"""Position information of the encoder-decoder lines: T5's relative-position bias and the original
Transformer's fixed sinusoids. Positions count from 0 in each document (packed rows and KV-cache
decoding give the same distances as one document alone).

T5 (Raffel et al. 2020; Hugging Face's `T5Attention._relative_position_bucket`): the distance
`key - query` falls into one of `num_buckets` buckets: the encoder's buckets are split in half by
direction; within a direction the first half of the buckets are exact distances and the rest
grow logarithmically up to `max_distance` (farther ones share the last bucket). Each stack learns
a `[buckets, heads]` table that is added to its attention scores.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def relative_buckets(max_len: int, num_buckets: int, max_distance: int,
                     bidirectional: bool) -> np.ndarray:
  """The bucket `[2 * max_len - 1]` of every distance `key - query` in (-max_len, max_len),
  at index distance + max_len - 1. Computed once in numpy float32 as T5 computes it in torch, so
  the buckets at the logarithmic boundaries are the same as Hugging Face's."""
  distance = np.arange(-(max_len - 1), max_len, dtype=np.int64)  # key - query
  bucket = np.zeros_like(distance)
  if bidirectional:
    num_buckets //= 2
    bucket += (distance > 0) * num_buckets
    distance = np.abs(distance)
  else:
    distance = -np.minimum(distance, 0)  # the past; the future (masked anyway) is bucket 0
  max_exact = num_buckets // 2
  scaled = (np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(max_exact))
            / np.float32(math.log(max_distance / max_exact)) * np.float32(num_buckets - max_exact))
  large = np.minimum(max_exact + scaled.astype(np.int64), num_buckets - 1)
  return (bucket + np.where(distance < max_exact, distance, large)).astype(np.int32)


def relative_bias(table: Array, query_positions: Array, key_positions: Array, max_len: int,
                  num_buckets: int, max_distance: int, bidirectional: bool) -> Array:
  """The bias `[batch, heads, queries, keys]` that `table  # [buckets, heads]` adds to attention
  scores, for `query_positions  # [batch, queries]` and `key_positions  # [batch, keys]`."""
  buckets = jnp.asarray(relative_buckets(max_len, num_buckets, max_distance, bidirectional))
  distance = key_positions[:, None, :] - query_positions[:, :, None]  # [batch, queries, keys]
  bucket = jnp.take(buckets, jnp.clip(distance + max_len - 1, 0, 2 * max_len - 2))
  bias = jnp.take(table, bucket, axis=0)  # [batch, queries, keys, heads]
  return jnp.transpose(bias, (0, 3, 1, 2)).astype(jnp.float32)


def sinusoids(positions: Array, d_model: int) -> Array:
  """Fixed embeddings `[batch, seq, d_model]` of `positions  # [batch, seq]`: sin of
  `position / 10000^(i / (d_model/2 - 1))` on the first half of the features, cos on the second
  (the layout of tensor2tensor and Flax's WMT example)."""
  half = d_model // 2
  inv_freq = np.exp(-math.log(10000.0) * np.arange(half) / max(half - 1, 1))  # [half]
  angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq, jnp.float32)
  out = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  return jnp.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, d_model - 2 * half)])
