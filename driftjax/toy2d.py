"""The 2D toy of the paper (Fig. 3): an MLP generator trained with the drifting field in raw 2D space.

Writes DIR/toy2d.png (target and samples at a few points of training, one row per target) and
DIR/toy2d.json with the energy distance to the target at init and at the end, the floor (two independent
draws of the target), and for the two-mode target the share of samples nearest each mode.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from driftjax import files
from driftjax import hosts
from driftjax.drift import field

Array = jax.Array

TWO_MODE_CENTRES = np.array([[-1.5, 0.0], [1.5, 0.0]], np.float32)


# --------------------------------------------------------------------------------------------------
# Targets: key, n -> (n, 2) samples.
# --------------------------------------------------------------------------------------------------


def checkerboard(key: Array, n: int) -> Array:
  k1, k2, k3 = jax.random.split(key, 3)
  x1 = jax.random.uniform(k1, (n,), minval=-2.0, maxval=2.0)
  x2 = jax.random.uniform(k2, (n,)) - 2.0 * jax.random.randint(k3, (n,), 0, 2)
  x2 = x2 + jnp.mod(jnp.floor(x1), 2.0)
  return jnp.stack([x1, x2], -1)


def swiss_roll(key: Array, n: int) -> Array:
  k1, k2 = jax.random.split(key)
  t = 1.5 * jnp.pi * (1.0 + 2.0 * jax.random.uniform(k1, (n,)))
  pts = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], -1) / 5.0
  return pts + 0.05 * jax.random.normal(k2, (n, 2))


def eight_gaussians(key: Array, n: int) -> Array:
  k1, k2 = jax.random.split(key)
  angles = 2 * jnp.pi * jax.random.randint(k1, (n,), 0, 8) / 8
  centres = 2.0 * jnp.stack([jnp.cos(angles), jnp.sin(angles)], -1)
  return centres + 0.15 * jax.random.normal(k2, (n, 2))


def two_modes(key: Array, n: int) -> Array:
  k1, k2 = jax.random.split(key)
  idx = jax.random.randint(k1, (n,), 0, 2)
  return jnp.asarray(TWO_MODE_CENTRES)[idx] + 0.25 * jax.random.normal(k2, (n, 2))


TARGETS: dict[str, Callable[[Array, int], Array]] = {
  "checkerboard": checkerboard,
  "swiss_roll": swiss_roll,
  "eight_gaussians": eight_gaussians,
  "two_modes": two_modes,
}


# --------------------------------------------------------------------------------------------------
# Metric.
# --------------------------------------------------------------------------------------------------


def energy_distance(x: Array, y: Array, chunk: int = 512) -> float:
  """Energy distance 2E|X-Y| - E|X-X'| - E|Y-Y'| (V-statistic, self-pairs included).

  In float64 on the host: the result is ~1e-3 of the terms it is the difference of, so float32 sums over
  16M pairs would be noise at the floor.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

  def mean_dist(a, b):
    total = 0.0
    for i in range(0, len(a), chunk):
      total += np.sqrt(np.sum(np.square(a[i : i + chunk, None] - b[None]), -1)).sum()
    return total / (len(a) * len(b))

  return float(2 * mean_dist(x, y) - mean_dist(x, x) - mean_dist(y, y))


def mode_shares(samples: Array) -> list[float]:
  """Share of samples whose nearest two-mode centre is each centre."""
  d = jnp.sum(jnp.square(samples[:, None] - jnp.asarray(TWO_MODE_CENTRES)[None]), -1)
  idx = jnp.argmin(d, -1)
  return [float(jnp.mean(idx == i)) for i in range(len(TWO_MODE_CENTRES))]


# --------------------------------------------------------------------------------------------------
# Generator.
# --------------------------------------------------------------------------------------------------


class MLPGenerator(nnx.Module):
  """Noise (B, noise_dim) -> points (B, 2)."""

  def __init__(
    self,
    noise_dim: int,
    hidden: int,
    depth: int,
    *,
    rngs: nnx.Rngs,
    out_bias: np.ndarray | None = None,
    out_scale: float = 1.0,
  ):
    dims = [noise_dim] + [hidden] * depth
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])])
    self.out = nnx.Linear(hidden, 2, rngs=rngs)
    # A collapsed start: outputs shrunk around one point.
    self.out.kernel[...] = self.out.kernel[...] * out_scale
    if out_bias is not None:
      self.out.bias[...] = jnp.asarray(out_bias, jnp.float32)

  def __call__(self, z: Array) -> Array:
    h = z
    for layer in self.layers:
      h = jax.nn.silu(layer(h))
    return self.out(h)


