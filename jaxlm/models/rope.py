"""Rotary position embeddings: the inverse frequencies (RoPE base, Llama 3 scaling) and the rotation.

Feature pair i of a head (features i and i + head_dim / 2, the "rotate half" layout of GPT-NeoX,
Llama and Qwen2) turns by `position * inv_freq[i]`, with `inv_freq[i] = rope_theta^(-2i/head_dim)`.
Llama 3.1's scaling ("llama3") stretches the low frequencies for long contexts and blends the
middle band; the frequencies are fixed numbers, computed once in numpy when the model is traced.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def rope_frequencies(head_dim: int, theta: float = 10000.0, scaling: str = "none",
                     factor: float = 8.0, low_freq_factor: float = 1.0,
                     high_freq_factor: float = 4.0, original_max_len: int = 8192) -> np.ndarray:
  """The inverse frequencies `[head_dim / 2]` (float32) of one head."""
  half = head_dim // 2
  inv_freq = 1.0 / (theta ** (np.arange(half, dtype=np.float64) / half))  # [half]
  if scaling == "llama3":
    wavelength = 2 * math.pi / inv_freq
    low_freq_wavelength = original_max_len / low_freq_factor  # longer ones are divided by factor
    high_freq_wavelength = original_max_len / high_freq_factor  # shorter ones stay
    smooth = (original_max_len / wavelength - low_freq_factor) / (high_freq_factor -
                                                                    low_freq_factor)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    inv_freq = np.where(wavelength > low_freq_wavelength, inv_freq / factor,
                        np.where(wavelength < high_freq_wavelength, inv_freq, blended))
  return inv_freq.astype(np.float32)


def model_frequencies(cfg) -> np.ndarray:
  """`rope_frequencies` of a `ModelConfig`'s options."""
  return rope_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, cfg.rope_factor,
                          cfg.rope_low_freq_factor, cfg.rope_high_freq_factor,
                          cfg.rope_original_max_len)


def apply_rope(x: Array, positions: Array, inv_freq: np.ndarray | None = None) -> Array:
  """Rotates feature pairs of `x  # [batch, seq, heads, head_dim]` by angles set by `positions`
  `[batch, seq]`; `inv_freq  # [head_dim / 2]` defaults to RoPE's base 10000, unscaled."""
  half = x.shape[-1] // 2
  if inv_freq is None:
    inv_freq = rope_frequencies(2 * half)
  angles = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq)  # [batch, seq, half]
  sin = jnp.sin(angles)[:, :, None, :]  # [batch, seq, 1, half]
  cos = jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)
