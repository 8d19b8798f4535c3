"""Continuation positives (kv_decode.continue_samples, issue 14 option 2): which tokens are kept, which the LM replaces.

Each kept or sampled token is checked against the LM's full (uncached) forward on the row's own new prefix, so
the KV-cached loop is held to the model itself.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from driftjax.models import gpt2
from driftjax.models import kv_decode

VOCAB, EOS, LENGTH = 24, 23, 10


@pytest.fixture(scope="module")
def lm():
  cfg = gpt2.GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=2, n_head=2, eos_token_id=EOS)
  model = gpt2.GPT2(cfg, rngs=nnx.Rngs(0))
  # Peaked next-token distributions, so that top-k and floor both bite; end-of-text rarely likely.
  model.wte[...] = (model.wte[...] * 10.0).at[EOS].set(0.0)
  return model


def _acceptable(model, prefix_rows, top_k, floor, min_ratio=0.0):
  """(B, L, V) bool: token v is acceptable at t after the row's tokens before t (full forward, no cache)."""
  lm_in = jnp.concatenate([jnp.full((prefix_rows.shape[0], 1), EOS), prefix_rows[:, :-1]], axis=1)
  probs = np.asarray(jax.nn.softmax(model(input_ids=lm_in, logits=True)["logits"], -1))
  kth = -np.sort(-probs, -1)[..., top_k - 1 : top_k]
  top = probs.max(-1, keepdims=True)
  return (probs >= kth) & (probs >= floor) & (probs >= min_ratio * top), probs


def _rows(model, seed=0, n=6):
  """Rows the LM half agrees with: its own samples among its top 4, with token 4 changed."""
  ids = jax.random.randint(jax.random.key(seed), (n, LENGTH), 0, EOS)
  ids = np.array(kv_decode.continue_samples(model, jax.random.key(seed + 9), ids, top_k=4, floor=0.0)[0])
  ids[:, 4] = (ids[:, 4] + 7) % EOS
  return jnp.asarray(ids)


@pytest.mark.parametrize("policy", ["continue", "repair"])
def test_kept_tokens_are_acceptable_and_replaced_ones_are_not(lm, policy):
  ids = _rows(lm)
  out, first = kv_decode.continue_samples(lm, jax.random.key(1), ids, top_k=3, floor=0.05, policy=policy)
  out, first, ids = np.asarray(out), np.asarray(first), np.asarray(ids)
  ok, _ = _acceptable(lm, jnp.asarray(out), 3, 0.05)
  ended = np.cumsum(out == EOS, 1) - (out == EOS) > 0  # Positions after the row's first end-of-text.
  kept = (out == ids) & ~ended
  n_kept = n_replaced = 0
  for b in range(len(ids)):
    for t in range(LENGTH):
      if ended[b, t]:
        assert out[b, t] == EOS
        continue
      # Whatever stands at t is acceptable after the new prefix (kept tokens by the rule, sampled ones because
      # they are drawn among the acceptable candidates).
      assert ok[b, t, out[b, t]], (b, t)
      if t < first[b]:
        assert kept[b, t], (b, t)  # Up to the first replacement the row is its own.
      elif t == first[b]:
        assert not ok[b, t, ids[b, t]], (b, t)  # The first replaced token was unacceptable there.
      if policy == "repair" and not kept[b, t]:
        assert not ok[b, t, ids[b, t]], (b, t)  # Repair replaces only unacceptable tokens.
      n_kept += kept[b, t]
      n_replaced += not kept[b, t]
  assert n_kept > 0 and n_replaced > 0, (n_kept, n_replaced)  # The case exercises both.
  assert (first < LENGTH).any()


