"""train_step.mixture_cross_entropy: real tokens under the batch's mixture of the head's distributions (coverage),
position by position; train_step.mixture_bag_divergence: the same with positions pooled (bags of tokens)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_test import tiny_config

from driftjax import build
from driftjax import train
from driftjax import train_state
from driftjax import train_step
from driftjax.data import pipeline

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
  config = tiny_config(small_vocab=True)
  config.model.head = head
  config.drift.mixture_ce_weight = weight
  config.drift.mixture_ce_positions = positions
  with pytest.raises(ValueError, match=match):
    train_state.step_config(config, 64, 100)


def test_the_pooled_bag_ignores_which_sample_says_what_and_where():
  # The pooled bag of PROBS: the mean over both samples' both positions.
  bag = PROBS.reshape(-1, 3).mean(0)
  share = np.bincount(np.asarray(REAL).ravel(), minlength=3) / REAL.size
  expected = np.sum(share * np.log(share / bag))
  value = train_step.mixture_bag_divergence(jnp.log(PROBS), REAL, smoothing=0.0)
  np.testing.assert_allclose(float(value), expected, rtol=1e-5)
  moved = PROBS[::-1, ::-1]  # Samples swapped, positions reversed: one pooled bag.
  np.testing.assert_allclose(
    float(train_step.mixture_bag_divergence(jnp.log(moved), REAL, smoothing=0.0)), expected, rtol=1e-5
  )
  # Real stories that say 0, 1, 2 once each: a batch that says them once each in any order is at 0; a batch that
  # always says 0 is not.
  real = jnp.array([[0, 1, 2]])
  spread = jnp.log(jnp.array([[[0.98, 0.01, 0.01], [0.01, 0.01, 0.98]], [[0.01, 0.98, 0.01], [0.98, 0.01, 0.01]]]))
  collapsed = jnp.log(jnp.array([[[0.98, 0.01, 0.01]] * 2] * 2))
  assert float(train_step.mixture_bag_divergence(spread, real)) < 0.2
  assert float(train_step.mixture_bag_divergence(collapsed, real)) > 1.0


def test_the_pooled_bag_pushes_the_sample_and_position_that_offer_a_missing_token_most():
  # Real rows that say only token 2: d / d logits[b, t] = -p_bt(2) (onehot(2) - p_bt) / (B L q(2)), q the pooled
  # bag; toward 2 that is p_bt(2) (1 - p_bt(2)) / (B L q(2)): largest where p_bt(2) is (while it is below 1/2).
  logits = 0.5 * jax.random.normal(jax.random.key(4), (3, 4, 5))
  real = jnp.full((2, 4), 2)
  grad = np.asarray(jax.grad(lambda z: train_step.mixture_bag_divergence(z, real, smoothing=0.0))(logits))
  p = np.asarray(jax.nn.softmax(logits, -1))
  q2 = p[..., 2].mean()
  np.testing.assert_allclose(grad, -p[..., 2:3] * (np.eye(5)[2] - p) / (12 * q2), rtol=1e-5, atol=1e-7)
  assert p[..., 2].max() < 0.5
  push = -grad[..., 2]
  assert np.unravel_index(np.argmax(push), push.shape) == np.unravel_index(np.argmax(p[..., 2]), push.shape)


def test_the_pooled_bag_of_pairs_counts_adjacent_tokens_in_order():
  # Real pairs: "0 1", "1 2" (row 0) and "0 1", "1 1" (row 1): shares 1/2, 1/4, 1/4.
  real = jnp.array([[0, 1, 2], [0, 1, 1]])
  p = np.asarray(jax.nn.softmax(jax.random.normal(jax.random.key(5), (2, 3, 3)), -1))
  q = {
    (a, c): np.mean([p[b, t, a] * p[b, t + 1, c] for b in range(2) for t in range(2)])
    for a in range(3)
    for c in range(3)
  }
  expected = -(0.5 * np.log(q[0, 1] / 0.5) + 0.25 * np.log(q[1, 2] / 0.25) + 0.25 * np.log(q[1, 1] / 0.25))
  value = train_step.mixture_bag_divergence(jnp.log(p), real, n=2, smoothing=0.0)
  np.testing.assert_allclose(float(value), expected, rtol=1e-5)
  # A batch that says "0 1 2" and "0 1 1" (surely) is at 0; one that says "2 1 0" has the tokens but not the pairs.
  sure = lambda rows: jnp.log(jax.nn.one_hot(jnp.array(rows), 3) * 0.97 + 0.01)
  assert float(train_step.mixture_bag_divergence(sure([[0, 1, 2], [0, 1, 1]]), real, n=2)) < 0.15
  backwards = sure([[2, 1, 0], [1, 1, 0]])
  assert float(train_step.mixture_bag_divergence(backwards, real, n=1)) < 0.15
  assert float(train_step.mixture_bag_divergence(backwards, real, n=2)) > 1.0
  # Triples: "0 1 2 0" and "0 1 1 2" against themselves and against "0 1 1 0" and "0 1 2 2" (other triples).
  real3 = jnp.array([[0, 1, 2, 0], [0, 1, 1, 2]])
  assert float(train_step.mixture_bag_divergence(sure([[0, 1, 2, 0], [0, 1, 1, 2]]), real3, n=3)) < 0.15
  assert float(train_step.mixture_bag_divergence(sure([[0, 1, 1, 0], [0, 1, 2, 2]]), real3, n=3)) > 1.0


@pytest.mark.parametrize(
  "head, weight, n", [("embedding", 0.5, 1), ("vocab", -1.0, 1), ("vocab", 0.5, 0), ("vocab", 0.5, 4)]
)
def test_mixture_bag_settings_are_checked(head, weight, n):
  config = tiny_config(small_vocab=True)
  config.model.head = head
  config.drift.mixture_bag_weight = weight
  config.drift.mixture_bag_n = n
  with pytest.raises(ValueError, match="mixture_bag"):
    train_state.step_config(config, 64, 100)
  config.model.head, config.drift.mixture_bag_weight, config.drift.mixture_bag_n = "vocab", 0.5, 2
  config.drift.mixture_bag_counts = "soft"
  with pytest.raises(ValueError, match="mixture_bag_counts"):
    train_state.step_config(config, 64, 100)
  config.drift.mixture_bag_counts, config.drift.mixture_bag_max_ratio = "argmax", 0.5
  with pytest.raises(ValueError, match="mixture_bag_max_ratio"):
    train_state.step_config(config, 64, 100)


def bag_of_pairs_setup(tmp_path, target: str):
  """A tiny vocab-head trainer with the pooled bag of pairs against `target`, random head logits and
  generated_loss's positional arguments for them."""
  config = tiny_config(small_vocab=True)
  config.model.head = "vocab"
  config.drift.mixture_bag_weight, config.drift.mixture_bag_n = 1.0, 2
  config.drift.mixture_bag_target = target
  trainer = train.setup(config, str(tmp_path))
  cfg = trainer.cfg
  out = jax.random.normal(jax.random.key(0), (cfg.n_gen, cfg.gen.seq_len, cfg.gen.vocab_size))
  pos = train_step.feature_dict(trainer.encoder, None, jnp.zeros((cfg.n_pos, cfg.gen.seq_len), jnp.int32), cfg)
  return config, trainer, out, (trainer.encoder, out, pos, jnp.ones((1, cfg.n_pos)), cfg)


