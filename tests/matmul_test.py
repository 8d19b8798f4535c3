"""driftjax.models.matmul: bfloat16 products accumulated in float32, forward and backward."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from driftjax.models import matmul


def _operands(shape=(3, 5, 16), n=24):
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, shape)
  w = jax.random.normal(kw, (shape[-1], n)) / 4
  g = jax.random.normal(kg, shape[:-1] + (n,))
  return x, w, g


def _vjp(fn, x, w, g):
  y, pullback = jax.vjp(fn, x, w)
  return (y, *pullback(g.astype(y.dtype)))


def test_float32_is_the_plain_product():
  x, w, g = _operands()
  for got, want in zip(_vjp(matmul.dense, x, w, g), _vjp(lambda a, b: a @ b, x, w, g)):
    chex.assert_trees_all_equal(got, want)


def test_bfloat16_forward_and_gradients_are_float32_math_rounded_once():
  """Each of y, dx, dw equals the float32 product of the rounded operands, rounded to bfloat16 once; JAX's own
  bfloat16 backward would round partial sums (and is what the float32 accumulation avoids)."""
  x, w, g = _operands(n=40)
  xb, wb, gb = (t.astype(jnp.bfloat16) for t in (x, w, g))
  y, dx, dw = _vjp(matmul.dense, xb, wb, gb)
  assert y.dtype == dx.dtype == dw.dtype == jnp.bfloat16
  f = lambda t: t.astype(jnp.float32)
  want = (f(xb) @ f(wb), f(gb) @ f(wb).T, jnp.einsum("abk,abn->kn", f(xb), f(gb)))
  for got, ref in zip((y, dx, dw), want):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref.astype(jnp.bfloat16)))


def test_gradients_under_jit_and_grad_match_float32():
  x, w, _ = _operands()
  loss = lambda a, b: jnp.sum(jnp.sin(matmul.dense(a, b).astype(jnp.float32)))
  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
  want = jax.grad(loss, argnums=(0, 1))(x, w)
  for got, ref in zip(grads, want):
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(ref), rtol=0.05, atol=0.05)


def test_linear_layer_uses_it():
  layer = nnx.Linear(16, 8, dtype=jnp.bfloat16, dot_general=matmul.dot_general, rngs=nnx.Rngs(0))
  plain = nnx.Linear(16, 8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (4, 16))
  y = layer(x)
  assert y.dtype == jnp.bfloat16
  ref = x.astype(jnp.bfloat16).astype(jnp.float32) @ layer.kernel[...].astype(jnp.bfloat16).astype(jnp.float32)
  np.testing.assert_array_equal(
    np.asarray(y), np.asarray(ref.astype(jnp.bfloat16) + layer.bias[...].astype(jnp.bfloat16))
  )
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(plain(x), np.float32), rtol=0.02, atol=0.02)


def test_bad_operands_are_errors():
  x, w, _ = _operands()
  with pytest.raises(ValueError, match="one dtype"):
    matmul.dense(x.astype(jnp.bfloat16), w)
  with pytest.raises(ValueError, match=r"\(K, N\)"):
    matmul.dense(x, w.T)
  with pytest.raises(ValueError, match="linear layer's contraction"):
    matmul.dot_general(x, w, (((0,), (0,)), ((), ())))
  with pytest.raises(ValueError, match="result dtype"):
    matmul.dot_general(x, w, (((2,), (0,)), ((), ())), preferred_element_type=jnp.float32)