def test_min_ratio_repair_keeps_and_draws_only_tokens_near_the_top_one(lm):
  """A token is kept or drawn only if it also has min_ratio of the LM's top probability after the new prefix."""
  ids = _rows(lm, seed=7, n=8)
  kw = {"top_k": 8, "floor": 0.0, "policy": "repair"}
  out = np.asarray(kv_decode.continue_samples(lm, jax.random.key(3), ids, min_ratio=0.3, **kw)[0])
  loose = np.asarray(kv_decode.continue_samples(lm, jax.random.key(3), ids, **kw)[0])
  ok, probs = _acceptable(lm, jnp.asarray(out), 8, 0.0, min_ratio=0.3)
  ended = np.cumsum(out == EOS, 1) - (out == EOS) > 0
  ids = np.asarray(ids)
  for b in range(out.shape[0]):
    for t in range(LENGTH):
      if not ended[b, t]:
        assert ok[b, t, out[b, t]], (b, t)  # Kept or drawn, it clears the ratio.
        assert (out[b, t] == ids[b, t]) == ok[b, t, ids[b, t]], (b, t)  # Kept exactly where acceptable.
  assert np.mean(out == ids) < np.mean(loose == ids)  # The ratio rejects tokens the top 8 alone would keep.


def test_repair_keeps_more_of_the_row_than_continue(lm):
  ids = _rows(lm, seed=3, n=16)
  outs = {
    p: np.asarray(kv_decode.continue_samples(lm, jax.random.key(2), ids, top_k=3, floor=0.05, policy=p)[0])
    for p in ("continue", "repair")
  }
  kept = {p: np.mean(o == np.asarray(ids)) for p, o in outs.items()}
  assert kept["repair"] > kept["continue"], kept


def test_everything_acceptable_keeps_the_row_and_nothing_acceptable_replaces_all(lm):
  ids = _rows(lm, seed=4)
  out, first = kv_decode.continue_samples(lm, jax.random.key(0), ids, top_k=VOCAB, floor=0.0)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(ids))
  np.testing.assert_array_equal(np.asarray(first), LENGTH)
  out, first = kv_decode.continue_samples(lm, jax.random.key(0), ids, top_k=3, floor=1.5)
  np.testing.assert_array_equal(np.asarray(first), 0)
  # Nothing clears the floor: the LM's top token is taken (greedy), so the rows equal its greedy decoding.
  out = np.asarray(out)
  _, probs = _acceptable(lm, jnp.asarray(out), 3, 0.0)
  ended = np.cumsum(out == EOS, 1) - (out == EOS) > 0
  np.testing.assert_array_equal(np.where(ended, EOS, probs.argmax(-1)), out)


def test_rows_end_at_their_first_end_of_text(lm):
  ids = np.array(_rows(lm, seed=5))
  ids[:, 4] = EOS
  out, _ = kv_decode.continue_samples(lm, jax.random.key(0), jnp.asarray(ids), top_k=VOCAB, floor=0.0, policy="repair")
  np.testing.assert_array_equal(np.asarray(out)[:, 5:], EOS)
  np.testing.assert_array_equal(np.asarray(out)[:, :5], ids[:, :5])


def test_bad_policy_is_an_error(lm):
  with pytest.raises(ValueError, match="policy"):
    kv_decode.continue_samples(lm, jax.random.key(0), _rows(lm), top_k=3, floor=0.0, policy="resample")


@pytest.mark.parametrize("n", [1, 2, 3])
def test_incremental_repeat_check_matches_the_whole_row_mask(n):
  """kv_decode.ngram_repeats at each position (tokens after it unknown) = teacher.repeat_mask on the whole row."""
  from driftjax.drift import teacher

  ids = jax.random.randint(jax.random.key(n), (5, 12), 0, 3)  # 3 tokens: repeats everywhere.
  cand = jax.random.randint(jax.random.key(n + 1), (5, 12, 4), 0, 3)
  want = np.asarray(teacher.repeat_mask(ids, cand, n))
  for t in range(12):
    hist = jnp.where(jnp.arange(12) < t, ids, -1)
    got = np.asarray(kv_decode.ngram_repeats(hist, jnp.int32(t), cand[:, t], n))
    np.testing.assert_array_equal(got, want[:, t], err_msg=f"position {t}")


