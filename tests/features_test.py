"""Poolings of hidden states (docs/method.md section 3) on hand-computed examples."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from driftjax.drift import features

# One sample, 8 positions, 2 channels: channel 0 counts 0..7, channel 1 is constant 3.
H = jnp.stack([jnp.arange(8.0), jnp.full((8,), 3.0)], -1)[None]


def test_global_mean_std_rms_by_hand():
  chex.assert_trees_all_close(features.global_mean(H), jnp.array([[[3.5, 3.0]]]))
  # Population std of 0..7 is sqrt(5.25); a constant channel has (almost) zero std.
  chex.assert_trees_all_close(features.global_std(H), jnp.array([[[np.sqrt(5.25), 1e-6]]]), atol=1e-5)
  chex.assert_trees_all_close(features.channel_rms(H), jnp.array([[[np.sqrt(17.5), 3.0]]]), atol=1e-5)


def test_windows_by_hand():
  chex.assert_trees_all_close(features.window_mean(H, window=4), jnp.array([[[1.5, 3.0], [5.5, 3.0]]]))
  std4 = np.sqrt(1.25)  # Population std of 4 consecutive integers.
  chex.assert_trees_all_close(features.window_std(H, window=4)[..., 0], jnp.array([[std4, std4]]), atol=1e-6)
  h16 = jnp.arange(32.0).reshape(1, 32, 1)
  chex.assert_shape(features.window_mean(h16, window=16), (1, 2, 1))
  chex.assert_trees_all_close(features.window_mean(h16, window=16)[0, :, 0], jnp.array([7.5, 23.5]))


def test_mask_restricts_statistics():
  mask = jnp.array([[1, 1, 1, 1, 0, 0, 0, 0]])
  chex.assert_trees_all_close(features.global_mean(H, mask), jnp.array([[[1.5, 3.0]]]))
  chex.assert_trees_all_close(features.global_std(H, mask)[0, 0, 0], np.sqrt(1.25), atol=1e-6)
  chex.assert_trees_all_close(features.channel_rms(H, mask)[0, 0, 0], np.sqrt(14 / 4), atol=1e-6)
  win = features.window_mean(H, mask, window=4)
  chex.assert_trees_all_close(win, jnp.array([[[1.5, 3.0], [0.0, 0.0]]]))  # Empty window -> 0.
  chex.assert_trees_all_close(features.per_position(H, mask)[0, 4:], jnp.zeros((4, 2)))


def test_pool_features_shapes_and_names():
  h = jax.random.normal(jax.random.key(0), (6, 32, 5))
  poolings = ("pos", "mean", "std", "win4_mean", "win4_std", "win16_mean", "win16_std", "rms")
  out = features.pool_features({"raw": h, "h3": h}, poolings)
  assert sorted(out) == sorted(f"{k}/{p}" for k in ("raw", "h3") for p in poolings)
  chex.assert_shape(out["raw/pos"], (6, 32, 5))
  chex.assert_shape(out["raw/mean"], (6, 1, 5))
  chex.assert_shape(out["h3/win4_std"], (6, 8, 5))
  chex.assert_shape(out["h3/win16_mean"], (6, 2, 5))
  chex.assert_shape(out["h3/rms"], (6, 1, 5))
  with pytest.raises(ValueError, match="unknown pooling 'flat32'"):  # Removed port ablations are errors.
    features.pool_features({"raw": h}, ("flat32",))


def test_to_groups_layout():
  # 2 groups of 3 samples, 4 sub-groups, 1 channel; value encodes (sample, sub-group).
  b, p = 6, 4
  feat = (10 * jnp.arange(b)[:, None] + jnp.arange(p)[None, :]).astype(jnp.float32)[..., None]
  groups = features.to_groups(feat, num_groups=2)
  chex.assert_shape(groups, (8, 3, 1))
  # Group 1, sub-group 2 holds samples 3, 4, 5 at sub-group 2.
  chex.assert_trees_all_close(groups[1 * p + 2, :, 0], jnp.array([32.0, 42.0, 52.0]))


def test_std_gradient_finite_on_constant_windows():
  h = jnp.ones((2, 8, 3))
  grad = jax.grad(lambda a: jnp.sum(features.window_std(a, window=4)) + jnp.sum(features.global_std(a)))(h)
  chex.assert_tree_all_finite(grad)


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: features.global_mean(jnp.zeros((8, 2))), r"must be \(B, L, C\), got shape \(8, 2\)"),
    (lambda: features.window_mean(jnp.zeros((1, 10, 2)), window=4), "window 4 must divide .* 10"),
    (
      lambda: features.global_mean(jnp.zeros((2, 8, 2)), jnp.ones((2, 7))),
      r"mask must be \(B, L\) = \(2, 8\), got \(2, 7\)",
    ),
    (lambda: features.pool_features({"raw": jnp.zeros((2, 8, 2))}, ("median",)), "unknown pooling 'median'"),
    (lambda: features.to_groups(jnp.zeros((5, 1, 2)), 2), "batch 5 is not divisible into 2 groups"),
  ],
)
def test_bad_input_raises(call, match):
  with pytest.raises(ValueError, match=match):
    call()
