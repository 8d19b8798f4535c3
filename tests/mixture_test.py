"""train_step.mixture_cross_entropy: real tokens under the batch's mixture of the head's distributions (coverage)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_test import tiny_config

from driftjax import train_state
from driftjax import train_step

# Two samples, two positions, three tokens.
PROBS = np.array([[[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]], [[0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])
REAL = jnp.array([[0, 2], [1, 1], [2, 0]])


def test_value_is_the_real_tokens_cross_entropy_under_the_batch_mixture():
  q = PROBS.mean(0)  # Position 0: (0.4, 0.5, 0.1); position 1: (0.35, 0.225, 0.425).
  expected = -np.mean([np.log(q[t, REAL[r, t]]) for r in range(3) for t in range(2)])
  value = train_step.mixture_cross_entropy(jnp.log(PROBS), REAL, smoothing=0.0)
  np.testing.assert_allclose(float(value), expected, rtol=1e-6)
  first = train_step.mixture_cross_entropy(jnp.log(PROBS), REAL, positions=1, smoothing=0.0)
  np.testing.assert_allclose(float(first), -np.mean(np.log(q[0, [0, 1, 2]])), rtol=1e-6)
  # Smoothing bounds a token that no sample offers: log(V / smoothing), not infinity.
  none = train_step.mixture_cross_entropy(jnp.log(jnp.array([[[1.0, 1e-30, 1e-30]]])), jnp.array([[2]]), smoothing=1e-4)
  np.testing.assert_allclose(float(none), np.log(3 / 1e-4), rtol=1e-4)


def test_a_spread_batch_costs_less_than_a_collapsed_one():
  real = jnp.array([[0], [1], [2], [0]])
  spread = jnp.log(jnp.array([[[0.98, 0.01, 0.01]], [[0.01, 0.98, 0.01]], [[0.01, 0.01, 0.98]], [[0.98, 0.01, 0.01]]]))
  collapsed = jnp.log(jnp.array([[[0.98, 0.01, 0.01]]] * 4))
  assert train_step.mixture_cross_entropy(spread, real) < train_step.mixture_cross_entropy(collapsed, real) - 1.0


def test_gradient_credits_each_sample_by_its_share_of_the_real_token():
  logits = jnp.log(jnp.asarray(PROBS))
  grad = np.asarray(jax.grad(train_step.mixture_cross_entropy)(logits, REAL, 0, 0.0))
  q = PROBS.mean(0)
  expected = np.zeros_like(PROBS)
  for b in range(2):
    for r in range(3):
      for t in range(2):
        x = REAL[r, t]
        onehot = np.eye(3)[x]
        # d(-log q_t(x)) / d logits[b, t] = -(p_b(x) / (B q_t(x))) (onehot(x) - p_b): the sample that offers x
        # more is pushed toward it more; none is pulled to the marginal.
        expected[b, t] -= PROBS[b, t, x] / (2 * q[t, x]) * (onehot - PROBS[b, t]) / 6
  np.testing.assert_allclose(grad, expected, atol=1e-6)


@pytest.mark.parametrize(
  "head, weight, positions, match",
  [
    ("embedding", 0.5, 0, "mixture_ce_weight"),
    ("vocab", -1.0, 0, "mixture_ce_weight"),
    ("vocab", 0.5, -1, "mixture_ce_positions"),
    ("vocab", 0.5, 10_000, "mixture_ce_positions"),
  ],
)
def test_mixture_settings_are_checked(head, weight, positions, match):
  config = tiny_config()
  config.model.head = head
  config.drift.mixture_ce_weight = weight
  config.drift.mixture_ce_positions = positions
  with pytest.raises(ValueError, match=match):
    train_state.step_config(config, 64, 100)
