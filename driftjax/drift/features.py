"""Poolings that turn hidden states (B, L, C) into drift features (docs/method.md section 3).

Every pooling returns (B, P, C'): P "sub-groups" per sample (positions, windows, or 1 for global statistics).
Each index p forms its own kernel over the batch's samples (the paper treats each spatial location this
way); ``to_groups`` lays a feature out as (G * P, N, C') groups for the field. An optional mask (B, L) of
1 for valid positions restricts every statistic to valid positions.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

Array = jax.Array

POOLINGS = ("pos", "mean", "std", "win4_mean", "win4_std", "win16_mean", "win16_std", "rms", "flat")


def _check(h: Array, mask: Array | None) -> Array:
  if h.ndim != 3:
    raise ValueError(f"hidden states must be (B, L, C), got shape {h.shape}")
  if mask is None:
    return jnp.ones(h.shape[:2], h.dtype)
  if mask.shape != h.shape[:2]:
    raise ValueError(f"mask must be (B, L) = {h.shape[:2]}, got {mask.shape}")
  return mask.astype(h.dtype)


def per_position(h: Array, mask: Array | None = None) -> Array:
  """Each position's vector, (B, L, C); masked positions are zeroed."""
  m = _check(h, mask)
  return h * m[..., None]


def _masked_moments(h: Array, m: Array, axis: int) -> tuple[Array, Array]:
  count = jnp.maximum(jnp.sum(m, axis=axis, keepdims=True), 1.0)
  mean = jnp.sum(h * m, axis=axis, keepdims=True) / count
  var = jnp.sum(jnp.square(h - mean) * m, axis=axis, keepdims=True) / count
  return mean, var


def _safe_sqrt(v: Array) -> Array:
  # sqrt has an infinite gradient at 0 (constant windows); floor it.
  return jnp.sqrt(jnp.maximum(v, 1e-12))


def global_mean(h: Array, mask: Array | None = None) -> Array:
  """Mean over valid positions, (B, 1, C)."""
  m = _check(h, mask)[..., None]
  return _masked_moments(h, m, axis=1)[0]


def global_std(h: Array, mask: Array | None = None) -> Array:
  """Standard deviation (population) over valid positions, (B, 1, C)."""
  m = _check(h, mask)[..., None]
  return _safe_sqrt(_masked_moments(h, m, axis=1)[1])


def _windows(h: Array, mask: Array | None, window: int) -> tuple[Array, Array]:
  m = _check(h, mask)
  b, length, c = h.shape
  if window <= 0 or length % window:
    raise ValueError(f"window {window} must divide the sequence length {length}")
  return h.reshape(b, length // window, window, c), m.reshape(b, length // window, window, 1)


def window_mean(h: Array, mask: Array | None = None, window: int = 4) -> Array:
  """Mean over non-overlapping windows of `window` positions, (B, L / window, C)."""
  hw, mw = _windows(h, mask, window)
  return _masked_moments(hw, mw, axis=2)[0][:, :, 0]


def window_std(h: Array, mask: Array | None = None, window: int = 4) -> Array:
  """Standard deviation within non-overlapping windows, (B, L / window, C)."""
  hw, mw = _windows(h, mask, window)
  return _safe_sqrt(_masked_moments(hw, mw, axis=2)[1])[:, :, 0]


def channel_rms(h: Array, mask: Array | None = None) -> Array:
  """Per-channel root mean square over valid positions, (B, 1, C)."""
  m = _check(h, mask)[..., None]
  count = jnp.maximum(jnp.sum(m, axis=1, keepdims=True), 1.0)
  return _safe_sqrt(jnp.sum(jnp.square(h) * m, axis=1, keepdims=True) / count)


def whole_sequence(h: Array, mask: Array | None = None) -> Array:
  """Every position's vector in one feature, (B, 1, L * C): one kernel over whole samples, so that a generated
  sample is drawn toward real samples that are near at every position at once (per-position kernels each pick
  their own nearest real samples, which need not agree)."""
  b, length, c = h.shape
  return per_position(h, mask).reshape(b, 1, length * c)


_POOL_FNS: Mapping[str, Callable[..., Array]] = {
  "pos": per_position,
  "mean": global_mean,
  "std": global_std,
  "win4_mean": lambda h, m: window_mean(h, m, 4),
  "win4_std": lambda h, m: window_std(h, m, 4),
  "win16_mean": lambda h, m: window_mean(h, m, 16),
  "win16_std": lambda h, m: window_std(h, m, 16),
  "rms": channel_rms,
  "flat": whole_sequence,
}


def pool_features(hidden: Mapping[str, Array], poolings: Sequence[str], mask: Array | None = None) -> dict[str, Array]:
  """All configured poolings of every hidden-state entry: {'<name>/<pooling>': (B, P, C')}."""
  out = {}
  for name, h in hidden.items():
    for pool in poolings:
      if pool not in _POOL_FNS:
        raise ValueError(f"unknown pooling {pool!r}; expected one of {POOLINGS}")
      out[f"{name}/{pool}"] = _POOL_FNS[pool](h, mask)
  return out


def to_groups(feat: Array, num_groups: int) -> Array:
  """(B, P, C) with B = G * N samples -> (G * P, N, C): one kernel per group and sub-group index."""
  b, p, c = feat.shape
  if b % num_groups:
    raise ValueError(f"batch {b} is not divisible into {num_groups} groups")
  n = b // num_groups
  return feat.reshape(num_groups, n, p, c).transpose(0, 2, 1, 3).reshape(num_groups * p, n, c)


def from_groups(grouped: Array, num_groups: int) -> Array:
  """The inverse of to_groups: (G * P, N, C) -> (G * N, P, C)."""
  gp, n, c = grouped.shape
  p = gp // num_groups
  return grouped.reshape(num_groups, p, n, c).transpose(0, 2, 1, 3).reshape(num_groups * n, p, c)
