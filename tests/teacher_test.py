"""Teacher positives (driftjax/drift/teacher.py): which tokens become positives, with what weight, and the step
(with continuation positives too)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_test import tiny_config

from driftjax import sampler as sampler_lib
from driftjax import train
from driftjax import train_state
from driftjax import train_step as step_lib
from driftjax.drift import field as field_lib
from driftjax.drift import teacher

PROBS = np.array([0.5, 0.3, 0.15, 0.04, 0.008, 0.002])


def _logits(probs_per_position):
  return jnp.log(jnp.asarray(probs_per_position, jnp.float32))


def test_top_k_and_floor_pick_candidates_weighted_by_probability():
  logits = _logits(np.broadcast_to(PROBS, (2, 3, 6)))
  ids = jnp.array([[1, 2, 3], [3, 4, 5]])
  cand, w = teacher.next_token_candidates(logits, ids, top_k=4, floor=0.05)
  assert cand.shape == w.shape == (2, 3, 4)
  np.testing.assert_array_equal(cand, np.broadcast_to([0, 1, 2, 3], (2, 3, 4)))  # The 4 likeliest, best first.
  # Weights are the LM's probabilities; token 3 (p = 0.04) is below the floor and weighs 0.
  np.testing.assert_allclose(w, np.broadcast_to([0.5, 0.3, 0.15, 0.0], (2, 3, 4)), rtol=1e-5)


def test_min_ratio_drops_candidates_far_below_the_positions_top_one():
  # Position 0: twelve near-equal choices (0.07-0.10, as the grammar's names under the demo's LM) and junk at 0.02;
  # position 1: one strong token (0.9) and weak ones at 0.05 and 0.03.
  names = [0.10, 0.095, 0.09, 0.088, 0.085, 0.082, 0.08, 0.078, 0.075, 0.073, 0.072, 0.07, 0.02] + [0.0] * 5
  strong = [0.9, 0.05, 0.03, 0.02] + [0.0] * 14
  logits = _logits(np.maximum([names, strong], 1e-9)[None])
  ids = jnp.zeros((1, 2), jnp.int32)
  cand, w = teacher.next_token_candidates(logits, ids, top_k=16, floor=0.01, min_ratio=0.5)
  kept = [set(np.asarray(cand[0, t])[np.asarray(w[0, t]) > 0].tolist()) for t in range(2)]
  assert kept[0] == set(range(12))  # Every name is at least half the top one (0.10); the junk (0.02) is not.
  assert kept[1] == {0}  # Beside 0.9, the 0.05 and 0.03 tokens fall out though they clear the floor.
  # Weights stay the LM's probabilities (these lists sum to a little over 1, and the softmax renormalizes).
  np.testing.assert_allclose(np.asarray(w[0, 0])[:12], np.array(names[:12]) / sum(names), rtol=1e-4)
  # Without the ratio the top 8 above the floor: 4 names left out at position 0, the weak ones kept at 1.
  cand, w = teacher.next_token_candidates(logits, ids, top_k=8, floor=0.01)
  assert int(np.sum(np.asarray(w[0, 0]) > 0)) == 8 and int(np.sum(np.asarray(w[0, 1]) > 0)) == 4


def test_repeat_mask_flags_only_candidates_that_complete_an_earlier_ngram():
  ids = jnp.array([[5, 6, 7, 5, 6, 9]])
  cand = jnp.broadcast_to(jnp.array([7, 9, 5, 6]), (1, 6, 4))
  tri = np.asarray(teacher.repeat_mask(ids, cand, 3))[0]
  # Position 5 follows "5 6": 7 would repeat "5 6 7" (positions 0-2); 9, 5 and 6 would not.
  np.testing.assert_array_equal(tri[5], [True, False, False, False])
  assert not tri[:5].any(), "no trigram can repeat before position 5"
  bi = np.asarray(teacher.repeat_mask(ids, cand, 2))[0]
  # Position 4 follows "5": "5 6" occurred at 0-1. Position 5 follows "6": "6 7" occurred at 1-2.
  np.testing.assert_array_equal(bi[4], [False, False, False, True])
  np.testing.assert_array_equal(bi[5], [True, False, False, False])
  np.testing.assert_array_equal(bi[:4], np.zeros((4, 4), bool))
  assert not np.asarray(teacher.repeat_mask(ids, cand, 0)).any()
  # Each sample is masked against its own tokens only.
  two = teacher.repeat_mask(jnp.array([[5, 6, 7, 5, 6, 9], [1, 2, 3, 4, 5, 6]]), jnp.broadcast_to(cand, (2, 6, 4)), 3)
  assert not np.asarray(two)[1].any()


def test_masked_candidates_weigh_zero_and_padding_after_the_end_is_end_of_text():
  logits = jnp.log(jnp.asarray(np.broadcast_to([0.05, 0.05, 0.09, 0.11, 0.3, 0.4], (1, 6, 6)), jnp.float32))
  ids = jnp.array([[5, 4, 5, 1, 0, 3]])  # End-of-text is token 1 here; the sample ends at position 3.
  cand, w = teacher.next_token_candidates(logits, ids, top_k=3, floor=0.01, repeat_ngram=2, junk_ids=jnp.array([3]))
  cand, w = np.asarray(cand)[0], np.asarray(w)[0]
  np.testing.assert_array_equal(cand[0], [5, 4, 3])
  np.testing.assert_allclose(w[0], [0.4, 0.3, 0.0], rtol=1e-5)  # Token 3 is junk.
  # Position 2 follows "4"; no bigram "4 x" before it: only junk is masked.
  np.testing.assert_allclose(w[2], [0.4, 0.3, 0.0], rtol=1e-5)
  # Position 3 follows "5": "5 4" occurred at 0-1, so 4 is masked; 5 is not ("5 5" never occurred).
  np.testing.assert_allclose(w[3], [0.4, 0.0, 0.0], rtol=1e-5)
  # After the first end-of-text (position 3) every position is padding: end-of-text with weight 1.
  cand_e, w_e = teacher.next_token_candidates(logits, ids, top_k=3, floor=0.01, eos_id=1)
  np.testing.assert_array_equal(np.asarray(cand_e)[0, 4:, 0], [1, 1])
  np.testing.assert_allclose(np.asarray(w_e)[0, 4:], [[1, 0, 0], [1, 0, 0]])
  np.testing.assert_allclose(
    np.asarray(w_e)[0, :4], np.asarray(teacher.next_token_candidates(logits, ids, top_k=3, floor=0.01)[1])[0, :4]
  )


def test_teacher_loss_pulls_each_position_toward_its_own_candidates():
  table = jax.random.normal(jax.random.key(0), (10, 16))
  ids = jnp.array([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
  w = jnp.ones((3, 3, 1))
  emb = table[ids]

  def grad(cand):
    return jax.grad(lambda e: teacher.teacher_loss(e, ids, cand, w, table, config=field_lib.FieldConfig())[0])(emb)

  # Every position's only positive is token 9, which no sample holds: descent moves every row toward it.
  g = grad(jnp.full((3, 3, 1), 9, jnp.int32))
  toward = table[9][None, None] - emb
  assert np.all(np.asarray(jnp.sum(-g * toward, -1)) > 0)
  # Sample 0 already sits on its candidate: its force is several times smaller than the others' (a residual
  # repulsion from the other samples' tokens remains, mostly from the broadest temperature).
  cand = jnp.concatenate([ids[:1, :, None], jnp.full((2, 3, 1), 9, jnp.int32)], 0)
  norms = np.linalg.norm(np.asarray(grad(cand)), axis=-1)
  assert norms[0].mean() < 0.2 * norms[1:].mean(), norms


@pytest.mark.parametrize(
  "positives, policy",
  [
    ("data+continuation", "continue"),
    ("data+teacher+continuation", "resample"),  # With the mixture cross-entropy and the pooled bag.
    ("continuation", "coupled"),  # Repairs whose draws and choice points follow the generator's noise.
    ("continuation", "repair"),  # Greedy draws (M copies of one row), the linear straight-through head.
  ],
)
def test_train_step_with_teacher_positives_is_finite_and_compiles_once(tmp_path, positives, policy):
  # Each part of drift.positives at least once, both kinds of continuation (sequential and one-pass). The continue
  # and greedy repair cases add the cross-entropy toward the continuations (the likeliest of M rows / the one row
  # of each sample). Each case is a compilation of the step (most of its time): the cases share the options out;
  # the 512-token test vocabulary keeps the LM's decoding loops and the vocab head's terms small.
  config = tiny_config(small_vocab=True)
  config.model.head = "vocab"
  config.model.vocab_mode = "straight_through"
  config.drift.positives = positives
  config.drift.continuation_policy = "repair" if policy == "coupled" else policy
  config.drift.continuation_coupling = "noise" if policy == "coupled" else "none"
  if policy == "coupled":  # Choice points: where at least 2 candidates pass (the random LM: most positions).
    config.drift.continuation_choices = 2
  if policy == "continue":  # The generator reads its draft with the LM (model.draft_blocks).
    config.model.draft_blocks = 1
  if policy in ("resample", "continue"):  # Candidates within a ratio of the top one (drift.teacher_min_ratio).
    config.drift.teacher_min_ratio = 0.3
  if policy == "repair":  # A slotted layout: sentences every 8 positions (model.layout_multiple).
    config.drift.continuation_temperature = 0.0
    config.model.vocab_mode = "straight_through_linear"
    config.model.layout_multiple, config.model.layout_positions = 8, 40
  if policy in ("continue", "repair"):
    config.drift.continuation_ce_weight = 0.5
  if policy == "continue":  # And the continuations' repetition penalty on the last 4 tokens.
    config.drift.continuation_ce_target = "likeliest"
    config.drift.continuation_repeat_penalty, config.drift.continuation_repeat_window = 1.0, 4
  if policy == "repair":  # And each sample's cross-entropy toward its matched real row: first 6 tokens
    # aligned, bags; the repairs balanced against the real rows' tokens.
    config.drift.continuation_balance = 1.0
    config.drift.matched_ce_weight, config.drift.matched_ce_positions = 0.5, 6
    config.drift.matched_ce_bag_weight, config.drift.matched_ce_gap = 1.0, 2.0
  if policy == "resample":  # And the mixture cross-entropy of the real rows' first 4 tokens, and their bags.
    config.drift.mixture_ce_weight, config.drift.mixture_ce_positions = 0.5, 4
    config.drift.mixture_bag_weight = 0.5
  config.drift.teacher_floor = 0.0  # The random smoke LM spreads its probability over the whole vocabulary.
  config.drift.teacher_repeat_ngram = 2
  config.drift.teacher_repeat_window = 2
  trainer = train.setup(config, str(tmp_path / f"{positives.replace('+', '_')}_{policy}"))
  state = trainer.init_state()
  state, metrics = trainer.step_fn(state, trainer.next_batch(), trainer.enc_state)  # The one compilation.
  compiles = []
  listener = lambda event, duration, compiles=compiles, **kw: (
    compiles.append(event) if "backend_compile" in event else None
  )
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    for _ in range(2):
      state, metrics = trainer.step_fn(state, trainer.next_batch(), trainer.enc_state)
    metrics = jax.device_get(metrics)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiles == [], f"{positives}: {len(compiles)} compilations after the first step"
  v = trainer.cfg.gen.vocab_size
  assert v == 512
  keys = {"teacher": ("loss/teacher", "diag/eff_positives"), "continuation": ("loss/continuation",)}
  for key in ("loss", "grad_norm", "diag/dup_adjacent") + sum((keys.get(p, ()) for p in positives.split("+")), ()):
    assert np.isfinite(metrics[key]), (positives, key, metrics[key])
  assert metrics["grad_norm"] > 0
  assert any(k.startswith("loss/raw") for k in metrics) == ("data" in positives)
  assert ("loss/continuation_ce" in metrics) == (policy in ("continue", "repair"))
  assert ("loss/mixture_ce" in metrics) == (policy == "resample")
  if "loss/mixture_ce" in metrics:  # Between 0 and a token no sample offers (log(V / 1e-4)).
    assert 0 < metrics["loss/mixture_ce"] < np.log(v / 1e-4)
    # A random head's pooled bag is near uniform: its divergence from the real bag is about log V - entropy.
    assert 1.0 < metrics["loss/mixture_bag"] < np.log(v)
  assert ("loss/matched_ce" in metrics) == (policy == "repair")
  if "loss/matched_ce" in metrics:  # A random head: about log V per token, nearly every token off its match.
    assert 1.0 < metrics["loss/matched_ce"] < 2 * np.log(v)
    assert 0.5 < metrics["diag/matched_changed"] <= 1
    # The bags: about log V under a random head; a random head shares almost no tokens with its match.
    assert 1.0 < metrics["loss/matched_bag"] < 2 * np.log(v)
    assert 0 <= metrics["diag/matched_bag_overlap"] < 0.5
  if "loss/continuation_ce" in metrics:  # The smoke generator's head spreads over the V tokens: about log V.
    assert 1.0 < metrics["loss/continuation_ce"] < 2 * np.log(v)
  assert ("diag/draft_changed" in metrics) == (policy == "continue")
  if policy == "continue":  # Two updates moved the LM's weight in the final logits off zero.
    assert 0 <= metrics["diag/draft_changed"] <= 1 and metrics["diag/draft_gate"] != 0
  assert ("diag/balance_keep" in metrics) == (policy == "repair")
  if policy == "repair":  # A random head's tokens are seldom in real rows: their weights are small or 0.
    assert 0 <= metrics["diag/balance_keep"] < 0.5
  assert ("diag/choice_points" in metrics) == (policy == "coupled")
  if policy == "coupled":  # The random smoke LM's min-p candidates: several at most positions.
    assert 0 < metrics["diag/choice_points"] <= 1
  assert ("diag/layout_filler" in metrics) == (policy == "repair")
  if policy == "repair":  # The text fills the layout's first 32 of 40 positions or more: few fillers yet.
    assert 0 <= metrics["diag/layout_filler"] <= 0.2 and 0 <= metrics["diag/layout_short"] <= 1
  if policy in ("continue", "repair"):  # Sampling reads the draft / drops the fillers: text of seq_len tokens.
    gen = sampler_lib.from_params(
      config, trainer.graphdef, state["ema"], trainer.cfg.gen, trainer.encoder, trainer.tokenizer, batch=2
    )
    assert gen.generate(2, jax.random.key(0))[0].shape == (2, config.model.seq_len)
  if "continuation" in positives:
    # The random LM finds most sampled tokens unlikely: the continuations differ from the samples.
    assert 0 < metrics["diag/cont_changed"] <= 1 and metrics["diag/cont_first_changed"] >= 0
    assert any(k.startswith("cont/loss/") for k in metrics)


def test_resample_keeps_likely_tokens_and_draws_the_others_by_weight():
  ids = jnp.array([[3, 7, 5, 9]])
  # Position 0: 3 is a candidate (kept). 1: 7 is a candidate of weight 0 (masked, so unlikely): drawn from
  # {2: 0.75, 4: 0.25}. 2: 5 is no candidate: drawn from {6: 1}. 3: nothing weighs > 0: the top candidate, 8.
  cand = jnp.array([[[3, 1, 0], [2, 4, 7], [6, 1, 0], [8, 1, 2]]])
  w = jnp.array([[[0.6, 0.3, 0.0], [0.75, 0.25, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
  m = 4000
  rows, likely = teacher.resample_unlikely(jax.random.key(0), ids, cand, w, m)
  rows = np.asarray(rows)
  assert rows.shape == (m, 4)
  np.testing.assert_array_equal(np.asarray(likely), [[True, False, False, False]])
  np.testing.assert_array_equal(rows[:, 0], 3)
  assert set(np.unique(rows[:, 1])) == {2, 4}
  np.testing.assert_allclose(np.mean(rows[:, 1] == 2), 0.75, atol=0.03)
  np.testing.assert_array_equal(rows[:, 2], 6)
  np.testing.assert_array_equal(rows[:, 3], 8)
  # Copies are sample-major: rows b*M .. b*M+M-1 belong to sample b.
  two, _ = teacher.resample_unlikely(
    jax.random.key(1),
    jnp.array([[3, 7], [3, 7]]),
    cand[:, :2].repeat(2, 0),
    w[:, :2].repeat(2, 0).at[1, 1, 2].set(1.0),
    3,
  )
  np.testing.assert_array_equal(np.asarray(two)[3:, 1], 7)  # Sample 1's 7 has weight there: kept in its copies.


def test_diagnostics_count_duplicates_before_the_end_and_effective_positives():
  ids = jnp.array([[4, 4, 5, 0, 0, 0], [4, 2, 3, 2, 2, 0]])  # End-of-text is 0: its padding is not a repeat.
  w = jnp.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])[:, None, :] * jnp.ones((1, 6, 1))
  d = jax.device_get(teacher.diagnostics(ids, 6, None, w, eos_id=0))
  np.testing.assert_allclose(d["diag/dup_adjacent"], 2 / 6)  # (4, 4) and (2, 2) among 2 + 4 pairs before the end.
  np.testing.assert_allclose(d["diag/eff_positives"], 1.5)  # Two equal candidates count 2, one counts 1.
  np.testing.assert_allclose(d["diag/agree"], np.mean([2, 1, 1, 1, 1, 2]) / 2)


def repair_ce_config(**drift):
  """The smoke config with the demo's kind of step: repairs, each sample's own, a vocab head, the repairs'
  cross-entropy at 0.5; plus the given drift settings. The 512-token test vocabulary."""
  config = tiny_config(small_vocab=True)
  config.model.head = "vocab"
  config.model.vocab_mode = "straight_through"
  config.drift.positives = "continuation"
  config.drift.continuation_policy = "repair"
  config.drift.continuation_kernel = "own"
  config.drift.teacher_floor = 0.0  # The random smoke LM spreads its probability over the whole vocabulary.
  config.drift.continuation_ce_weight = 0.5
  for key, value in drift.items():
    config.drift[key] = value
  return config


def test_continuation_cross_entropy_starts_at_its_step(tmp_path):
  trainer = train.setup(repair_ce_config(continuation_ce_start=3), str(tmp_path))
  cfg = trainer.cfg
  out = jax.random.normal(jax.random.key(0), (cfg.n_gen, cfg.gen.seq_len, cfg.gen.vocab_size))
  # The outputs are an argument, not a constant of the program: closing over a (8, 32, 50,257) array made XLA
  # fold it into the program, and compiling took minutes instead of seconds.
  loss = jax.jit(
    lambda out, step: step_lib.generated_loss(trainer.encoder, out, None, None, cfg, key=jax.random.key(1), step=step)
  )
  (before, m_before), (at, m_at) = loss(out, jnp.int32(2)), loss(out, jnp.int32(3))
  # The same continuations (same key) and field; from step 3 on the total adds 0.5 x the cross-entropy.
  np.testing.assert_allclose(float(m_at["loss/continuation_ce"]), float(m_before["loss/continuation_ce"]), rtol=1e-6)
  assert float(m_at["loss/continuation_ce"]) > 1.0
  np.testing.assert_allclose(float(at - before), 0.5 * float(m_at["loss/continuation_ce"]), rtol=1e-5)
  with pytest.raises(ValueError, match="needs the training step"):
    step_lib.generated_loss(trainer.encoder, out, None, None, cfg, key=jax.random.key(1))


def test_balance_weights_are_the_real_share_over_the_samples_share_at_most_one():
  real = jnp.array([[1, 1, 2, 3, 4, 4]])  # Token 4: end-of-text, left out of both shares.
  gen = jnp.array([[1, 2, 2, 2, 4, 4], [0, 4, 4, 4, 4, 4]])
  w = np.asarray(step_lib.balance_weights(gen, real, vocab_size=6, eos=4))
  # Real shares 1: 1/2, 2: 1/4, 3: 1/4; the samples' 0: 1/5, 1: 1/5, 2: 3/5.
  np.testing.assert_allclose(w, [0.0, 1.0, (1 / 4) / (3 / 5), 1.0, 1.0, 1.0], rtol=1e-6)
  half = np.asarray(step_lib.balance_weights(gen, real, vocab_size=6, eos=4, power=0.5))
  np.testing.assert_allclose(half, np.sqrt(w), rtol=1e-6)


@pytest.mark.parametrize(
  "positives, policy, power",
  [("data", "repair", 1.0), ("continuation", "resample", 1.0), ("continuation", "repair", -1.0)],
)
def test_balance_settings_are_checked(positives, policy, power):
  config = tiny_config()
  config.model.head = "vocab"
  config.drift.positives, config.drift.continuation_policy = positives, policy
  config.drift.continuation_balance = power
  with pytest.raises(ValueError, match="continuation_balance"):
    train_state.step_config(config, 64, 100)


@pytest.mark.parametrize(
  "positives, policy, choices, layout, start",
  [
    ("data", "repair", 2, 0, 0),
    ("continuation", "continue", 2, 0, 0),
    ("continuation", "repair", 1, 0, 0),
    ("continuation", "repair", 2, 8, 0),  # The noise is read at the text's positions, which a layout moves.
    ("continuation", "repair", 0, 0, 16),  # A first choice position while choice points are off.
    ("continuation", "repair", 2, 0, -1),
  ],
)
def test_choice_settings_are_checked(positives, policy, choices, layout, start):
  config = tiny_config()
  config.model.head = "vocab"
  config.drift.positives, config.drift.continuation_policy = positives, policy
  config.drift.continuation_choices, config.drift.continuation_choices_from = choices, start
  if layout:
    config.model.layout_multiple, config.model.layout_positions = layout, 40
  with pytest.raises(ValueError, match="continuation_choices"):
    train_state.step_config(config, 64, 100, sentence_ends=(3,))
