"""dense.project: the CPU weight-gradient layout gives the plain dot's values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.dense import _dot, project


@pytest.mark.parametrize("x_shape, kernel_shape, in_dims", [
    ((3, 5, 8), (8, 32), 1),  # wider out: transposes x
    ((3, 5, 32), (32, 8), 1),  # wider in: transposes dL/dy
    ((3, 5, 8), (8, 3, 2, 4), 1),  # qkv-like: several output axes
    ((3, 5, 2, 4), (2, 4, 8), 2),  # attention output: two input axes
])
def test_project_matches_the_plain_dot_and_its_gradients(x_shape, kernel_shape, in_dims):
  assert jax.default_backend() == "cpu"  # the custom backward pass is the CPU one
  kx, kk, kd = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, x_shape)
  kernel = jax.random.normal(kk, kernel_shape)
  out_shape = x_shape[:len(x_shape) - in_dims] + kernel_shape[in_dims:]
  cotangent = jax.random.normal(kd, out_shape)

  def pullback(fn):
    y, vjp = jax.vjp(lambda a, b: fn(a, b, in_dims), x, kernel)
    return (y, *vjp(cotangent))

  for got, want in zip(pullback(project), pullback(_dot)):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_project_keeps_the_compute_dtype_of_its_inputs():
  x, kernel = jnp.ones((2, 3, 4), jnp.bfloat16), jnp.ones((4, 6), jnp.bfloat16)
  dx, dkernel = jax.grad(lambda a, b: project(a, b, 1).astype(jnp.float32).sum(), (0, 1))(x, kernel)
  assert dx.dtype == dkernel.dtype == jnp.bfloat16
  np.testing.assert_array_equal(dkernel, np.full((4, 6), 6.0))