def test_repair_with_repeat_mask_removes_repeated_bigrams_only(lm):
  """Every token acceptable (top_k = vocab, no floor): the repair keeps the row, except that with
  repeat_ngram=2 each token that would repeat a bigram of the new row is replaced by one that does not."""
  from driftjax.drift import teacher

  ids = jnp.asarray(np.tile([[3, 5, 3, 5, 3, 5, 7, 8, 7, 8]], (4, 1)))
  kw = {"top_k": VOCAB, "floor": 0.0, "policy": "repair"}
  same, _ = kv_decode.continue_samples(lm, jax.random.key(0), ids, **kw)
  np.testing.assert_array_equal(np.asarray(same), np.asarray(ids))
  out, first = kv_decode.continue_samples(lm, jax.random.key(0), ids, repeat_ngram=2, **kw)
  out = np.asarray(out)
  live = np.cumsum(out == EOS, 1) == 0  # Before the row's first end-of-text (then padding, which repeats).
  repeats = np.asarray(teacher.repeat_mask(jnp.asarray(out), jnp.asarray(out)[..., None], 2))[..., 0]
  assert not (repeats & live).any()
  # Positions 0-2 start no repeat ("3 5 3"); position 3 would repeat "3 5": replaced there first.
  np.testing.assert_array_equal(out[:, :3], np.asarray(ids)[:, :3])
  assert (out[:, 3] != 5).all() and (np.asarray(first) == 3).all()
  # Where the new row's token is the old one, it repeats no bigram; where it differs, the old one would have.
  for b in range(len(out)):
    for t in range(1, int(live[b].sum())):
      old_repeats = any(out[b, s - 1] == out[b, t - 1] and out[b, s] == ids[b, t] for s in range(1, t))
      assert (out[b, t] != ids[b, t]) == old_repeats, (b, t)


def test_inverse_cdf_pick_lays_candidates_in_token_id_order():
  """Candidates 5, 2, 9 (and a masked 1) with probabilities 0.5, 0.3, 0.2: in id order 2 | 5 | 9 cover
  [0, 0.3) | [0.3, 0.8) | [0.8, 1); the masked candidate is never chosen, not even at u = 0."""
  ids = jnp.asarray([[5, 2, 9, 1]] * 5)
  scores = jnp.log(jnp.asarray([[0.5, 0.3, 0.2, 0.0]] * 5))
  u = jnp.asarray([0.0, 0.29, 0.31, 0.79, 0.999])
  pick = np.asarray(kv_decode._inverse_cdf_pick(scores, ids, u))
  np.testing.assert_array_equal(np.asarray(ids)[np.arange(5), pick], [2, 2, 5, 5, 9])


def test_noise_coupled_ancestral_rows_are_the_lms_inverse_cdf_draws(lm):
  """policy="ancestral" with uniforms: the rows ignore the given tokens and depend only on the uniforms; each token
  is the inverse CDF at its uniform over the LM's candidates (top 3 above 0.05, renormalized) in token-id order,
  after the row's own prefix (full forward, no cache)."""
  u = jax.random.uniform(jax.random.key(7), (6, LENGTH))
  kw = {"top_k": 3, "floor": 0.05, "policy": "ancestral", "uniforms": u}
  out, first = kv_decode.continue_samples(lm, jax.random.key(0), _rows(lm, seed=1), **kw)
  other, _ = kv_decode.continue_samples(lm, jax.random.key(99), _rows(lm, seed=2), **kw)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(other))  # Neither the rows nor the key matter.
  np.testing.assert_array_equal(np.asarray(first), 0)
  out, u = np.asarray(out), np.asarray(u)
  ok, probs = _acceptable(lm, jnp.asarray(out), 3, 0.05)
  ended = np.cumsum(out == EOS, 1) - (out == EOS) > 0
  for b in range(out.shape[0]):
    for t in range(LENGTH):
      if ended[b, t]:
        continue
      p = np.where(ok[b, t], probs[b, t], 0.0)
      cum = np.cumsum(p / p.sum())  # Token-id order is the vocabulary's order.
      assert out[b, t] == np.searchsorted(cum, u[b, t], side="right"), (b, t)
  shifted, _ = kv_decode.continue_samples(lm, jax.random.key(0), _rows(lm), **{**kw, "uniforms": (u + 0.5) % 1.0})
  assert (np.asarray(shifted) != out).any()


