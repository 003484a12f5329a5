"""`x @ kernel` contracting x's last axes, with a weight gradient laid out for XLA:CPU.

The weight gradient of `y = x @ kernel` contracts x and dL/dy over their token axes. XLA:CPU wants
one of the two with the token axis innermost, and for the MLP input it transposes dL/dh, the larger
one, inside a slow strided loop fused with GELU's backward pass: 17% of the nanoGPT-sized step
(docs/benchmarks.md). On CPU the backward pass here transposes the *smaller* operand itself,
behind an optimization barrier so that XLA cannot fold the transpose back into the dot. The numbers
are the same up to float summation order. GPUs and TPUs take transposed operands at no cost, so
they get the plain dot.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


def project(x: Array, kernel: Array, in_dims: int) -> Array:
  """Contracts the last `in_dims` axes of `x  # [..., *in]` with the first of `kernel  # [*in, *out]`."""
  if jax.default_backend() == "cpu":
    return _project_cpu(x, kernel, in_dims)
  return _dot(x, kernel, in_dims)


def _dot(x: Array, kernel: Array, in_dims: int) -> Array:
  contract = tuple(range(x.ndim - in_dims, x.ndim))
  return lax.dot_general(x, kernel, ((contract, tuple(range(in_dims))), ((), ())))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _project_cpu(x: Array, kernel: Array, in_dims: int) -> Array:
  return _dot(x, kernel, in_dims)


def _forward(x: Array, kernel: Array, in_dims: int):
  return _dot(x, kernel, in_dims), (x, kernel)


def _backward(in_dims: int, residuals, dy: Array):
  x, kernel = residuals  # [*lead, *in], [*in, *out]
  out_dims = kernel.ndim - in_dims
  lead = x.ndim - in_dims
  dx = lax.dot_general(dy, kernel, ((tuple(range(lead, dy.ndim)), tuple(range(in_dims, kernel.ndim))),
                                    ((), ())))  # [*lead, *in]
  tokens = math.prod(x.shape[:lead])
  x_rows = x.reshape(tokens, *x.shape[lead:])  # [tokens, *in]
  dy_rows = dy.reshape(tokens, *dy.shape[lead:])  # [tokens, *out]
  if math.prod(x.shape[lead:]) <= math.prod(dy.shape[lead:]):
    x_cols = lax.optimization_barrier(jnp.moveaxis(x_rows, 0, -1))  # [*in, tokens]
    dkernel = lax.dot_general(x_cols, dy_rows, (((in_dims,), (0,)), ((), ())))  # [*in, *out]
  else:
    dy_cols = lax.optimization_barrier(jnp.moveaxis(dy_rows, 0, -1))  # [*out, tokens]
    dkernel_t = lax.dot_general(dy_cols, x_rows, (((out_dims,), (0,)), ((), ())))  # [*out, *in]
    dkernel = jnp.transpose(dkernel_t, (*range(out_dims, out_dims + in_dims), *range(out_dims)))
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_project_cpu.defvjp(_forward, _backward)
