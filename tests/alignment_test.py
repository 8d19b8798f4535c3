"""drift/alignment.py: the cheapest monotone alignment of a sample to a target row, and the matched
cross-entropy under it (drift.matched_ce_gap; its settings are checked in matched_test.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from driftjax import train_step
from driftjax.drift import alignment


def edit_distance(cost, gap):
  """The textbook recursion, one cell at a time."""
  n_i, n_j = cost.shape
  d = np.zeros((n_i + 1, n_j + 1))
  d[0], d[:, 0] = gap * np.arange(n_j + 1), gap * np.arange(n_i + 1)
  for i in range(1, n_i + 1):
    for j in range(1, n_j + 1):
      d[i, j] = min(d[i - 1, j - 1] + cost[i - 1, j - 1], d[i - 1, j] + gap, d[i, j - 1] + gap)
  return d[n_i, n_j]


def test_alignment_cost_is_the_edit_distance_of_the_costs():
  cost = np.random.default_rng(0).uniform(0, 5, (3, 2, 6, 7)).astype(np.float32)
  for gap in (0.5, 1.5, 10.0):
    got = np.asarray(alignment.alignment_cost(jnp.asarray(cost), gap))
    want = [[edit_distance(cost[a, b], gap) for b in range(2)] for a in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_gradient_marks_the_cheapest_alignment():
  # Target i is cheapest at position i + 1 (the sample says it one token late): the path skips position 0 and
  # the last target; a gap of 1 costs less than the diagonal's 5 per position.
  cost = np.full((4, 4), 5.0, np.float32)
  for i in range(3):
    cost[i, i + 1] = 0.0
  value, grad = jax.value_and_grad(lambda c: alignment.alignment_cost(c, 1.0))(jnp.asarray(cost))
  np.testing.assert_allclose(float(value), 2.0)  # Two gaps, three free pairs.
  expected = np.zeros((4, 4))
  expected[[0, 1, 2], [1, 2, 3]] = 1.0
  np.testing.assert_array_equal(np.asarray(grad), expected)
  # With gaps dearer than the diagonal, the diagonal: position by position.
  np.testing.assert_allclose(float(alignment.alignment_cost(jnp.asarray(cost), 100.0)), 20.0)


def test_aligned_cross_entropy_forgives_a_shift_that_the_position_wise_one_punishes():
  # A confident sample that says target row 0 one token late (a new token first, the row's last token dropped).
  vocab, length = 6, 5
  row = jnp.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]])
  said = jnp.array([0, 1, 2, 3, 4])
  logits = 8.0 * jax.nn.one_hot(said, vocab)[None]
  logp = jax.nn.log_softmax(logits, -1)
  per_position = -np.mean(np.asarray(logp[0])[np.arange(length)[None], np.asarray(row)], axis=1)  # (2,)
  aligned = np.asarray(alignment.aligned_cross_entropy(logits, row, gap=2.0))[0]
  assert aligned[0] < 0.25 * per_position[0]  # Two gaps and four right tokens against five wrong ones.
  np.testing.assert_allclose(aligned[0], (2 * 2.0 - 4 * float(logp[0, 0, 0])) / length, rtol=1e-5)
  # The same rows position by position when gaps cost more than any shift saves.
  np.testing.assert_allclose(
    np.asarray(alignment.aligned_cross_entropy(logits, row, 100.0))[0], per_position, rtol=1e-5
  )


def test_matched_cross_entropy_with_a_gap_matches_and_pulls_the_aligned_tokens():
  vocab = 6
  real = jnp.array([[1, 2, 3, 4, 5], [3, 3, 3, 3, 3], [5, 4, 3, 2, 1]])
  # Sample 0 says row 0 one token late; sample 1 says row 2 exactly.
  said = jnp.array([[0, 1, 2, 3, 4], [5, 4, 3, 2, 1]])
  logits = 6.0 * jax.nn.one_hot(said, vocab)
  _, plain, _ = train_step.matched_cross_entropy(logits, real)
  value, match, _ = train_step.matched_cross_entropy(logits, real, gap=2.0)
  np.testing.assert_array_equal(match, [0, 2])
  # Position by position, sample 0 shares a token with row 1 (at position 3) and none with row 0: it gets row 1.
  assert int(plain[0]) == 1
  grad = jax.grad(lambda z: train_step.matched_cross_entropy(z, real, gap=2.0)[0])(logits)
  # Sample 0's positions 1..4 are pulled toward row 0's tokens 0..3 (the token they already say): a negative
  # gradient on that logit; position 0, aligned to nothing, gets no gradient at all.
  np.testing.assert_array_equal(np.asarray(grad[0, 0]), 0.0)
  for j in range(1, 5):
    assert float(grad[0, j, int(real[0, j - 1])]) < 0
  expected = np.mean(np.asarray(alignment.aligned_cross_entropy(logits, real, 2.0))[[0, 1], [0, 2]])
  np.testing.assert_allclose(float(value), expected, rtol=1e-6)
