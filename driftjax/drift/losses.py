"""The drift loss of a whole feature dict: one field per feature key, summed (docs/method.md sections 2-3)."""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from driftjax.drift import features as feat_lib
from driftjax.drift import field as field_lib

Array = jax.Array


def drift_losses(
  gen_feats: Mapping[str, Array],
  pos_feats: Mapping[str, Array],
  pos_weights: Array,
  groups: int,
  config: field_lib.FieldConfig,
) -> tuple[Array, dict[str, Array]]:
  """Sum over feature keys of the drift loss, and per-key losses, scales and raw drift norms for metrics.

  gen_feats / pos_feats: {key: (G * N, P, C)} / {key: (G * M, P, C)}, group-major; pos_weights: (G, M).
  Keys whose grouped features share a shape (e.g. one pooling of several layers) are stacked and computed by
  one vmapped field call: the same per-key results (each key keeps its own scale), fewer and larger kernels.
  """
  by_shape: dict[tuple, list[str]] = {}
  grouped = {}
  for name in gen_feats:
    x = feat_lib.to_groups(gen_feats[name], groups)
    grouped[name] = (x, feat_lib.to_groups(pos_feats[name], groups))
    by_shape.setdefault(grouped[name][0].shape + grouped[name][1].shape, []).append(name)

  def one(x, y):
    sub = x.shape[0] // groups
    w = jnp.repeat(pos_weights, sub, axis=0)  # (G, M) -> (G * P, M), as to_groups lays out groups.
    loss, aux = field_lib.drift_loss(x, y, pos_weights=w, config=config)
    return loss, aux["scale"], aux["raw_drift_norm"]

  total, metrics = 0.0, {}
  for names in by_shape.values():
    xs = jnp.stack([grouped[n][0] for n in names])
    ys = jnp.stack([grouped[n][1] for n in names])
    losses, scales, norms = jax.vmap(one)(xs, ys)
    total = total + jnp.sum(losses)
    for i, name in enumerate(names):
      metrics[f"loss/{name}"] = losses[i]
      metrics[f"scale/{name}"] = scales[i]
      for j, t in enumerate(config.temperatures):
        metrics[f"raw_drift_norm/{name}/T{t:g}"] = norms[i, j]
  return total, metrics