def step_metrics(args, cfg=None, **inputs):
  """generated_loss's metrics for bag_of_pairs_setup's arguments (cfg: another StepConfig), compiled: eager, the
  (8, 32, 50,257) logits took five times as long. The logits are an argument, not a constant of the program."""
  encoder, out, pos, pos_w, base = args
  cfg = cfg or base
  return jax.jit(lambda o, inputs: train_step.generated_loss(encoder, o, pos, pos_w, cfg, **inputs)[1])(out, inputs)


def test_the_terms_on_real_tokens_say_when_they_are_missing(tmp_path):
  _, trainer, out, args = bag_of_pairs_setup(tmp_path, "batch")
  cfg = trainer.cfg
  with pytest.raises(ValueError, match="mixture_bag_weight needs the real rows' tokens"):
    train_step.generated_loss(*args)
  real = jax.random.randint(jax.random.key(1), (cfg.n_pos, cfg.gen.seq_len), 0, cfg.gen.vocab_size)
  metrics = step_metrics(args, real_ids=real)
  expected = train_step.mixture_bag_divergence(out, real, n=2)
  np.testing.assert_allclose(float(metrics["loss/mixture_bag"]), float(expected), rtol=1e-5)
  # With the argmax's counts (drift.mixture_bag_counts): the value is the written bag's.
  argmax_cfg = dataclasses.replace(cfg, mixture_bag_counts="argmax")
  metrics = step_metrics(args, argmax_cfg, real_ids=real)
  expected = train_step.mixture_bag_divergence(out, real, n=2, counts="argmax")
  np.testing.assert_allclose(float(metrics["loss/mixture_bag"]), float(expected), rtol=1e-5)


