"""losses.own_positive_losses: each sample is drawn to its own positives only (continuation positives, issue 14)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_test import tiny_config

from driftjax import train_state
from driftjax import train_step
from driftjax.drift import field as field_lib
from driftjax.drift import losses


def _step(x, pos, kernel):
  """-grad of the loss at each sample: the direction the sample moves."""
  cfg = field_lib.FieldConfig()

  def loss(x):
    gen = {"f": x[:, None, :]}
    if kernel == "own":
      return losses.own_positive_losses(gen, {"f": pos[:, None, :]}, 1, cfg)[0]
    return losses.drift_losses(gen, {"f": pos[:, None, :]}, jnp.ones((1, pos.shape[0])), 1, cfg)[0]

  return -np.asarray(jax.grad(loss)(x))


def test_each_sample_moves_toward_its_own_positive_not_the_nearest_one():
  x = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, -6.0]])
  # One positive per sample (M = 1, sample-major): sample 0's is far above it; sample 1's lies right next to
  # sample 0, so in the shared ("batch") kernel sample 0 hardly feels its own.
  pos = jnp.array([[0.0, 5.0], [0.2, 0.0], [0.0, -7.0]])
  own, shared = _step(x, pos, "own"), _step(x, pos, "batch")
  cos = lambda v, d: float(v @ d / np.linalg.norm(v) / np.linalg.norm(d))
  assert cos(own[0], np.array([0.0, 1.0])) > 0.9, own[0]
  assert cos(shared[0], np.array([0.0, 1.0])) < 0.5, shared[0]


def test_groups_and_metrics_per_key():
  x = jax.random.normal(jax.random.key(0), (4, 3, 8))  # 2 groups of 2 samples, 3 pooled indices.
  pos = jax.random.normal(jax.random.key(1), (8, 3, 8))  # M = 2 per sample.
  loss, metrics = losses.own_positive_losses({"a": x, "b": 2 * x}, {"a": pos, "b": 2 * pos}, 2, field_lib.FieldConfig())
  assert np.isfinite(loss) and set(metrics) >= {"loss/a", "loss/b", "scale/a", "raw_drift_norm/a/T0.02"}


def test_positive_settings_are_checked():
  ok = tiny_config()
  ok.drift.positives = "data+teacher+continuation"
  assert train_state.step_config(ok, 64, 100).uses_continuation
  for key, value, match in (
    ("positives", "data+data", "positives"),
    ("positives", "data+queue", "positives"),
    ("continuation_policy", "greedy", "continuation_policy"),
    ("continuation_kernel", "pooled", "continuation_kernel"),
    ("continuation_coupling", "pairs", "continuation_coupling"),
    ("continuation_temperature", -1.0, "continuation_temperature"),
    ("teacher_min_ratio", 1.5, "teacher_min_ratio"),
    ("continuation_repeat_penalty", -1.0, "continuation_repeat_penalty"),
    ("continuation_repeat_window", 4, "continuation_repeat_window"),  # A window without a penalty.
  ):
    config = tiny_config()
    config.drift.positives = "data+continuation"
    config.drift[key] = value
    with pytest.raises(ValueError, match=match):
      train_state.step_config(config, 64, 100)


def test_noise_coupling_needs_a_sequential_policy():
  config = tiny_config()
  config.drift.positives = "continuation"
  config.drift.continuation_coupling = "noise"
  config.drift.continuation_policy = "resample"
  with pytest.raises(ValueError, match="sequential policy"):
    train_state.step_config(config, 64, 100)


def test_the_repeat_penalty_needs_sequential_continuations():
  config = tiny_config()
  config.drift.positives = "continuation"
  config.drift.continuation_policy = "repair"
  config.drift.continuation_repeat_penalty, config.drift.continuation_repeat_window = 1.0, 8
  step = train_state.step_config(config, 64, 100)
  assert (step.continuation_repeat_penalty, step.continuation_repeat_window) == (1.0, 8)
  for positives, policy in (("continuation", "resample"), ("data", "repair")):
    config.drift.positives, config.drift.continuation_policy = positives, policy
    with pytest.raises(ValueError, match="sequential continuations"):
      train_state.step_config(config, 64, 100)


def test_noise_coupling_does_not_take_a_slotted_layout():
  config = tiny_config()
  config.drift.positives = "continuation"
  config.drift.continuation_policy = "repair"
  config.drift.continuation_coupling = "noise"
  config.model.head = "vocab"
  config.model.layout_multiple = 8
  config.model.layout_positions = 2 * config.model.seq_len
  with pytest.raises(ValueError, match="layout_multiple"):
    train_state.step_config(config, 64, 100, sentence_ends=(3,))
  config.drift.continuation_coupling = "none"  # The same settings without the coupling are accepted.
  assert train_state.step_config(config, 64, 100, sentence_ends=(3,)).gen.layout_multiple == 8


@pytest.mark.parametrize("policy, coupling", [("resample", "none"), ("repair", "noise")])
def test_a_draw_temperature_needs_independent_sequential_draws(policy, coupling):
  config = tiny_config()
  config.drift.positives = "continuation"
  config.drift.continuation_policy = policy
  config.drift.continuation_coupling = coupling
  config.drift.continuation_temperature = 0.0
  with pytest.raises(ValueError, match="independent sequential draws"):
    train_state.step_config(config, 64, 100)


def test_continuation_cross_entropy_averages_each_samples_own_draws():
  logits = jnp.array([[[2.0, 0.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]], [[1.0, 3.0, 0.0, -2.0], [0.5, -0.5, 2.0, 1.0]]])
  # Two draws per sample, grouped by sample: rows 0-1 are sample 0's, rows 2-3 sample 1's.
  targets = jnp.array([[0, 3], [2, 3], [1, 1], [1, 2]])
  logp = np.log(np.asarray(jax.nn.softmax(logits, -1)))
  expected = -np.mean([logp[r // 2, t, targets[r, t]] for r in range(4) for t in range(2)])
  ce = train_step.continuation_cross_entropy(logits, targets, 2)
  np.testing.assert_allclose(float(ce), expected, rtol=1e-6)
  # The gradient pulls each logit toward the share of the sample's draws that chose its token, at any probability:
  # sample 0's token 2 at position 0 (one draw of two) gets -1/2 + p, whatever p.
  grad = jax.grad(train_step.continuation_cross_entropy)(logits, targets, 2)
  share = np.zeros((2, 2, 4))
  for r in range(4):
    for t in range(2):
      share[r // 2, t, targets[r, t]] += 0.5
  np.testing.assert_allclose(np.asarray(grad), (np.asarray(jax.nn.softmax(logits, -1)) - share) / 4, atol=1e-6)


@pytest.mark.parametrize(
  "positives, head, weight, start, match",
  [
    ("data", "vocab", 0.5, 0, "continuation_ce_weight"),
    ("continuation", "embedding", 0.5, 0, "continuation_ce_weight"),
    ("continuation", "vocab", -1.0, 0, "continuation_ce_weight"),
    ("continuation", "vocab", 0.0, 100, "continuation_ce_start"),
    ("continuation", "vocab", 0.5, -1, "continuation_ce_start"),
  ],
)
def test_continuation_cross_entropy_needs_continuations_and_a_vocab_head(positives, head, weight, start, match):
  config = tiny_config()
  config.drift.positives = positives
  config.model.head = head
  config.drift.continuation_ce_weight = weight
  config.drift.continuation_ce_start = start
  with pytest.raises(ValueError, match=match):
    train_state.step_config(config, 64, 100)