def test_uniforms_of_the_wrong_shape_are_an_error(lm):
  with pytest.raises(ValueError, match="uniforms"):
    kv_decode.continue_samples(lm, jax.random.key(0), _rows(lm), top_k=3, floor=0.0, uniforms=jnp.zeros((2, 3)))


def test_greedy_repair_replaces_unacceptable_tokens_by_the_lms_likeliest_and_ignores_the_key(lm):
  """temperature=0: a replaced token is the LM's likeliest after the new prefix (full forward, no cache); kept
  tokens as in the sampled repair; the key does not matter."""
  ids = _rows(lm, seed=6)
  kw = {"top_k": 3, "floor": 0.05, "policy": "repair", "temperature": 0.0}
  out, _ = kv_decode.continue_samples(lm, jax.random.key(0), ids, **kw)
  again, _ = kv_decode.continue_samples(lm, jax.random.key(5), ids, **kw)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(again))
  out, ids = np.asarray(out), np.asarray(ids)
  ok, probs = _acceptable(lm, jnp.asarray(out), 3, 0.05)
  ended = np.cumsum(out == EOS, 1) - (out == EOS) > 0
  replaced = 0
  for b in range(out.shape[0]):
    for t in range(LENGTH):
      if ended[b, t]:
        continue
      if ok[b, t, ids[b, t]]:
        assert out[b, t] == ids[b, t], (b, t)
      else:
        assert out[b, t] == probs[b, t].argmax(), (b, t)
        replaced += 1
  assert replaced > 0


@pytest.mark.parametrize("penalty,window", [(1.5, 3), (0.7, 0)])
def test_repeat_penalty_lowers_recent_tokens_before_the_repairs_tests(lm, penalty, window):
  """repeat_penalty: at each position the greedy repair tests and draws under the LM's log-probabilities (full
  forward, no cache, on the new prefix) less `penalty` times each token's count among the new row's last `window`
  tokens (0: all before): kept tokens pass top-k / floor / min-p there, replaced ones are its likeliest."""
  ids = np.array(_rows(lm, seed=11, n=8))
  ids[:, 5:] = ids[:, 3:5].repeat(3, 1)[:, : LENGTH - 5]  # A loop the LM may endorse.
  kw = {"top_k": 3, "floor": 0.05, "min_ratio": 0.2, "policy": "repair", "temperature": 0.0}
  out = np.asarray(
    kv_decode.continue_samples(
      lm, jax.random.key(0), jnp.asarray(ids), repeat_penalty=penalty, repeat_window=window, **kw
    )[0]
  )
  plain = np.asarray(kv_decode.continue_samples(lm, jax.random.key(0), jnp.asarray(ids), **kw)[0])
  lm_in = jnp.concatenate([jnp.full((len(out), 1), EOS), jnp.asarray(out)[:, :-1]], axis=1)
  logp = np.asarray(jax.nn.log_softmax(lm(input_ids=lm_in, logits=True)["logits"], -1))
  ended = np.cumsum(out == EOS, 1) - (out == EOS) > 0
  replaced = 0
  for b in range(len(out)):
    for t in range(LENGTH):
      if ended[b, t]:
        continue
      before = out[b, max(0, t - window) : t] if window else out[b, :t]
      scores = logp[b, t] - penalty * np.bincount(before, minlength=VOCAB)
      probs = np.exp(scores - np.logaddexp.reduce(scores))
      kth, top = -np.sort(-probs)[2], probs.max()
      ok = (probs >= kth) & (probs >= 0.05) & (probs >= 0.2 * top)
      if ok[ids[b, t]]:
        assert out[b, t] == ids[b, t], (b, t)
      else:
        assert out[b, t] == probs.argmax(), (b, t)
        replaced += 1
  assert replaced > 0
  assert (out != plain).any()  # The penalty changed some repair.


