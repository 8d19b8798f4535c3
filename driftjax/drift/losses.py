"""The drift loss of a whole feature dict: one field per feature key, summed (docs/method.md sections 2-3)."""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

from driftjax.drift import features as feat_lib
from driftjax.drift import field as field_lib

Array = jax.Array


def _stacked(gen_feats: Mapping[str, Array], pos_feats: Mapping[str, Array], groups: int):
  """Keys whose grouped features share a shape, stacked: [(names, xs (K, G * P, N, C), ys (K, G * P, M, C))]."""
  by_shape: dict[tuple, list[str]] = {}
  grouped = {}
  for name in gen_feats:
    x = feat_lib.to_groups(gen_feats[name], groups)
    grouped[name] = (x, feat_lib.to_groups(pos_feats[name], groups))
    by_shape.setdefault(grouped[name][0].shape + grouped[name][1].shape, []).append(name)
  return [
    (names, jnp.stack([grouped[n][0] for n in names]), jnp.stack([grouped[n][1] for n in names]))
    for names in by_shape.values()
  ]


def _key_metrics(name: str, loss: Array, scale: Array, raw_norms: Array, temperatures) -> dict[str, Array]:
  """One feature key's metrics: its loss, its scale and the raw drift norm at each temperature."""
  out = {f"loss/{name}": loss, f"scale/{name}": scale}
  for j, t in enumerate(temperatures):
    out[f"raw_drift_norm/{name}/T{t:g}"] = raw_norms[j]
  return out


def drift_fields(
  gen_feats: Mapping[str, Array],
  pos_feats: Mapping[str, Array],
  pos_weights: Array,
  groups: int,
  config: field_lib.FieldConfig,
) -> tuple[dict[str, Array], dict[str, Array], dict[str, Array]]:
  """The fields that drift_losses' gradients follow, laid out like the features, for a loss taken in pieces.

  Returns V {key: (G * N, P, C)} (normalized units, stop-gradient), s' {key: scalar} (the scale the features
  are divided by) and drift_losses' metrics. drift_losses' loss of key k is
  mean((x / s' - sg(x / s' + V))^2) over its G * N * P * C entries, whose gradient is that of
  sum(((x - sg(x)) / s' - V)^2) / (G * N * P * C): a sum over rows, so it may be taken over chunks of rows.
  Keys whose grouped features share a shape (e.g. one pooling of several layers) are stacked and computed by
  one vmapped field call: the same per-key results (each key keeps its own scale), fewer and larger kernels.
  """

  def one(x, y):
    sub = x.shape[0] // groups
    w = jnp.repeat(pos_weights, sub, axis=0)
    v, aux = field_lib.drift_field(x, y, pos_weights=w, config=config)
    return v, aux["scale"], aux["raw_drift_norm"]

  fields, feat_scales, metrics = {}, {}, {}
  for names, xs, ys in _stacked(gen_feats, pos_feats, groups):
    vs, scales, norms = jax.vmap(one)(xs, ys)
    for i, name in enumerate(names):
      metrics.update(_key_metrics(name, jnp.mean(jnp.square(vs[i])), scales[i], norms[i], config.temperatures))
      fields[name] = feat_lib.from_groups(vs[i], groups)
      feat_scales[name] = scales[i] / jnp.sqrt(jnp.float32(xs.shape[-1]))
  return fields, feat_scales, metrics


def drift_losses(
  gen_feats: Mapping[str, Array],
  pos_feats: Mapping[str, Array],
  pos_weights: Array,
  groups: int,
  config: field_lib.FieldConfig,
) -> tuple[Array, dict[str, Array]]:
  """Sum over feature keys of the drift loss, and per-key losses, scales and raw drift norms for metrics.

  gen_feats / pos_feats: {key: (G * N, P, C)} / {key: (G * M, P, C)}, group-major; pos_weights: (G, M).
  Per key, field.drift_loss on its groups: mean((x / s' - sg(x / s' + V))^2); gradients flow through x only.
  """
  fields, feat_scales, metrics = drift_fields(gen_feats, pos_feats, pos_weights, groups, config)
  total = 0.0
  for name, x in gen_feats.items():
    xn = x.astype(jnp.float32) / feat_scales[name]
    metrics[f"loss/{name}"] = jnp.mean(jnp.square(xn - jax.lax.stop_gradient(xn + fields[name])))
    total = total + metrics[f"loss/{name}"]
  return total, metrics


def own_positive_losses(
  gen_feats: Mapping[str, Array],
  pos_feats: Mapping[str, Array],
  groups: int,
  config: field_lib.FieldConfig,
) -> tuple[Array, dict[str, Array]]:
  """Like drift_losses, but each generated sample has positives of its own (continuations of it, say).

  gen_feats {key: (B, P, C)} with B = G * N, group-major; pos_feats {key: (B * M, P, C)}, sample-major (rows
  b*M .. b*M+M-1 are sample b's). One field per (sample, pooled index): the sample's own M positives attract;
  the other samples of its group (at the same pooled index) repel. Each key keeps its own scale.
  """
  cfg = dataclasses.replace(config, include_generated_negatives=False)
  total, metrics = 0.0, {}
  for name, x in gen_feats.items():
    b, p, c = x.shape
    n = b // groups
    xs = feat_lib.to_groups(x, b)  # (B * P, 1, C)
    ys = feat_lib.to_groups(pos_feats[name], b)  # (B * P, M, C)
    # Negatives of (sample i of group g, index p): group g's samples at p, i's own column weighing 0.
    peers = x.reshape(groups, 1, n, p, c).transpose(0, 1, 3, 2, 4)  # (G, 1, P, N, C)
    neg = jnp.broadcast_to(peers, (groups, n, p, n, c)).reshape(b * p, n, c)
    neg_w = jnp.broadcast_to((1.0 - jnp.eye(n))[None, :, None, :], (groups, n, p, n)).reshape(b * p, n)
    loss, aux = field_lib.drift_loss(xs, ys, neg, neg_weights=neg_w, config=cfg)
    total = total + loss
    metrics.update(_key_metrics(name, loss, aux["scale"], aux["raw_drift_norm"], config.temperatures))
  return total, metrics