def train_target(name: str, cfg: ml_collections.ConfigDict, field_cfg: field.FieldConfig, key: Array) -> dict:
  """Trains one generator on one target; returns metrics and snapshots of samples."""
  sample_target = TARGETS[name]
  k_model, k_train, k_eval, k_target, k_floor = jax.random.split(key, 5)
  collapsed = name == "two_modes"
  model = MLPGenerator(
    cfg.noise_dim,
    cfg.hidden,
    cfg.depth,
    rngs=nnx.Rngs(k_model),
    out_bias=TWO_MODE_CENTRES[0] if collapsed else None,
    out_scale=cfg.collapsed_out_scale if collapsed else 1.0,
  )
  graphdef, params = nnx.split(model, nnx.Param)
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, cfg.lr, cfg.warmup_steps, cfg.steps, cfg.lr * cfg.final_lr_fraction
  )
  tx = optax.adam(schedule, b1=0.9, b2=0.99)
  opt_state = tx.init(params)
  ema = params

  def generate(p, k, n):
    return nnx.merge(graphdef, p)(jax.random.normal(k, (n, cfg.noise_dim)))

  @jax.jit
  def step(params, opt_state, ema, step_key):
    k_noise, k_data = jax.random.split(step_key)
    pos = sample_target(k_data, cfg.batch_pos)[None]

    def loss_fn(p):
      x = generate(p, k_noise, cfg.batch_gen)[None]
      return field.drift_loss(x, pos, config=field_cfg)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    ema = optax.incremental_update(params, ema, 1.0 - cfg.ema_decay)
    return params, opt_state, ema, loss, aux["raw_drift_norm"]

  target_eval = sample_target(k_target, cfg.eval_samples)
  # The floor: the metric between independent draws of the target, averaged over a few pairs (one pair's
  # value varies by tens of percent).
  floors = [
    energy_distance(sample_target(k1, cfg.eval_samples), sample_target(k2, cfg.eval_samples))
    for k1, k2 in jax.random.split(k_floor, (cfg.floor_pairs, 2))
  ]
  floor = float(np.mean(floors))
  snap_steps = sorted({int(round(f * cfg.steps)) for f in cfg.snapshot_fractions})
  snapshots = {}
  init_samples = generate(params, k_eval, cfg.eval_samples)
  result = {"init": energy_distance(init_samples, target_eval), "floor": floor, "floor_std": float(np.std(floors))}
  if collapsed:
    result["init_mode_shares"] = mode_shares(init_samples)
  snapshots[0] = np.asarray(init_samples[: cfg.plot_samples])
  start = time.time()
  for i in range(cfg.steps):
    params, opt_state, ema, loss, raw = step(params, opt_state, ema, jax.random.fold_in(k_train, i))
    if i + 1 in snap_steps:
      snapshots[i + 1] = np.asarray(generate(ema, k_eval, cfg.plot_samples))
    if (i + 1) % cfg.log_every == 0:
      logging.info(
        "toy2d %s step %d loss %.4f raw drift norm %s", name, i + 1, float(loss), np.round(np.asarray(raw), 4).tolist()
      )
  final_samples = generate(ema, k_eval, cfg.eval_samples)
  result["final"] = energy_distance(final_samples, target_eval)
  result["final_over_floor"] = result["final"] / floor
  result["init_over_final"] = result["init"] / result["final"]
  result["train_seconds"] = time.time() - start
  if collapsed:
    result["mode_shares"] = mode_shares(final_samples)
  return {"metrics": result, "snapshots": snapshots, "target": np.asarray(target_eval[: cfg.plot_samples])}


def plot(results: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(results)
  n_cols = 1 + max(len(r["snapshots"]) for r in results.values())
  fig, axes = plt.subplots(len(names), n_cols, figsize=(2.2 * n_cols, 2.2 * len(names)), squeeze=False)
  for row, name in enumerate(names):
    r = results[name]
    panels = [("target", r["target"])] + [(f"step {s}", pts) for s, pts in sorted(r["snapshots"].items())]
    for col, (title, pts) in enumerate(panels):
      ax = axes[row, col]
      ax.scatter(pts[:, 0], pts[:, 1], s=0.5, alpha=0.5, color="k" if col == 0 else "C0")
      ax.set_xlim(-3.2, 3.2)
      ax.set_ylim(-3.2, 3.2)
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_title(title if row == 0 or col == 0 else title, fontsize=8)
      if col == 0:
        ax.set_ylabel(name, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains every configured target; writes toy2d.json and toy2d.png under workdir."""
  cfg = config.toy
  unknown = [t for t in cfg.targets if t not in TARGETS]
  if unknown:
    raise ValueError(f"unknown toy2d targets {unknown}; expected some of {sorted(TARGETS)}")
  if not 0 <= cfg.warmup_steps < cfg.steps:
    raise ValueError(f"toy.warmup_steps={cfg.warmup_steps} must be in [0, toy.steps={cfg.steps})")
  field_cfg = field.FieldConfig.from_settings(config.drift)
  os.makedirs(workdir, exist_ok=True)
  results = {}
  key = jax.random.key(config.seed)
  for i, name in enumerate(cfg.targets):
    results[name] = train_target(name, cfg, field_cfg, jax.random.fold_in(key, i))
    logging.info("toy2d %s: %s", name, json.dumps(results[name]["metrics"]))
  metrics = {name: r["metrics"] for name, r in results.items()}

  def write_results():
    files.atomic_write(os.path.join(workdir, "toy2d.json"), json.dumps(metrics, indent=2))
    plot(results, os.path.join(workdir, "toy2d.png"))

  hosts.first_writes("toy2d_results", write_results)
  return metrics
