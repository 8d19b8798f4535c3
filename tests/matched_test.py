"""train_step.matched_cross_entropy: each sample toward one real story, matched one to one (coverage), by its
first positions and by its whole bag of tokens; and the openings coupled to the noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mixture_test import step_metrics
from train_test import tiny_config

from driftjax import build
from driftjax import train
from driftjax import train_state
from driftjax import train_step
from driftjax.data import pipeline


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
  value, match, _ = train_step.matched_cross_entropy(jnp.log(jnp.asarray(probs)), real)
  np.testing.assert_array_equal(match, [2, 0, 1])
  expected = -np.mean([np.log(probs[b, t, real[m, t]]) for b, m in enumerate([2, 0, 1]) for t in range(2)])
  np.testing.assert_allclose(float(value), expected, rtol=1e-6)
  # The first position only: sample 2's first token is 2 with 0.6 but row 2 is sample 0's (0.9); row 1 ("1")
  # costs it less than rows 0 or 3 ("0").
  first, match1, _ = train_step.matched_cross_entropy(jnp.log(jnp.asarray(probs)), real, positions=1)
  np.testing.assert_array_equal(match1, [2, 0, 1])
  np.testing.assert_allclose(
    float(first), -np.mean(np.log([probs[0, 0, 2], probs[1, 0, 0], probs[2, 0, 1]])), rtol=1e-6
  )


def test_gradient_is_the_cross_entropy_toward_the_match_with_the_matching_held_fixed():
  logits = jax.random.normal(jax.random.key(1), (4, 3, 5))
  real = jax.random.randint(jax.random.key(2), (6, 3), 0, 5)
  _, match, _ = train_step.matched_cross_entropy(logits, real)
  grad = jax.grad(lambda z: train_step.matched_cross_entropy(z, real)[0])(logits)
  p = jax.nn.softmax(logits, -1)
  expected = (p - jax.nn.one_hot(real[match], 5)) / (4 * 3)
  np.testing.assert_allclose(grad, expected, atol=1e-6)


def entropy(row):
  share = np.bincount(row) / len(row)
  return -np.sum(share[share > 0] * np.log(share[share > 0]))


def test_empirical_entropy_counts_equal_units():
  tokens = jnp.array([[0], [0], [1], [2]])  # Shares 1/2, 1/4, 1/4.
  expected = -(0.5 * np.log(0.5) + 0.5 * np.log(0.25))
  np.testing.assert_allclose(float(train_step.empirical_entropy(tokens)), expected, rtol=1e-6)
  pairs = jnp.array([[0, 1], [0, 1], [1, 0], [0, 2]])  # "0 1" twice; "1 0" is another pair.
  np.testing.assert_allclose(float(train_step.empirical_entropy(pairs)), expected, rtol=1e-6)
  rows = jnp.stack([tokens, jnp.zeros_like(tokens)])  # Leading axes: one entropy per row.
  np.testing.assert_allclose(train_step.empirical_entropy(rows), [expected, 0.0], rtol=1e-6, atol=1e-7)


def test_bag_divergence_ignores_order_and_counts_tokens():
  # Two positions, four tokens. Sample 0 says "0 1" (0.9 each), sample 1 is uniform.
  probs = np.full((2, 2, 4), 0.25)
  probs[0] = 0.1 / 3
  probs[0, 0, 0] = probs[0, 1, 1] = 0.9
  real = jnp.array([[0, 1], [1, 0], [0, 0], [2, 3]])
  cost = np.asarray(train_step.bag_divergence(jnp.log(jnp.asarray(probs)), real, smoothing=0.0))
  bag0 = probs[0].mean(0)  # Sample 0's bag: 0 and 1 with 0.467 each.
  expected = [-np.mean(np.log(bag0[r])) - entropy(r) for r in np.asarray(real)]  # KL = cross-entropy - entropy.
  np.testing.assert_allclose(cost[0], expected, rtol=1e-5)
  assert cost[0, 0] == pytest.approx(cost[0, 1])  # "0 1" and "1 0" are one bag.
  assert cost[0, 0] < 0.1 < cost[0, 2] < cost[0, 3]  # "0 0" has half the bag (one 1 too few); "2 3" none of it.
  np.testing.assert_allclose(cost[1], np.log(4.0) - [entropy(r) for r in np.asarray(real)], rtol=1e-5)
  # Smoothing: a token the sample never offers costs log(V / smoothing), not infinity.
  never = np.full((1, 2, 4), -1e9)
  never[0, :, 0] = 0.0
  assert float(train_step.bag_divergence(jnp.asarray(never), jnp.array([[1, 1]]))[0, 0]) == pytest.approx(
    np.log(4 / 1e-4), rel=1e-3
  )


def test_bag_gradient_pushes_the_position_that_offers_a_token_most():
  # d cost / d logits[t, v] = -1/L^2 sum_s p_t(r_s) (delta(r_s, v) - p_t(v)) / q(r_s), q the bag (no smoothing):
  # the cross-entropy's gradient (the row's entropy is a constant).
  logits = jax.random.normal(jax.random.key(3), (1, 3, 5))
  real = jnp.array([[4, 4, 2]])
  grad = jax.grad(lambda z: train_step.bag_divergence(z, real, smoothing=0.0)[0, 0])(logits)[0]
  p = np.asarray(jax.nn.softmax(logits, -1))[0]
  q = p.mean(0)
  expected = np.zeros((3, 5))
  for r in np.asarray(real[0]):
    expected -= p[:, [r]] * (np.eye(5)[r][None] - p) / q[r] / 9
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
  push = -np.asarray(grad)[:, 4]  # Toward token 4: largest where p_t(4) is largest.
  assert np.argmax(push) == np.argmax(p[:, 4])


def test_the_bags_match_samples_to_rows_that_say_the_same_things_elsewhere():
  # Sample 0 says "0 1 2", sample 1 "3 2 1" (its first token might also be 0). By the first position alone,
  # sample 0 takes row 0 ("0 2 1") and sample 1 row 2 ("3 4 4": its first token). With the bags (x3), sample 1
  # takes row 1 ("1 2 3": its own tokens in another order) instead.
  probs = np.full((2, 3, 5), 0.02)
  for b, toks, sure in ((0, (0, 1, 2), 0.92), (1, (3, 2, 1), 0.5)):
    for t, v in enumerate(toks):
      probs[b, t, v] = sure
  probs[1, 0, 0] = 0.42
  probs /= probs.sum(-1, keepdims=True)
  logits = jnp.log(jnp.asarray(probs))
  real = jnp.array([[0, 2, 1], [1, 2, 3], [3, 4, 4]])
  _, by_first, no_bag = train_step.matched_cross_entropy(logits, real, positions=1)
  np.testing.assert_array_equal(by_first, [0, 2])
  assert float(no_bag) == 0.0  # No bag term asked: none reported.
  value, match, bag = train_step.matched_cross_entropy(logits, real, positions=1, bag_weight=3.0)
  np.testing.assert_array_equal(match, [0, 1])
  bags = np.asarray(train_step.bag_divergence(logits, real))
  first = -np.log(probs[:, 0, :])  # (B, V): the first position's cost of each token.
  np.testing.assert_allclose(float(bag), np.mean([bags[0, 0], bags[1, 1]]), rtol=1e-5)
  np.testing.assert_allclose(
    float(value), np.mean([first[0, 0] + 3 * bags[0, 0], first[1, 1] + 3 * bags[1, 1]]), rtol=1e-5
  )


def test_bag_overlap_counts_shared_tokens_with_their_counts():
  ids = jnp.array([[1, 1, 2, 3], [5, 5, 5, 5]])
  real = jnp.array([[1, 2, 2, 4], [5, 5, 0, 0]])
  np.testing.assert_allclose(train_step.bag_overlap(ids, real, 6), [0.5, 0.5])
  np.testing.assert_allclose(train_step.bag_overlap(real, real, 6), [1.0, 1.0])


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
  config = tiny_config(small_vocab=True)
  config.model.head = head
  config.drift.matched_ce_weight = weight
  config.drift.matched_ce_positions = positions
  if n_pos is not None:
    config.data.n_pos = n_pos
  with pytest.raises(ValueError, match=match):
    train_state.step_config(config, 64, 100)


@pytest.mark.parametrize("setting", ["matched_ce_bag_weight", "matched_ce_gap"])
@pytest.mark.parametrize("weight, value", [(0.5, -1.0), (0.0, 1.0)])
def test_matched_add_on_settings_are_checked(setting, weight, value):
  # The bags and the alignment's gap: never negative, and only beside the matched cross-entropy.
  config = tiny_config(small_vocab=True)
  config.model.head = "vocab"
  config.drift.matched_ce_weight = weight
  config.drift[setting] = value
  with pytest.raises(ValueError, match=setting):
    train_state.step_config(config, 64, 100)


def test_matched_rows_limit_the_matching_to_the_first_rows(tmp_path):
  # Rows 8-15 are the samples' own argmax tokens (each sample's cheapest match); with matched_ce_rows = n_gen = 8
  # the matching may only use rows 0-7, so the matched cross-entropy is theirs.
  config = tiny_config(small_vocab=True)
  config.model.head = "vocab"
  config.data.n_pos = 16
  config.drift.matched_ce_weight, config.drift.matched_ce_rows = 1.0, 8
  trainer = train.setup(config, str(tmp_path))
  cfg = trainer.cfg
  out = 3.0 * jax.random.normal(jax.random.key(0), (cfg.n_gen, cfg.gen.seq_len, cfg.gen.vocab_size))
  first = jax.random.randint(jax.random.key(1), (8, cfg.gen.seq_len), 0, cfg.gen.vocab_size)
  real = jnp.concatenate([first, jnp.argmax(out, -1)])
  pos = train_step.feature_dict(trainer.encoder, None, jnp.zeros((cfg.n_pos, cfg.gen.seq_len), jnp.int32), cfg)
  metrics = step_metrics((trainer.encoder, out, pos, jnp.ones((1, cfg.n_pos)), cfg), real_ids=real)
  limited = train_step.matched_cross_entropy(out, first)[0]
  np.testing.assert_allclose(float(metrics["loss/matched_ce"]), float(limited), rtol=1e-5)
  assert float(train_step.matched_cross_entropy(out, real)[0]) < float(limited) - 1.0
  for rows in (4, 17):  # Fewer rows than samples, more than the step has.
    config.drift.matched_ce_rows = rows
    with pytest.raises(ValueError, match="matched_ce_rows"):
      train_state.step_config(config, 64, 100)


def test_sorted_openings_are_in_token_order_with_repeats_kept():
  rows = np.array([[3, 1, 5], [1, 2, 0], [3, 0, 9], [1, 2, 7]])
  openings = train_step.sorted_openings(rows, 2)
  assert openings.dtype == np.int32 and openings.tolist() == [[1, 2], [1, 2], [3, 0], [3, 1]]
  assert train_step.sorted_openings(rows, 0).tolist() == [[1, 2, 0], [1, 2, 7], [3, 0, 9], [3, 1, 5]]
  for bad in (np.zeros((0, 3), np.int32), rows[0]):
    with pytest.raises(ValueError, match="sorted_openings needs rows"):
      train_step.sorted_openings(bad, 2)


def test_the_noise_picks_the_opening_at_its_quantile_and_the_picks_follow_the_openings():
  openings = jnp.array([[1, 2], [1, 2], [3, 0], [3, 1]])
  # Quantiles 0.1, 0.3, 0.5 and 0.99 of four rows: rows 0, 1, 2 and 3. Only the first position's last coordinate
  # counts.
  z = jax.scipy.stats.norm.ppf(jnp.array([0.1, 0.3, 0.5, 0.99]))
  noise = jax.random.normal(jax.random.key(0), (4, 3, 5)).at[:, 0, -1].set(z)
  np.testing.assert_array_equal(train_step.noise_quantile_rows(noise, openings), [0, 1, 2, 3])
  # Fresh noise: each row is picked about a quarter of the time, so opening "1 2" half of it.
  picks = np.asarray(train_step.noise_quantile_rows(jax.random.normal(jax.random.key(1), (40_000, 1, 2)), openings))
  np.testing.assert_allclose(np.bincount(picks, minlength=4) / len(picks), 0.25, atol=0.01)


def test_the_window_takes_the_nearest_opening_around_the_noise_quantile():
  # Eight sorted one-token openings 0..7; the noise's quantile 0.5 is row 4, and a window of 4 holds rows 2-5. The
  # sample's head prefers token 7 (outside), then 3 (inside): row 3. At quantile 0.99 the window moves inside the
  # end (rows 4-7) and token 7 is taken.
  openings = jnp.arange(8)[:, None]
  logp = jnp.log(jnp.array([0.02, 0.02, 0.02, 0.3, 0.02, 0.02, 0.02, 0.58]))[None, None].repeat(2, 0)
  noise = jnp.zeros((2, 1, 3)).at[:, 0, -1].set(jax.scipy.stats.norm.ppf(jnp.array([0.5, 0.99])))
  np.testing.assert_array_equal(train_step.noise_window_rows(logp, noise, openings, 4), [3, 7])
  # A window of one is the quantile's own row; one wider than the openings is all of them.
  np.testing.assert_array_equal(train_step.noise_window_rows(logp, noise, openings, 1), [4, 7])
  np.testing.assert_array_equal(train_step.noise_window_rows(logp, noise, openings, 50), [7, 7])


def noise_coupled_trainer(tmp_path):
  config = tiny_config(small_vocab=True)
  config.model.head = "vocab"
  config.drift.matched_ce_weight, config.drift.matched_ce_positions = 1.0, 3
  config.drift.matched_ce_coupling = "noise"
  return config, train.setup(config, str(tmp_path))


def test_noise_coupled_matching_pulls_each_sample_to_the_opening_at_its_noise(tmp_path):
  config, trainer = noise_coupled_trainer(tmp_path)
  cfg = trainer.cfg
  out = jax.random.normal(jax.random.key(0), (cfg.n_gen, cfg.gen.seq_len, cfg.gen.vocab_size))
  noise = jax.random.normal(jax.random.key(1), (cfg.n_gen, cfg.gen.positions, cfg.gen.noise_dim))
  rows = build.corpus(config).train_rows(trainer.tokenizer, pipeline.CorpusStats())
  openings = train_step.sorted_openings(rows, 3)
  pos = train_step.feature_dict(trainer.encoder, None, jnp.zeros((cfg.n_pos, cfg.gen.seq_len), jnp.int32), cfg)
  args = (trainer.encoder, out, pos, jnp.ones((1, cfg.n_pos)), cfg)
  with pytest.raises(ValueError, match="matched_ce_coupling='noise' needs"):
    train_step.generated_loss(*args, noise=noise)
  # No real rows needed: the targets are the training split's openings.
  metrics = step_metrics(args, noise=noise, openings=openings)
  u = np.asarray(jax.scipy.stats.norm.cdf(noise[:, 0, -1]))
  target = openings[np.floor(u * len(openings)).astype(int)]  # (B, 3)
  logp = np.asarray(jax.nn.log_softmax(out[:, :3], -1))
  expected = -np.mean(np.take_along_axis(logp, target[..., None], -1))
  np.testing.assert_allclose(float(metrics["loss/matched_ce"]), expected, rtol=1e-5)
  changed = np.mean(np.argmax(np.asarray(out[:, :3]), -1) != target)
  np.testing.assert_allclose(float(metrics["diag/matched_changed"]), changed, rtol=1e-6)
  # The compiled step holds the sorted openings as a constant; with a window (drift.matched_ce_window) its target
  # is the nearest opening among the window's rows (noise_window_rows, tested above).
  config.drift.matched_ce_window = 64
  trainer = train.setup(config, str(tmp_path))
  _, metrics = trainer.step_fn(trainer.init_state(), trainer.next_batch(), trainer.enc_state)
  assert np.isfinite(float(metrics["loss/matched_ce"])) and float(metrics["loss/matched_ce"]) > 0


@pytest.mark.parametrize(
  "settings, match",
  [
    ({"matched_ce_coupling": "quantile"}, "expected 'nearest' or 'noise'"),
    ({"matched_ce_gap": 1.0}, "matched_ce_gap"),
    ({"matched_ce_bag_weight": 1.0}, "matched_ce_bag_weight"),
    ({"matched_ce_rows": 8}, "matched_ce_rows"),
    ({"matched_ce_weight": 0.0}, "needs matched_ce_weight > 0"),
    ({"matched_ce_window": -1}, "matched_ce_window"),
    # The window belongs to the noise coupling.
    (
      {"matched_ce_coupling": "nearest", "matched_ce_window": 8},
      "matched_ce_window=8 must be >= 0 and needs matched_ce_coupling='noise'",
    ),
  ],
)
def test_noise_coupling_settings_are_checked(settings, match):
  config = tiny_config(small_vocab=True)
  config.model.head = "vocab"
  config.drift.matched_ce_weight, config.drift.matched_ce_coupling = 1.0, "noise"
  for name, value in settings.items():
    config.drift[name] = value
  with pytest.raises(ValueError, match=match):
    train_state.step_config(config, 64, 100)