def test_a_large_repeat_penalty_leaves_no_token_twice_in_its_window(lm):
  ids = np.array(_rows(lm, seed=12, n=16))
  out = np.asarray(
    kv_decode.continue_samples(
      lm, jax.random.key(3), jnp.asarray(ids), top_k=4, floor=0.0, policy="repair", repeat_penalty=50.0, repeat_window=4
    )[0]
  )
  # The rows themselves repeat tokens within 4 positions (24 tokens, 10 positions), so the penalty has work.
  assert any(ids[b, t] in ids[b, max(0, t - 4) : t] for b in range(len(ids)) for t in range(1, LENGTH))
  for b in range(len(out)):
    live = out[b][: (list(out[b]) + [EOS]).index(EOS)]
    for t in range(1, len(live)):
      assert live[t] not in live[max(0, t - 4) : t], (b, t, live)


@pytest.mark.parametrize("penalty,window", [(-1.0, 0), (1.0, -2), (0.0, 3)])
def test_bad_repeat_penalty_settings_are_errors(lm, penalty, window):
  with pytest.raises(ValueError, match="repeat_penalty"):
    kv_decode.continue_samples(
      lm,
      jax.random.key(0),
      jnp.zeros((2, LENGTH), jnp.int32),
      top_k=3,
      floor=0.0,
      repeat_penalty=penalty,
      repeat_window=window,
    )


def test_the_loop_takes_the_top_k_without_sorting_the_vocabulary(lm):
  # XLA:CPU lowers top_k of a fused input (the softmax's probabilities) to a sort of the whole vocabulary at every
  # position (the demo's repairs took 8x longer, docs/benchmarks.md); of the logits it keeps its TopK kernel.
  graphdef, state = nnx.split(lm)
  repair = jax.jit(
    lambda s, ids: kv_decode.continue_samples(nnx.merge(graphdef, s), jax.random.key(0), ids, top_k=3, floor=0.05)[0]
  )
  hlo = repair.lower(state, jnp.zeros((4, LENGTH), jnp.int32)).compile().as_text()
  assert " sort(" not in hlo
  assert '"TopK"' in hlo


def test_token_weights_of_one_change_nothing_and_a_zero_weight_removes_its_token(lm):
  ids = _rows(lm, seed=8, n=16)
  kw = {"top_k": VOCAB, "floor": 0.0, "policy": "repair"}  # Every token acceptable: only the weights replace.
  plain = np.asarray(kv_decode.continue_samples(lm, jax.random.key(4), ids, **kw)[0])
  ones = kv_decode.continue_samples(lm, jax.random.key(4), ids, token_weights=jnp.ones((VOCAB,)), **kw)[0]
  np.testing.assert_array_equal(np.asarray(ones), plain)
  ids = np.asarray(ids)
  v = np.bincount(ids[ids != EOS]).argmax()  # The rows' commonest token.
  out = kv_decode.continue_samples(lm, jax.random.key(4), ids, token_weights=jnp.ones((VOCAB,)).at[v].set(0.0), **kw)
  out = np.asarray(out[0])
  ended = np.cumsum(out == EOS, 1) - (out == EOS) > 0
  assert (ids == v).sum() >= 3
  assert not np.any((out == v) & ~ended)  # Neither kept nor drawn.
  np.testing.assert_array_equal(out[ids != v], ids[ids != v])  # Every other token stays.


