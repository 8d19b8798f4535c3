"""Scaled dot-product attention through jax.nn.dot_product_attention, with the implementation chosen per call.

JAX's own default (implementation=None) is XLA's attention on every device (jax 0.10-0.11). On NVIDIA GPUs,
cuDNN's fused kernel applies to bfloat16 and float16 inputs with a head width that is a multiple of 8, up to
128; there it is asked for explicitly. Everything else (float32, CPU, TPU) takes the XLA path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
_FUSED_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def implementation(dtype, head_dim: int, backend: str | None = None) -> str:
  """'cudnn' where cuDNN's fused attention applies (GPU, bf16/fp16, head_dim % 8 == 0 and <= 128), else 'xla'."""
  backend = backend or jax.default_backend()
  fused = backend in ("gpu", "cuda") and jnp.dtype(dtype) in _FUSED_DTYPES and head_dim % 8 == 0 and head_dim <= 128
  return "cudnn" if fused else "xla"


def attend(q: Array, k: Array, v: Array, *, is_causal: bool = False) -> Array:
  """softmax(q k^T / sqrt(d)) v for q, k, v (B, L, H, D) -> (B, L, H, D); causal or bidirectional."""
  return jax.nn.dot_product_attention(q, k, v, is_causal=is_causal, implementation=implementation(q.dtype, q.shape[-1]))