def test_the_training_split_bag_counts_every_n_gram_of_every_row():
  rows = np.array([[5, 7, 7, 0], [7, 7, 0, 0]])  # Pairs: 5 7, 7 7, 7 0, 7 7, 7 0, 0 0 (padding counts too).
  grams, shares = train_step.ngram_distribution(rows, 2)
  assert grams.dtype == np.int32 and grams.tolist() == [[0, 0], [5, 7], [7, 0], [7, 7]]
  np.testing.assert_allclose(shares, [1 / 6, 1 / 6, 2 / 6, 2 / 6], rtol=1e-6)
  grams, shares = train_step.ngram_distribution(rows, 1)
  assert grams.tolist() == [[0], [5], [7]]
  np.testing.assert_allclose(shares, [3 / 8, 1 / 8, 4 / 8], rtol=1e-6)
  for bad, n in ((np.zeros((0, 4), np.int32), 1), (rows, 5), (rows[0], 1)):
    with pytest.raises(ValueError, match="ngram_distribution needs rows"):
      train_step.ngram_distribution(bad, n)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_a_split_target_made_of_the_batch_rows_is_the_batch_bag(n):
  # The same divergence, value and gradient, whether the bag comes from the rows themselves or from their counts.
  real = jax.random.randint(jax.random.key(2), (6, 5), 0, 4)  # Few tokens: repeated n-grams.
  logits = jax.random.normal(jax.random.key(3), (3, 5, 4))
  grams, shares = train_step.ngram_distribution(np.asarray(real), n)
  assert len(shares) < 6 * (5 - n + 1)  # Some n-grams repeat, so the shares are not uniform.
  batch = lambda z: train_step.mixture_bag_divergence(z, real, n)
  split = lambda z: train_step.pooled_bag_divergence(z, jnp.asarray(grams), jnp.asarray(shares))
  np.testing.assert_allclose(float(split(logits)), float(batch(logits)), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(split)(logits), jax.grad(batch)(logits), rtol=1e-4, atol=1e-7)


def test_the_split_target_is_counted_once_and_reaches_the_step(tmp_path):
  config, trainer, out, args = bag_of_pairs_setup(tmp_path, "split")
  with pytest.raises(ValueError, match="mixture_bag_target='split' needs the training rows"):
    train_step.generated_loss(*args)
  rows = build.corpus(config).train_rows(trainer.tokenizer, pipeline.CorpusStats())
  target = train_step.ngram_distribution(rows, 2)
  metrics = step_metrics(args, bag_target=target)  # No real rows needed.
  np.testing.assert_allclose(float(metrics["loss/mixture_bag"]), float(train_step.pooled_bag_divergence(out, *target)))
  # The compiled step holds the same target: its bag term is the divergence of its own samples from it.
  state, metrics = trainer.step_fn(trainer.init_state(), trainer.next_batch(), trainer.enc_state)
  assert np.isfinite(float(metrics["loss/mixture_bag"])) and float(metrics["loss/mixture_bag"]) > 0
  # An hf: source is tokenized lazily: no split to count, a clear error; an unknown target is refused.
  config.data.source = "hf:roneneldan/TinyStories"
  with pytest.raises(ValueError, match="mixture_bag_target='split' needs a files:, synthetic or tinystories_sample"):
    build.corpus(config).train_rows(trainer.tokenizer, pipeline.CorpusStats(), "drift.mixture_bag_target='split'")
  config.drift.mixture_bag_target = "window"
  with pytest.raises(ValueError, match="mixture_bag_target"):
    train_state.step_config(config, 64, 100)