def test_a_token_weighed_at_a_half_stays_about_half_the_time(lm):
  # Every token acceptable: token v stays where its keep draw says so (half of its positions), and a redraw
  # returns it with its LM probability halved (then renormalized; about 0.13 here).
  ids = np.array(_rows(lm, seed=9, n=64))
  ids[:, 2:8] = 5
  ids = jnp.asarray(ids)
  kw = {"top_k": VOCAB, "floor": 0.0, "policy": "repair"}
  out = kv_decode.continue_samples(lm, jax.random.key(6), ids, token_weights=jnp.ones((VOCAB,)).at[5].set(0.5), **kw)
  stays = np.asarray(out[0])[:, 2:8] == 5
  _, probs = _acceptable(lm, out[0], VOCAB, 0.0)
  drawn_back = probs[:, 2:8, 5].mean() * 0.5  # About how often a redraw returns v.
  assert abs(stays.mean() - 0.5 * (1 + drawn_back)) < 0.08, (stays.mean(), drawn_back)


def test_choice_points_follow_the_uniforms_and_every_other_position_repairs_as_before(lm):
  """choices=2: where at least 2 candidates are acceptable after the new prefix (full forward, no cache), the token
  is the inverse CDF at the row's choice uniform over them in token-id order, whatever the row had there; elsewhere
  an acceptable own token is kept and an unacceptable one redrawn; the returned points are exactly those places."""
  ids = _rows(lm, seed=3, n=8)
  u = jax.random.uniform(jax.random.key(11), ids.shape)
  kw = {"top_k": 4, "floor": 0.02, "min_ratio": 0.3, "policy": "repair"}
  out, _, points = kv_decode.continue_samples(lm, jax.random.key(2), ids, choices=2, choice_uniforms=u, **kw)
  out, points, ids, u = np.asarray(out), np.asarray(points), np.asarray(ids), np.asarray(u)
  ok, probs = _acceptable(lm, jnp.asarray(out), 4, 0.02, 0.3)
  ended = np.cumsum(out == EOS, 1) - (out == EOS) > 0
  np.testing.assert_array_equal(points, (ok.sum(-1) >= 2) & ~ended)
  assert points.any() and (~points & ~ended).any()
  changed_at_points = 0
  for b in range(out.shape[0]):
    for t in range(LENGTH):
      if ended[b, t]:
        continue
      if points[b, t]:
        cum = np.cumsum(np.where(ok[b, t], probs[b, t], 0.0))
        assert out[b, t] == np.searchsorted(cum / cum[-1], u[b, t], side="right"), (b, t)
        changed_at_points += out[b, t] != ids[b, t]
      elif ok[b, t, ids[b, t]]:
        assert out[b, t] == ids[b, t], (b, t)
      else:
        assert ok[b, t, out[b, t]], (b, t)
  assert changed_at_points > 0  # Some acceptable own tokens gave way to the uniform's choice.
  # Positions before choices_from are never choice points.
  late = kv_decode.continue_samples(
    lm, jax.random.key(2), jnp.asarray(ids), choices=2, choice_uniforms=jnp.asarray(u), choices_from=3, **kw
  )
  assert not np.asarray(late[2])[:, :3].any() and np.asarray(late[2])[:, 3:].any()
  # Where no position has that many candidates, the repair is the plain one (the same key's draws).
  plain, _ = kv_decode.continue_samples(lm, jax.random.key(2), jnp.asarray(ids), **kw)
  none = kv_decode.continue_samples(lm, jax.random.key(2), jnp.asarray(ids), choices=5, choice_uniforms=u, **kw)
  np.testing.assert_array_equal(np.asarray(none[0]), np.asarray(plain))
  assert not np.asarray(none[2]).any()


@pytest.mark.parametrize("choices, give_uniforms", [(2, False), (1, True), (-2, True)])
def test_choices_need_uniforms_and_at_least_two_candidates(lm, choices, give_uniforms):
  ids = _rows(lm)
  u = jnp.zeros(ids.shape) if give_uniforms else None
  with pytest.raises(ValueError, match="choices"):
    kv_decode.continue_samples(lm, jax.random.key(0), ids, top_k=3, floor=0.0, choices=choices, choice_uniforms=u)
