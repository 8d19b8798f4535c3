"""Properties of the drifting field and loss (docs/method.md section 2), jitted and not."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from driftjax.drift import field

NO_GEN = field.FieldConfig(include_generated_negatives=False)


def _normal(seed, shape, shift=0.0):
  return jax.random.normal(jax.random.key(seed), shape) + shift


def _field(x, pos, neg=None, jit=False, **kw):
  fn = lambda *a: field.drift_field(*a, **kw)
  return (jax.jit(fn) if jit else fn)(x, pos, neg)


def reference_field(x, pos, neg, temps, include_gen=True):
  """Plain numpy restatement of docs/method.md section 2 for one group, self columns dropped outright."""
  x, pos = np.asarray(x, np.float64), np.asarray(pos, np.float64)
  n, c = x.shape
  negs = ([x] if include_gen else []) + ([np.asarray(neg, np.float64)] if neg is not None else [])
  cols = np.concatenate(negs + [pos])
  n_neg = len(cols) - len(pos)
  d = np.linalg.norm(x[:, None] - cols[None], axis=-1)
  valid = np.ones_like(d, bool)
  if include_gen:
    valid[np.arange(n), np.arange(n)] = False
  s = d[valid].mean()
  sp = s / np.sqrt(c)
  xn, yn = x / sp, cols / sp
  total = 0
  for t in temps:
    logit = np.where(valid, -d / s / t, -np.inf)
    rows = np.exp(logit - logit.max(1, keepdims=True))
    rows /= rows.sum(1, keepdims=True)
    colsm = np.exp(logit - logit.max(0, keepdims=True))
    colsm /= colsm.sum(0, keepdims=True)
    a = np.sqrt(rows * colsm)
    a_neg, a_pos = a[:, :n_neg], a[:, n_neg:]
    w_pos = a_pos * a_neg.sum(1, keepdims=True)
    w_neg = a_neg * a_pos.sum(1, keepdims=True)
    v = w_pos @ yn[n_neg:] - w_neg @ yn[:n_neg] - (w_pos.sum(1) - w_neg.sum(1))[:, None] * xn
    total = total + v / np.sqrt(np.mean(v**2))
  return total, s


@pytest.mark.parametrize("jit", [False, True])
def test_shapes_and_diagnostics(jit):
  x, pos, neg = _normal(0, (3, 8, 5)), _normal(1, (3, 6, 5)), _normal(2, (3, 4, 5))
  v, aux = _field(x, pos, neg, jit=jit)
  chex.assert_shape(v, (3, 8, 5))
  chex.assert_shape(aux["raw_drift_norm"], (3,))
  chex.assert_shape(aux["scale"], ())
  chex.assert_tree_all_finite((v, aux))
  # Each temperature's field is normalized to unit RMS, so the sum has RMS at most len(temperatures).
  assert 0.5 < float(jnp.sqrt(jnp.mean(v**2))) <= 3.0 + 1e-5


@pytest.mark.parametrize("jit", [False, True])
def test_matches_numpy_reference(jit):
  x, pos = _normal(0, (1, 7, 3)), _normal(1, (1, 9, 3), 0.5)
  v, aux = _field(x, pos, jit=jit)
  ref, s = reference_field(x[0], pos[0], None, (0.02, 0.05, 0.2))
  np.testing.assert_allclose(float(aux["scale"]), s, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(v[0]), ref, atol=1e-4)


@pytest.mark.parametrize("jit", [False, True])
def test_anti_symmetry(jit):
  x, p, q = _normal(0, (2, 8, 4)), _normal(1, (2, 10, 4), 1.0), _normal(2, (2, 10, 4), -1.0)
  v_pq, _ = _field(x, p, q, jit=jit, config=NO_GEN)
  v_qp, _ = _field(x, q, p, jit=jit, config=NO_GEN)
  chex.assert_trees_all_close(v_pq, -v_qp, atol=1e-5)
  assert float(jnp.abs(v_pq).max()) > 0.1  # Not trivially zero.


@pytest.mark.parametrize("jit", [False, True])
def test_zero_at_equilibrium(jit):
  x, p = _normal(0, (2, 8, 4)), _normal(1, (2, 12, 4))
  v, aux = _field(x, p, p, jit=jit, config=field.FieldConfig(include_generated_negatives=False, drift_norm="none"))
  chex.assert_trees_all_close(v, jnp.zeros_like(v), atol=1e-6)
  chex.assert_trees_all_close(aux["raw_drift_norm"], jnp.zeros(3), atol=1e-6)


def test_multi_temperature_is_sum_of_single_normalized_fields():
  x, pos, neg = _normal(0, (2, 8, 4)), _normal(1, (2, 10, 4), 0.7), _normal(2, (2, 3, 4))
  temps = (0.02, 0.05, 0.2)
  v, _ = _field(x, pos, neg, config=field.FieldConfig(temperatures=temps))
  parts = [_field(x, pos, neg, config=field.FieldConfig(temperatures=(t,)))[0] for t in temps]
  chex.assert_trees_all_close(v, sum(parts), atol=1e-5)
  for part in parts:
    np.testing.assert_allclose(float(jnp.mean(part**2)), 1.0, rtol=1e-4)


@pytest.mark.parametrize("factor", [1e-3, 7.0, 1e3])
def test_invariant_to_global_rescale(factor):
  x, pos = _normal(0, (2, 8, 4)), _normal(1, (2, 10, 4), 0.3)
  loss, aux = field.drift_loss(x, pos)
  loss_s, aux_s = field.drift_loss(x * factor, pos * factor)
  v, _ = _field(x, pos)
  v_s, _ = _field(x * factor, pos * factor)
  chex.assert_trees_all_close(v, v_s, atol=1e-4)
  np.testing.assert_allclose(float(loss), float(loss_s), rtol=1e-4)
  np.testing.assert_allclose(float(aux_s["scale"]), float(aux["scale"]) * factor, rtol=1e-4)


def test_permutation_equivariant_within_group():
  x, pos, neg = _normal(0, (2, 9, 4)), _normal(1, (2, 11, 4), 0.5), _normal(2, (2, 5, 4))
  perm_x = jax.random.permutation(jax.random.key(3), 9)
  perm_p = jax.random.permutation(jax.random.key(4), 11)
  v, _ = _field(x, pos, neg)
  v_perm, _ = _field(x[:, perm_x], pos[:, perm_p], neg[:, ::-1])
  chex.assert_trees_all_close(v[:, perm_x], v_perm, atol=1e-5)


@pytest.mark.parametrize("softmax", field.SOFTMAX_MODES)
def test_no_nan_with_duplicates_and_zero_distances(softmax):
  x = jnp.ones((1, 6, 3)).at[0, 3:].set(2.0)  # Duplicated generated points.
  pos = jnp.concatenate([x, x], axis=1)  # Positives exactly on the generated points.
  cfg = field.FieldConfig(softmax=softmax)
  v, aux = _field(x, pos, config=cfg)
  grad = jax.grad(lambda a: field.drift_loss(a, pos, config=cfg)[0])(x)
  chex.assert_tree_all_finite((v, aux, grad))
  # All points identical: every distance is zero.
  same = jnp.zeros((1, 4, 3))
  chex.assert_tree_all_finite(jax.grad(lambda a: field.drift_loss(a, same, config=cfg)[0])(same))


@pytest.mark.parametrize("softmax", field.SOFTMAX_MODES)
def test_a_zero_weight_column_far_nearer_than_the_others_changes_nothing(softmax):
  """A weight-0 column on the generated point (the own kernel's masked self, an empty queue slot) in a group whose
  weighted columns are all far, at the scale (shared by all groups) of groups whose columns are near: at the
  sharpest temperature its kernel entry was exp(hundreds) = inf, and inf * 0 = NaN (found in session 7: a
  generator's parameters turned NaN mid-run). It must act as absent."""
  x = _normal(0, (8, 1, 16))
  offset = jnp.array([0.01] * 7 + [10.0])[:, None, None]  # Groups 0-6: near columns; group 7: far ones.
  pos, neg = x + offset * _normal(1, (8, 1, 16)), x + offset * _normal(2, (8, 3, 16))
  cfg = field.FieldConfig(softmax=softmax, include_generated_negatives=False)
  with_masked, _ = field.drift_field(
    x, pos, jnp.concatenate([neg, x], 1), neg_weights=jnp.array([[1.0, 1.0, 1.0, 0.0]] * 8), config=cfg
  )
  without, _ = field.drift_field(x, pos, neg, config=cfg)
  chex.assert_tree_all_finite(with_masked)
  # The scale (a weighted mean of distances) ignores the column too, so the two fields are the same.
  chex.assert_trees_all_close(with_masked, without, atol=1e-5)


def test_split_softmax_is_the_mean_shift_difference():
  """softmax='split': V = sum_k softmax_pos(-d/T)_k y_k - sum_k softmax_neg(-d/T)_k y_k, each side over its own
  columns (numpy restatement, one temperature, no normalization, extra negatives only)."""
  x, pos, neg = _normal(0, (1, 5, 3)), _normal(1, (1, 7, 3), 0.5), _normal(2, (1, 4, 3))
  t = 0.5
  cfg = field.FieldConfig(softmax="split", temperatures=(t,), drift_norm="none", include_generated_negatives=False)
  v, aux = field.drift_field(x, pos, neg, config=cfg)
  xs, ps, ns = (np.asarray(a[0], np.float64) for a in (x, pos, neg))
  s = float(aux["scale"])
  sp = s / np.sqrt(3)

  def mean_shift(cols):
    logit = -np.linalg.norm(xs[:, None] - cols[None], axis=-1) / (s * t)
    w = np.exp(logit - logit.max(1, keepdims=True))
    return (w / w.sum(1, keepdims=True)) @ (cols / sp)

  np.testing.assert_allclose(np.asarray(v[0]), mean_shift(ps) - mean_shift(ns), atol=1e-4)


@pytest.mark.parametrize("temperature, joint_share", [(0.02, 1e-3), (0.2, 0.1)])
def test_split_softmax_keeps_attraction_when_the_negatives_coincide_with_the_sample(temperature, joint_share):
  """Collapsed samples: every negative sits on the generated point, the positives far away. The joint softmax
  (the paper's) gives the row Z_pos Z_neg / (Z_pos + Z_neg)^2 of its field, about exp(-d / T) here; split keeps
  the full pull toward the positives' kernel mean."""
  x = _normal(0, (2, 1, 8))
  neg = jnp.repeat(x, 5, axis=1)
  near = x + 0.01 * _normal(3, (2, 4, 8))
  pos = jnp.concatenate([x[:1] + 3.0 + _normal(1, (1, 4, 8)), near[1:]])
  neg = jnp.concatenate([neg[:1], x[1:] + 3.0 + _normal(2, (1, 5, 8))])  # Group 1: the mirror case, for the scale.
  kw = dict(temperatures=(temperature,), drift_norm="none", include_generated_negatives=False)
  v_split, aux = field.drift_field(x, pos, neg, config=field.FieldConfig(softmax="split", **kw))
  v_joint, _ = field.drift_field(x, pos, neg, config=field.FieldConfig(**kw))
  sp = aux["scale"] / jnp.sqrt(8.0)
  pull = jnp.linalg.norm(jnp.mean(pos[0], 0) - x[0, 0]) / sp  # Far positives: about their mean's distance.
  assert float(jnp.linalg.norm(v_split[0, 0])) > 0.5 * float(pull)
  assert float(jnp.linalg.norm(v_joint[0, 0])) < joint_share * float(pull)


def test_self_mask_excludes_self_interaction():
  x, pos = _normal(0, (1, 6, 2)), _normal(1, (1, 8, 2), 0.5)
  v, _ = _field(x, pos)
  ref, _ = reference_field(x[0], pos[0], None, (0.02, 0.05, 0.2))  # Self columns dropped.
  np.testing.assert_allclose(np.asarray(v[0]), ref, atol=1e-4)
  v_nomask, _ = _field(x, pos, config=field.FieldConfig(self_mask=0.0))
  assert float(jnp.abs(v_nomask - v).max()) > 1e-2  # The mask matters, so the check above has teeth.


def test_far_positives_do_not_change_field_at_fixed_scale():
  x, pos = _normal(0, (1, 64, 8)), _normal(1, (1, 64, 8), 0.3)
  far = _normal(2, (1, 1000, 8)) + 1e3
  v, aux = _field(x, pos)
  v_far, _ = field.drift_field(x, jnp.concatenate([pos, far], 1), scale=aux["scale"])
  rel = float(jnp.linalg.norm(v_far - v) / jnp.linalg.norm(v))
  assert rel < 1e-4
  # The authors' clipped floor lets the far columns dominate: the check above can fail.
  cfg = field.FieldConfig(softmax="double_floor")
  v_c, aux_c = _field(x, pos, config=cfg)
  v_c_far, _ = field.drift_field(x, jnp.concatenate([pos, far], 1), config=cfg, scale=aux_c["scale"])
  assert float(jnp.linalg.norm(v_c_far - v_c) / jnp.linalg.norm(v_c)) > 0.1


def test_gradients_reach_only_generated():
  x, pos, neg = _normal(0, (2, 8, 4)), _normal(1, (2, 10, 4), 0.5), _normal(2, (2, 3, 4))
  gx, gp, gn = jax.grad(lambda a, b, c: field.drift_loss(a, b, c)[0], argnums=(0, 1, 2))(x, pos, neg)
  assert float(jnp.abs(gx).max()) > 1e-3
  chex.assert_trees_all_close(gp, jnp.zeros_like(gp))
  chex.assert_trees_all_close(gn, jnp.zeros_like(gn))


def test_loss_value_and_gradient_are_the_field():
  x, pos = _normal(0, (2, 8, 4)), _normal(1, (2, 10, 4), 0.5)
  loss, aux = field.drift_loss(x, pos)
  v, _ = _field(x, pos)
  np.testing.assert_allclose(float(loss), float(jnp.mean(v**2)), rtol=1e-5)
  # d loss / d x = -2 V / (s' * numel): descending the loss moves x along V.
  grad = jax.grad(lambda a: field.drift_loss(a, pos)[0])(x)
  s_prime = aux["scale"] / 2.0  # sqrt(C) = 2.
  chex.assert_trees_all_close(grad, -2 * v / s_prime / v.size, atol=1e-6)


def test_integer_column_weight_equals_duplicated_columns():
  x, pos = _normal(0, (1, 6, 3)), _normal(1, (1, 5, 3), 0.4)
  w = jnp.array([[1.0, 2.0, 1.0, 3.0, 1.0]])
  v_w, aux_w = field.drift_field(x, pos, pos_weights=w)
  dup = jnp.concatenate([pos, pos[:, 1:2], pos[:, 3:4], pos[:, 3:4]], axis=1)
  v_d, aux_d = field.drift_field(x, dup)
  chex.assert_trees_all_close(v_w, v_d, atol=1e-5)
  np.testing.assert_allclose(float(aux_w["scale"]), float(aux_d["scale"]), rtol=1e-6)


@pytest.mark.parametrize("softmax", field.SOFTMAX_MODES)
@pytest.mark.parametrize("norm", field.DRIFT_NORMS)
def test_ablation_variants_run_and_differ(softmax, norm):
  x, pos = _normal(0, (2, 8, 4)), _normal(1, (2, 10, 4), 0.5)
  cfg = field.FieldConfig(softmax=softmax, drift_norm=norm)
  v, aux = jax.jit(lambda a, b: field.drift_field(a, b, config=cfg))(x, pos)
  chex.assert_shape(v, x.shape)
  chex.assert_tree_all_finite((v, aux))
  if (softmax, norm) != ("double", "per_temperature"):
    assert float(jnp.abs(v - _field(x, pos)[0]).max()) > 1e-3


def test_temperature_units_switch():
  x, pos = _normal(0, (1, 8, 16)), _normal(1, (1, 8, 16), 0.5)
  v_paper, _ = _field(x, pos, config=field.FieldConfig(temperatures=(0.05,)))
  v_port, _ = _field(x, pos, config=field.FieldConfig(temperatures=(0.05,), temperature_units="feature"))
  # 'feature' units equal 'mean_distance' units at R * sqrt(C).
  v_equiv, _ = _field(x, pos, config=field.FieldConfig(temperatures=(0.05 / 4.0,)))
  chex.assert_trees_all_close(v_port, v_equiv, atol=1e-5)
  assert float(jnp.abs(v_port - v_paper).max()) > 1e-2


@pytest.mark.parametrize(
  "shapes, match",
  [
    (((8, 4), (2, 10, 4)), r"generated features must be \(G, N, C\), got shape \(8, 4\)"),
    (((2, 8, 4), (2, 10, 5)), r"positives must be \(G, M, C\) = \(2, M, 4\) .* got \(2, 10, 5\)"),
    (((2, 8, 4), (3, 10, 4)), r"positives must be .* got \(3, 10, 4\)"),
    (((2, 8, 4), (10, 4)), r"positives must be .* got \(10, 4\)"),
  ],
)
def test_bad_shapes_raise_naming_shapes(shapes, match):
  x_shape, p_shape = shapes
  with pytest.raises(ValueError, match=match):
    field.drift_field(jnp.zeros(x_shape), jnp.zeros(p_shape))


def test_bad_config_and_weights_raise():
  with pytest.raises(ValueError, match="softmax='bogus'"):
    field.FieldConfig(softmax="bogus")
  with pytest.raises(ValueError, match=r"pos_weights must be \(G, M\) = \(2, 10\), got \(2, 9\)"):
    field.drift_field(jnp.zeros((2, 8, 4)), jnp.zeros((2, 10, 4)), pos_weights=jnp.ones((2, 9)))
  with pytest.raises(ValueError, match="needs extra negatives"):
    field.drift_field(jnp.zeros((2, 8, 4)), jnp.zeros((2, 10, 4)), config=NO_GEN)


def test_config_from_settings():
  cfg = field.FieldConfig.from_settings({"temperatures": [0.1, 0.3], "softmax": "cols", "unrelated": 1})
  assert cfg == field.FieldConfig(temperatures=(0.1, 0.3), softmax="cols")
