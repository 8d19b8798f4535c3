"""drift.continuation_ce_target: the repairs' cross-entropy toward all of a sample's draws or its likeliest one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from teacher_test import repair_ce_config
from train_test import tiny_config

from driftjax import train
from driftjax import train_state
from driftjax import train_step


def test_likeliest_draws_picks_each_samples_row_of_highest_total_log_probability():
  # Two samples, three draws each, two positions, three tokens. The LM's next-token probabilities are the same
  # for every row: position 0 prefers token 0 (0.7), position 1 token 2 (0.6).
  probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
  lm_logits = jnp.broadcast_to(jnp.log(jnp.asarray(probs)), (6, 2, 3))
  draws = jnp.array([[1, 1], [0, 2], [2, 2], [0, 1], [1, 2], [2, 0]])
  rows, totals = train_step.likeliest_draws(lm_logits, draws, per_sample=3)
  expected = [np.log(probs[0, a]) + np.log(probs[1, b]) for a, b in np.asarray(draws)]
  np.testing.assert_allclose(totals, expected, rtol=1e-6)
  # Sample 0: "0 2" (0.42) beats "1 1" and "2 2"; sample 1: "0 1" (0.21) beats "1 2" (0.12) and "2 0" (0.01).
  np.testing.assert_array_equal(rows, [[0, 2], [0, 1]])
  # One draw per sample: the draws themselves.
  np.testing.assert_array_equal(train_step.likeliest_draws(lm_logits, draws, per_sample=1)[0], draws)


def _trainer(tmp_path, target):
  config = repair_ce_config(continuation_samples=3, continuation_ce_target=target)
  return train.setup(config, str(tmp_path / target))


def test_the_cross_entropy_goes_to_the_draw_the_lm_finds_likeliest(tmp_path, monkeypatch):
  trainer = _trainer(tmp_path, "likeliest")
  cfg = trainer.cfg
  b, length, v = cfg.n_gen, cfg.gen.seq_len, cfg.gen.vocab_size
  draws = np.array(jax.random.randint(jax.random.key(0), (b * 3, length), 0, v))
  draws[:3] = draws[0]  # Sample 0's three draws agree everywhere; sample 1's agree on its first 4 tokens.
  draws[3:6, :4] = draws[3, :4]
  draws = jnp.asarray(draws, jnp.int32)
  # The LM's repairs are these fixed rows, whatever the samples are.
  monkeypatch.setattr(train_step.kv_decode, "continue_samples", lambda *a, **k: (draws, jnp.zeros((b * 3,), jnp.int32)))
  out = jax.random.normal(jax.random.key(1), (b, length, v))
  _, metrics = train_step.generated_loss(trainer.encoder, out, None, None, cfg, key=jax.random.key(2))
  eos = trainer.encoder.cfg.eos_token_id
  lm_in = jnp.concatenate([jnp.full((b * 3, 1), eos, jnp.int32), draws[:, :-1]], axis=1)
  logp = jax.nn.log_softmax(trainer.encoder(input_ids=lm_in, logits=True)["logits"][..., :v], -1)
  totals = np.asarray(jnp.take_along_axis(logp, draws[..., None], -1)[..., 0].sum(-1)).reshape(b, 3)
  best = np.asarray(draws).reshape(b, 3, length)[np.arange(b), totals.argmax(1)]
  toward_best = train_step.continuation_cross_entropy(out, jnp.asarray(best), 1)
  toward_all = train_step.continuation_cross_entropy(out, draws, 3)
  np.testing.assert_allclose(float(metrics["loss/continuation_ce"]), float(toward_best), rtol=1e-5)
  assert abs(float(toward_best) - float(toward_all)) > 1e-4  # The switch changes the value.
  # Where the draws disagree: every position of samples 2.., none of sample 0's, the last L - 4 of sample 1's.
  expected = ((b - 2) * length + length - 4) / (b * length)
  np.testing.assert_allclose(float(metrics["diag/cont_disagree"]), expected, rtol=1e-6)

  draws_trainer = _trainer(tmp_path, "draws")
  _, metrics = train_step.generated_loss(
    draws_trainer.encoder, out, None, None, draws_trainer.cfg, key=jax.random.key(2)
  )
  np.testing.assert_allclose(float(metrics["loss/continuation_ce"]), float(toward_all), rtol=1e-5)


@pytest.mark.parametrize("target, weight", [("best", 0.5), ("likeliest", 0.0)])
def test_ce_target_settings_are_checked(target, weight):
  config = tiny_config(small_vocab=True)
  config.model.head = "vocab"
  config.drift.positives = "continuation"
  config.drift.continuation_ce_weight = weight
  config.drift.continuation_ce_target = target
  with pytest.raises(ValueError, match="continuation_ce_target"):
    train_state.step_config(config, 64, 100)
