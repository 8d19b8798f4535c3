"""train_step.matched_cross_entropy: each sample toward one real story, matched one to one (coverage)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_test import tiny_config

from driftjax import train_state
from driftjax import train_step


def test_greedy_assignment_is_one_to_one_and_takes_the_cheapest_pairs_first():
  cost = jnp.array([[1.0, 2.0, 9.0], [0.5, 8.0, 9.0]])
  # The cheapest pair is (1, 0); row 0 then takes column 1, its cheapest remaining one.
  np.testing.assert_array_equal(train_step.greedy_assignment(cost), [1, 0])
  # Both rows prefer column 0: only one gets it.
  cols = np.asarray(train_step.greedy_assignment(jnp.array([[0.0, 5.0, 1.0], [0.1, 0.2, 7.0]])))
  np.testing.assert_array_equal(cols, [0, 1])
  many = np.asarray(train_step.greedy_assignment(jax.random.normal(jax.random.key(0), (16, 20))))
  assert len(set(many.tolist())) == 16
  with pytest.raises(ValueError, match="at least as many columns"):
    train_step.greedy_assignment(jnp.zeros((3, 2)))


def test_each_sample_gets_the_real_row_it_is_nearest_and_no_two_share_one():
  # Three tokens, two positions. Sample 0 prefers real row 2 ("2 2"), sample 1 real row 0 ("0 1"); sample 2 also
  # prefers row 2 but less than sample 0 does, so it gets its second choice.
  probs = np.full((3, 2, 3), 0.05)
  probs[0, :, 2] = 0.9
  probs[1, 0, 0] = probs[1, 1, 1] = 0.9
  probs[2, :, 2] = 0.6
  probs[2, :, 1] = 0.35
  probs /= probs.sum(-1, keepdims=True)
  real = jnp.array([[0, 1], [1, 1], [2, 2], [0, 0]])
  value, match = train_step.matched_cross_entropy(jnp.log(jnp.asarray(probs)), real)
  np.testing.assert_array_equal(match, [2, 0, 1])
  expected = -np.mean([np.log(probs[b, t, real[m, t]]) for b, m in enumerate([2, 0, 1]) for t in range(2)])
  np.testing.assert_allclose(float(value), expected, rtol=1e-6)
  # The first position only: sample 2's first token is 2 with 0.6 but row 2 is sample 0's (0.9); row 1 ("1")
  # costs it less than rows 0 or 3 ("0").
  first, match1 = train_step.matched_cross_entropy(jnp.log(jnp.asarray(probs)), real, positions=1)
  np.testing.assert_array_equal(match1, [2, 0, 1])
  np.testing.assert_allclose(
    float(first), -np.mean(np.log([probs[0, 0, 2], probs[1, 0, 0], probs[2, 0, 1]])), rtol=1e-6
  )


def test_gradient_is_the_cross_entropy_toward_the_match_with_the_matching_held_fixed():
  logits = jax.random.normal(jax.random.key(1), (4, 3, 5))
  real = jax.random.randint(jax.random.key(2), (6, 3), 0, 5)
  _, match = train_step.matched_cross_entropy(logits, real)
  grad = jax.grad(lambda z: train_step.matched_cross_entropy(z, real)[0])(logits)
  p = jax.nn.softmax(logits, -1)
  expected = (p - jax.nn.one_hot(real[match], 5)) / (4 * 3)
  np.testing.assert_allclose(grad, expected, atol=1e-6)


@pytest.mark.parametrize(
  "head, weight, positions, n_pos, match",
  [
    ("embedding", 0.5, 0, None, "matched_ce_weight"),
    ("vocab", -1.0, 0, None, "matched_ce_weight"),
    ("vocab", 0.5, 0, 1, "n_pos >= data.n_gen"),
    ("vocab", 0.5, -1, None, "matched_ce_positions"),
    ("vocab", 0.5, 10_000, None, "matched_ce_positions"),
  ],
)
def test_matched_settings_are_checked(head, weight, positions, n_pos, match):
  config = tiny_config()
  config.model.head = head
  config.drift.matched_ce_weight = weight
  config.drift.matched_ce_positions = positions
  if n_pos is not None:
    config.data.n_pos = n_pos
  with pytest.raises(ValueError, match=match):
    train_state.step_config(config, 64, 100)
