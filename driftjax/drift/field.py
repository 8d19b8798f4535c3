"""The drifting field V and the drifting loss (Deng et al. 2026, docs/method.md sections 1-2).

Pure functions over grouped features. A group holds N generated rows x (G, N, C); its columns are the
generated rows themselves (negatives, own diagonal masked), optional extra negatives (G, K, C) and M real
positives (G, M, C). Every kernel is local to its group; the feature scale and the drift normalization are
shared by all groups of one call (one call = one feature key).

Defaults follow the paper: plain L2 distances with a safe sqrt, one stop-gradient scale per key, self mask,
temperatures (0.02, 0.05, 0.2) in units of the mean distance, the double softmax computed exactly in log
space with the cross-weighting, and a normalization of each temperature's field before the sum. Variants
that docs/demo.md measures are kept as switches for ablations (``softmax``, ``drift_norm``,
``temperature_units``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

SOFTMAX_MODES = ("double", "double_floor", "cols", "split")
DRIFT_NORMS = ("per_temperature", "none")
TEMPERATURE_UNITS = ("mean_distance", "feature")


@dataclasses.dataclass(frozen=True)
class FieldConfig:
  """Static settings of the field; hashable, so it can be a static jit argument.

  Attributes:
    temperatures: kernel temperatures R; logits are -d / (s * R) (see ``temperature_units``).
    softmax: 'double' (paper: sqrt of the column- and row-softmax product, exact in log space),
      'double_floor' (authors' public code: the product clipped at 1e-6 before the sqrt),
      'cols' (softmax over columns only),
      'split' (a softmax over the positives and another over the negatives, no cross-weighting:
      V = E_pos[y] - E_neg[y] under each row's kernel, the mean-shift difference; the joint forms are that
      times Z_pos Z_neg / (Z_pos + Z_neg)^2, which vanishes when a row's negatives are much nearer than its
      positives, e.g. when the generated samples coincide).
    drift_norm: 'per_temperature' (paper: each V_R scaled to E||V_R||^2 / C = 1, then summed) or 'none'
      (port: raw sum).
    temperature_units: 'mean_distance' (paper: R is relative to the mean distance s) or 'feature'
      (port: R is in normalized feature units, i.e. not multiplied by sqrt(C)).
    self_mask: added to d_ii (generated vs itself) in units of the mean distance s (the paper's code adds 100
      to d / s), so that its strength does not depend on the feature width C.
    eps: floor on squared distances (relative to the squared mean distance) before the sqrt.
    include_generated_negatives: the generated rows are also the negatives (paper). False leaves only the
      extra negatives, which tests use for exact anti-symmetry and equilibrium checks.
  """

  temperatures: tuple[float, ...] = (0.02, 0.05, 0.2)
  softmax: str = "double"
  drift_norm: str = "per_temperature"
  temperature_units: str = "mean_distance"
  self_mask: float = 100.0
  eps: float = 1e-12
  include_generated_negatives: bool = True

  @classmethod
  def from_settings(cls, settings) -> "FieldConfig":
    """From a mapping holding some of this class's field names (a config's `drift` section, say)."""
    kw = {f.name: settings[f.name] for f in dataclasses.fields(cls) if f.name in settings}
    if "temperatures" in kw:
      kw["temperatures"] = tuple(kw["temperatures"])
    return cls(**kw)

  def __post_init__(self):
    if self.softmax not in SOFTMAX_MODES:
      raise ValueError(f"softmax={self.softmax!r}; expected one of {SOFTMAX_MODES}")
    if self.drift_norm not in DRIFT_NORMS:
      raise ValueError(f"drift_norm={self.drift_norm!r}; expected one of {DRIFT_NORMS}")
    if self.temperature_units not in TEMPERATURE_UNITS:
      raise ValueError(f"temperature_units={self.temperature_units!r}; expected one of {TEMPERATURE_UNITS}")
    if not self.temperatures or any(t <= 0 for t in self.temperatures):
      raise ValueError(f"temperatures must be positive and non-empty, got {self.temperatures}")


def _check_shapes(x, pos, neg, pos_weights, neg_weights, include_generated):
  if x.ndim != 3:
    raise ValueError(f"generated features must be (G, N, C), got shape {x.shape}")
  g, _, c = x.shape
  for name, y in (("positives", pos), ("negatives", neg)):
    if y is None:
      continue
    if y.ndim != 3 or y.shape[0] != g or y.shape[2] != c:
      raise ValueError(f"{name} must be (G, M, C) = ({g}, M, {c}) to match generated {x.shape}, got {y.shape}")
  for name, w, y in (("pos_weights", pos_weights, pos), ("neg_weights", neg_weights, neg)):
    if w is None:
      continue
    if y is None:
      raise ValueError(f"{name} given without the features they weigh")
    if w.shape != y.shape[:2]:
      raise ValueError(f"{name} must be (G, M) = {y.shape[:2]}, got {w.shape}")
  if not include_generated and neg is None:
    raise ValueError("no negatives: include_generated_negatives=False needs extra negatives")


def pairwise_distance(x: Array, y: Array, eps: float) -> Array:
  """Plain L2 distances (G, N, K) between rows of x (G, N, C) and y (G, K, C), with a safe sqrt.

  The squared distance is clipped at eps before the sqrt: sqrt(0) has an infinite gradient.
  """
  d2 = jnp.sum(x * x, -1)[:, :, None] + jnp.sum(y * y, -1)[:, None, :] - 2.0 * jnp.einsum("gnc,gkc->gnk", x, y)
  return jnp.sqrt(jnp.maximum(d2, eps))


def _log_column_softmax(logits: Array, log_w: Array) -> Array:
  """log of the softmax over the last axis (columns) with log column weights log_w (G, K) in the normalizer."""
  return logits - jax.nn.logsumexp(logits + log_w[:, None, :], axis=-1, keepdims=True)


def _kernel(logits: Array, log_w: Array, n_neg: int, mode: str) -> tuple[Array, Array]:
  """Interaction weights (W_neg, W_pos) from logits (G, N, K) and log column weights (G, K).

  A column of integer weight w acts exactly as w identical copies of it: the weight enters the
  normalizer over columns and multiplies the entry, and leaves the normalizer over rows unchanged.
  """
  w = jnp.exp(log_w)[:, None, :]
  if mode == "split":  # Each side normalized over its own columns.
    log_neg = _log_column_softmax(logits[..., :n_neg], log_w[:, :n_neg])
    a = jnp.exp(jnp.concatenate([log_neg, _log_column_softmax(logits[..., n_neg:], log_w[:, n_neg:])], axis=-1))
  elif mode == "cols":
    a = jnp.exp(_log_column_softmax(logits, log_w))
  else:
    log_cols = _log_column_softmax(logits, log_w)
    log_rows = jax.nn.log_softmax(logits, axis=-2)
    if mode == "double":
      a = jnp.exp(0.5 * (log_cols + log_rows))
    else:  # double_floor: the authors' public code clips the product before the sqrt.
      a = jnp.sqrt(jnp.maximum(jnp.exp(log_cols + log_rows), 1e-6))
  # A column of weight 0 is left out of the column normalizer, so one much nearer than every weighted column
  # (a sample's own masked column, an empty queue slot) has log_cols in the hundreds: exp overflows to inf, and
  # inf * 0 would be NaN. Its weight is 0 whatever the kernel says (in split mode too, where a side with no
  # weighted column has an infinite log entry in every column).
  a = jnp.where(w > 0, a * w, 0.0)
  a_neg, a_pos = a[..., :n_neg], a[..., n_neg:]
  if mode == "split":
    return a_neg, a_pos
  # Cross-weighting: attraction is scaled by the total repulsion of the row and vice versa.
  w_pos = a_pos * jnp.sum(a_neg, -1, keepdims=True)
  w_neg = a_neg * jnp.sum(a_pos, -1, keepdims=True)
  return w_neg, w_pos


def _rms(v: Array) -> Array:
  return jnp.sqrt(jnp.mean(jnp.square(v)))


def drift_field(
  x: Array,
  pos: Array,
  neg: Array | None = None,
  pos_weights: Array | None = None,
  neg_weights: Array | None = None,
  *,
  config: FieldConfig = FieldConfig(),
  scale: Array | float | None = None,
) -> tuple[Array, dict[str, Any]]:
  """The drifting field at each generated row, in normalized feature units.

  Args:
    x: generated features (G, N, C).
    pos: real features, the positives (G, M, C).
    neg: optional extra negatives (G, K, C).
    pos_weights, neg_weights: optional non-negative column weights (G, M) and (G, K).
    config: the field's settings.
    scale: optional fixed feature scale s (the mean distance); by default it is measured on this batch
      (weighted mean of all row-column distances, self-distances excluded) under stop-gradient.

  Returns:
    V (G, N, C), stop-gradient, in units where the features are divided by s' = s / sqrt(C);
    and diagnostics: 'scale' (s), 'raw_drift_norm' (T,) = sqrt(mean V_R^2) of each temperature's field
    before normalization.
  """
  _check_shapes(x, pos, neg, pos_weights, neg_weights, config.include_generated_negatives)
  g, n, c = x.shape
  x = jax.lax.stop_gradient(x.astype(jnp.float32))
  pos = jax.lax.stop_gradient(pos.astype(jnp.float32))

  negs, neg_w = [], []
  if config.include_generated_negatives:
    negs.append(x)
    neg_w.append(jnp.ones((g, n), jnp.float32))
  if neg is not None:
    negs.append(jax.lax.stop_gradient(neg.astype(jnp.float32)))
    neg_w.append(jnp.ones(neg.shape[:2], jnp.float32) if neg_weights is None else neg_weights.astype(jnp.float32))
  pos_w = jnp.ones(pos.shape[:2], jnp.float32) if pos_weights is None else pos_weights.astype(jnp.float32)
  cols = jnp.concatenate(negs + [pos], axis=1)  # (G, K, C): negatives first, then positives.
  col_w = jax.lax.stop_gradient(jnp.concatenate(neg_w + [pos_w], axis=1))
  n_neg = cols.shape[1] - pos.shape[1]

  # Distances are translation invariant: centre each group on its generated rows first so that features
  # with a large common offset (transformer hidden states) keep their precision in the |x|^2 + |y|^2 - 2xy
  # expansion where it matters, near the generated points (far columns get no weight anyway).
  centre = jnp.mean(x, axis=1, keepdims=True)
  xc, cols_c = x - centre, cols - centre
  # The eps floor is relative to the features' spread so that rescaling them changes nothing.
  size2 = jnp.mean(jnp.sum(xc * xc, -1))
  # (1e-30 keeps it a normal float32 when every point coincides.)
  dist = pairwise_distance(xc, cols_c, jnp.maximum(config.eps * size2, 1e-30))  # (G, N, K)

  self_mask = None
  if config.include_generated_negatives:
    eye = jnp.eye(n, dtype=bool)
    self_mask = jnp.zeros(dist.shape, bool).at[:, :, :n].set(eye)
  if scale is None:
    w_full = jnp.broadcast_to(col_w[:, None, :], dist.shape)
    if self_mask is not None:
      w_full = jnp.where(self_mask, 0.0, w_full)
    scale = jnp.sum(dist * w_full) / jnp.maximum(jnp.sum(w_full), 1e-12)
  scale = jax.lax.stop_gradient(jnp.asarray(scale, jnp.float32))
  feat_scale = scale / jnp.sqrt(jnp.float32(c))  # s': normalized features have mean distance sqrt(C).

  dist_n = dist / feat_scale
  if self_mask is not None:
    dist_n = jnp.where(self_mask, dist_n + config.self_mask * jnp.sqrt(jnp.float32(c)), dist_n)
  unit = jnp.sqrt(jnp.float32(c)) if config.temperature_units == "mean_distance" else 1.0

  safe_w = jnp.maximum(col_w, 1e-30)
  log_w = jnp.where(col_w > 0, jnp.log(safe_w), -jnp.inf)
  xn, cols_n = xc / feat_scale, cols_c / feat_scale
  fields, raw_norms = [], []
  for temp in config.temperatures:
    logits = -dist_n / (temp * unit)
    w_neg, w_pos = _kernel(logits, log_w, n_neg, config.softmax)
    w_all = jnp.concatenate([-w_neg, w_pos], axis=-1)
    # V_R(x_i) = sum_k W_pos y_k - sum_k W_neg y_k - (sum W_pos - sum W_neg) x_i.
    v = jnp.einsum("gnk,gkc->gnc", w_all, cols_n) - jnp.sum(w_all, -1, keepdims=True) * xn
    raw = _rms(v)
    raw_norms.append(raw)
    if config.drift_norm == "per_temperature":
      v = v / jnp.maximum(raw, 1e-12)
    fields.append(v)
  v = sum(fields)
  aux = {"scale": scale, "raw_drift_norm": jnp.stack(raw_norms)}
  return jax.lax.stop_gradient(v), aux


def drift_loss(
  x: Array,
  pos: Array,
  neg: Array | None = None,
  pos_weights: Array | None = None,
  neg_weights: Array | None = None,
  *,
  config: FieldConfig = FieldConfig(),
  scale: Array | float | None = None,
) -> tuple[Array, dict[str, Any]]:
  """MSE between normalized generated features and their stop-gradient goal x/s' + V.

  The value equals mean(V^2); gradients flow only through x (never through V, s or the positives).
  Returns the scalar loss (mean over groups, rows and channels) and the field's diagnostics.
  """
  v, aux = drift_field(x, pos, neg, pos_weights, neg_weights, config=config, scale=scale)
  feat_scale = aux["scale"] / jnp.sqrt(jnp.float32(x.shape[-1]))
  xn = x.astype(jnp.float32) / feat_scale
  goal = jax.lax.stop_gradient(xn + v)
  loss = jnp.mean(jnp.square(xn - goal))
  return loss, aux
