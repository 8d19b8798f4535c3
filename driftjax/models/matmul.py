"""A linear layer's product in the compute dtype with float32 accumulation, in the forward and both gradients.

With bfloat16 operands, XLA on a CPU with AVX512-BF16 (this project's machines) multiplies about twice as fast
as in float32 when the product accumulates in float32 (`preferred_element_type`), while products with a
bfloat16 result run at the float32 rate or below. JAX's own backward of a float32-accumulated product multiplies
a float32 cotangent by a bfloat16 operand, which XLA upcasts: the float32 rate again. `dense` keeps all three
products of a linear layer (y = x w, dx = dy w^T, dw = x^T dy) bfloat16 x bfloat16 -> float32, each result
rounded to the operands' dtype: the usual mixed-precision contract, and what GPUs and TPUs do in their matmul
units anyway. float32 operands take the plain product.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _product(a: Array, b: Array, dims) -> Array:
  return jax.lax.dot_general(a, b, (dims, ((), ())), preferred_element_type=jnp.float32).astype(a.dtype)


@jax.custom_vjp
def _dense_low(x: Array, w: Array) -> Array:
  return _product(x, w, ((x.ndim - 1,), (0,)))


def _dense_low_fwd(x: Array, w: Array):
  return _dense_low(x, w), (x, w)


def _dense_low_bwd(res, dy: Array):
  x, w = res
  dy = dy.astype(x.dtype)
  dx = _product(dy, w, ((dy.ndim - 1,), (1,)))
  batch = tuple(range(x.ndim - 1))
  dw = _product(x, dy, (batch, batch)).astype(w.dtype)
  return dx, dw


_dense_low.defvjp(_dense_low_fwd, _dense_low_bwd)


def dense(x: Array, w: Array) -> Array:
  """x (..., K) @ w (K, N) -> (..., N) in x's dtype; float32 accumulation when that dtype is narrower."""
  if x.dtype != w.dtype:
    raise ValueError(f"dense: operands in one dtype, got {x.dtype} and {w.dtype}")
  if w.ndim != 2 or x.shape[-1] != w.shape[0]:
    raise ValueError(f"dense: x (..., K) and w (K, N), got {x.shape} and {w.shape}")
  if jnp.dtype(x.dtype).itemsize >= 4:
    return x @ w
  return _dense_low(x, w)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, out_sharding=None):
  """`nnx.Linear(dot_general=...)`: the layer's contraction (the input's last axis with the kernel's first)
  through `dense`. Any other contraction, an explicit precision or result type is an error, not a fallback."""
  if dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())) or precision is not None:
    raise ValueError(f"matmul.dot_general takes a linear layer's contraction, got {dimension_numbers}, {precision}")
  if preferred_element_type is not None or out_sharding is not None:
    raise ValueError("matmul.dot_general sets its own result dtype and takes no out_sharding")
  return dense(lhs, rhs)
