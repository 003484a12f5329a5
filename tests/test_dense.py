"""dense.project: the CPU weight-gradient layout gives a float64 numpy reference's values and
gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.models.dense import project


def reference(x, kernel, cotangent, in_dims):
  """y = x . kernel and its pullback of `cotangent`, by np.tensordot in float64."""
  x, kernel, cotangent = (np.asarray(a, np.float64) for a in (x, kernel, cotangent))
  lead, out_dims = x.ndim - in_dims, kernel.ndim - in_dims
  y = np.tensordot(x, kernel, axes=in_dims)  # [*lead, *out]
  dx = np.tensordot(cotangent, kernel, axes=(list(range(lead, lead + out_dims)),
                                             list(range(in_dims, kernel.ndim))))  # [*lead, *in]
  dkernel = np.tensordot(x, cotangent, axes=(list(range(lead)), list(range(lead))))  # [*in, *out]
  return y, dx, dkernel


@pytest.mark.parametrize("x_shape, kernel_shape, in_dims", [
    ((3, 5, 8), (8, 32), 1),  # wider out: transposes x
    ((3, 5, 32), (32, 8), 1),  # wider in: transposes dL/dy
    ((3, 5, 8), (8, 3, 2, 4), 1),  # qkv-like: several output axes
    ((3, 5, 2, 4), (2, 4, 8), 2),  # attention output: two input axes
])
def test_project_matches_a_float64_reference_and_its_gradients(x_shape, kernel_shape, in_dims):
  assert jax.default_backend() == "cpu"  # the custom backward pass is the CPU one
  kx, kk, kd = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, x_shape)
  kernel = jax.random.normal(kk, kernel_shape)
  out_shape = x_shape[:len(x_shape) - in_dims] + kernel_shape[in_dims:]
  cotangent = jax.random.normal(kd, out_shape)

  y, vjp = jax.vjp(lambda a, b: project(a, b, in_dims), x, kernel)
  for got, want in zip((y, *vjp(cotangent)), reference(x, kernel, cotangent, in_dims)):
    assert got.shape == want.shape
    # float32 sums of <= 32 products: at worst 32 * 2^-24 ~ 2e-6 of their scale (measured 1e-7).
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_project_keeps_the_compute_dtype_of_its_inputs():
  x, kernel = jnp.ones((2, 3, 4), jnp.bfloat16), jnp.ones((4, 6), jnp.bfloat16)
  dx, dkernel = jax.grad(lambda a, b: project(a, b, 1).astype(jnp.float32).sum(), (0, 1))(x, kernel)
  assert dx.dtype == dkernel.dtype == jnp.bfloat16
  np.testing.assert_array_equal(dkernel, np.full((4, 6), 6.0))