def test_argmax_counts_push_the_choice_no_sample_writes_though_the_softmax_hedges():
  # Real rows say tokens 1 and 2 equally (each 4 times among the 8 units: repeats add up). Every position's softmax
  # hedges, 0.55 on 1 and 0.45 on 2, so the expected bag is near the target, but every argmax is 1.
  real = jnp.array([[1, 2], [2, 1], [1, 2], [2, 1]])
  probs = np.tile(np.array([0.0, 0.55, 0.45]) * 0.999 + 0.001 / 3, (3, 2, 1))
  logits = jnp.log(jnp.asarray(probs))
  expected = lambda z: train_step.mixture_bag_divergence(z, real, smoothing=1e-4)
  written = lambda z: train_step.mixture_bag_divergence(z, real, smoothing=1e-4, counts="argmax")
  assert float(expected(logits)) < 0.01
  # The value is the written bag's: token 1 always (plus smoothing), token 2 never.
  bag = np.array([0.0, 1.0, 0.0]) * (1 - 1e-4) + 1e-4 / 3
  np.testing.assert_allclose(float(written(logits)), np.sum(0.5 * np.log(0.5 / bag[1:])), rtol=1e-5)
  # The gradient: -sum_s w_s q_s with q the expected bag, w_s = share / max(written share, total / 10): 0.5 for
  # token 1 (written always), 0.5 / 0.05 = 10 for token 2 (written never; the cap), over the 8 real units.
  w = np.array([0.0, 0.5, 10.0])
  grad = np.asarray(jax.grad(written)(logits))
  # d q_s / d logits[b, t] = p_bt(s) (onehot(s) - p_bt) / (B L).
  want = -sum(w[s] * probs[..., s : s + 1] * (np.eye(3)[s] - probs) for s in (1, 2)) / 6
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-7)
  assert grad[..., 2].max() < 0 < grad[..., 1].min()  # Descent raises token 2 and lowers token 1 everywhere.
  # With the cap at 2 (drift.mixture_bag_max_ratio): token 2's weight is 0.5 / (0.5 / 2) = 2; the value is the same.
  capped = lambda z: train_step.mixture_bag_divergence(z, real, smoothing=1e-4, counts="argmax", max_ratio=2.0)
  np.testing.assert_allclose(float(capped(logits)), float(written(logits)), rtol=1e-6)
  w2 = np.array([0.0, 0.5, 2.0])
  want2 = -sum(w2[s] * probs[..., s : s + 1] * (np.eye(3)[s] - probs) for s in (1, 2)) / 6
  np.testing.assert_allclose(np.asarray(jax.grad(capped)(logits)), want2, rtol=1e-4, atol=1e-7)
  assert np.abs(np.asarray(jax.grad(expected)(logits))).max() < 0.1 * np.abs(grad).max()
  # A batch whose argmax says each token as often as the target: the same push on both, as the plain gradient's.
  even = np.stack([probs[0], probs[0][:, [0, 2, 1]]])  # Sample 1 hedges the other way.
  assert np.asarray(jnp.argmax(jnp.log(even), -1)).tolist() == [[1, 1], [2, 2]]
  grad = np.asarray(jax.grad(written)(jnp.log(jnp.asarray(even))))
  want = -sum(even[..., s : s + 1] * (np.eye(3)[s] - even) for s in (1, 2)) / 4
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-7)
  with pytest.raises(ValueError, match="counts"):
    train_step.pooled_bag_cross_entropy(logits, jnp.array([[1]]), jnp.array([1.0]), counts="soft")


@pytest.mark.parametrize("n", [1, 2])
def test_argmax_counts_agree_between_the_batch_and_the_split_target(n):
  real = jax.random.randint(jax.random.key(6), (6, 5), 0, 4)
  logits = jax.random.normal(jax.random.key(7), (3, 5, 4))
  grams, shares = train_step.ngram_distribution(np.asarray(real), n)
  batch = lambda z: train_step.mixture_bag_divergence(z, real, n, counts="argmax")
  split = lambda z: train_step.pooled_bag_divergence(z, jnp.asarray(grams), jnp.asarray(shares), counts="argmax")
  np.testing.assert_allclose(float(split(logits)), float(batch(logits)), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(split)(logits), jax.grad(batch)(logits), rtol=1e-4, atol=1e-7)
