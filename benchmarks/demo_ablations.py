"""Ablations of the demo's choices (docs/demo.md): which field, features and output head move text toward data.

python benchmarks/demo_ablations.py --workdir=runs/demo [--kind=particles|generator] [--steps=N] [--only="a;b"]
  [--seeds=0,1,...] [--show=N] [--log_every=N] [--samples=N] [--holdout=N]
Needs DIR/encoder from a demo run (--mode=pretrain_encoder or --mode=demo with configs/demo.py).

- particles: no generator. 32 free sequences of logits are optimized directly (Adam, lr 0.1) with the drift loss
  against fresh real stories each step: what the objective itself can reach, in seconds per variant.
- generator: the demo's generator trained for --steps steps with each variant.
Each row: gen-PPL under the demo's LM and under an independent evaluator LM (DIR/evaluator, when present: a
second LM pretrained with another seed and about twice the parameters; the teacher variants' positives come from
the demo's LM, so only this column is a fair score for them), grammatical_rate, distinct-2 over the set, the
share of samples agreeing on the token at each position (mean over positions; real stories: see the `data` row),
the share of adjacent duplicated tokens, the vocab head's median top probability, the teacher's effective
positives per position and, with continuation positives, the share of the samples' tokens that their
continuations change (cont_changed: how much of them the LM would rewrite). "probe.queue": Q earlier particles'
decoded tokens (a FIFO of the last steps) are extra negatives of the teacher loss, as a generator never repels
the same samples forever. --show=N prints N samples under each row; --log_every=N prints a generator's training
diagnostics every N steps (where a run collapses).
The evaluator: python -m driftjax.main --config=configs/demo.py --workdir=DIR --mode=pretrain_encoder
  --config.seed=1 --config.pretrain.n_embd=176 --config.pretrain.out_dir=evaluator
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import demo as demo_config  # noqa: E402
from driftjax import text_metrics  # noqa: E402
from driftjax import build  # noqa: E402
from driftjax import sampler as sampler_lib  # noqa: E402
from driftjax import train  # noqa: E402
from driftjax import train_step as step_lib  # noqa: E402
from driftjax.data import tokenizer as tok_lib  # noqa: E402
from driftjax.data import synthetic  # noqa: E402
from driftjax.models import decode  # noqa: E402
from driftjax.models import gpt2  # noqa: E402

ALL_POOLS = ("pos", "mean", "std", "win4_mean", "win16_mean")
# The demo's positives: the LM's repairs of each sample, each sample drawn only to its own (docs/demo.md).
REPAIR_OWN = {
  "drift.positives": "continuation",
  "drift.continuation_policy": "repair",
  "drift.continuation_kernel": "own",
}
# name -> config overrides on top of configs/demo.py with the cross-entropies and the pooled bag off and the field
# at full weight (FIELD_ALONE), as in the rows of sessions 1-9, and with the repair rule, held-out split and real
# stories per step every row before session 17 had (the LM's top 8 above 0.01; 256 held-out stories, so the LMs of
# a workdir from before keep their training split; 32 real stories); configs/demo.py itself is DEMO_18 (since
# session 18; DEMO_17 in session 17, DEMO_13 in sessions 13-16, "matched 16, field x0.2" in session 12, DEMO
# before).
FIELD_ALONE = {
  "drift.continuation_ce_weight": 0.0,
  "drift.continuation_ce_start": 0,
  "drift.matched_ce_weight": 0.0,
  "drift.mixture_bag_weight": 0.0,
  "drift.continuation_weight": 1.0,
  "drift.teacher_top_k": 8,
  "drift.teacher_min_ratio": 0.0,
  "data.holdout": 256,
  "data.n_pos": 32,
}
# The demo of sessions 9-11: the repair cross-entropy from step 300.
DEMO = {**REPAIR_OWN, "drift.continuation_ce_weight": 1.0, "drift.continuation_ce_start": 300}
# Session 11's setting: the repair cross-entropy from step 0 and the matched cross-entropy on the first 16 tokens.
MATCHED_16 = {
  **REPAIR_OWN,
  "drift.continuation_ce_weight": 1.0,
  "drift.matched_ce_weight": 1.0,
  "drift.matched_ce_positions": 16,
}
# configs/demo.py of session 12: MATCHED_16 with the field at a fifth of its weight; since session 13 configs/demo.py
# is the variant "demo + mixture bigram bag x1".
DEMO_12 = {**MATCHED_16, "drift.continuation_weight": 0.2}
# configs/demo.py of session 13: DEMO_12 with the pooled bag of adjacent pairs.
DEMO_13 = {**DEMO_12, "drift.mixture_bag_weight": 1.0, "drift.mixture_bag_n": 2}
# configs/demo.py of session 17: DEMO_13 whose repairs keep the LM's top 16 within 0.3 of its top probability.
DEMO_17 = {**DEMO_13, "drift.teacher_top_k": 16, "drift.teacher_min_ratio": 0.3}
# configs/demo.py of session 18: DEMO_17 with 128 real stories per step (the bag's target, the matching's choices).
DEMO_18 = {**DEMO_17, "data.n_pos": 128}
# Sentence slots (model.layout_multiple): sentence k starts at position k times the slot, so no position has to add
# up the lengths of the sentences before it; the matched opening covers the opening's slots.
SLOTS_16 = {"model.layout_multiple": 16, "model.layout_positions": 176, "drift.matched_ce_positions": 32}
SLOTS_12 = {"model.layout_multiple": 12, "model.layout_positions": 144, "drift.matched_ce_positions": 36}
VARIANTS = {
  "demo (flat kernel, straight-through)": {},
  "flat, soft expected embedding": {"model.vocab_mode": "soft"},
  "flat, embedding head (paper's output)": {"model.head": "embedding"},
  "per-position + global poolings": {"drift.poolings": ALL_POOLS},
  "per-position only": {"drift.poolings": ("pos",)},
  "per-position, soft": {"drift.poolings": ("pos",), "model.vocab_mode": "soft"},
  "flat + per-position + global": {"drift.poolings": ("flat",) + ALL_POOLS},
  "flat, T=(0.02,)": {"drift.temperatures": (0.02,)},
  "flat, T=(0.2,)": {"drift.temperatures": (0.2,)},
  "flat, T=(0.05, 0.2, 0.5)": {"drift.temperatures": (0.05, 0.2, 0.5)},
  "flat, port softmax double_floor": {"drift.softmax": "double_floor"},
  "flat, port softmax cols": {"drift.softmax": "cols"},
  "flat, no drift normalization": {"drift.drift_norm": "none"},
  "flat, temperatures in feature units": {"drift.temperature_units": "feature"},
  "flat, raw embeddings only": {"drift.layers": ()},
  "flat, last layer only, no raw": {"drift.layers": (2,), "drift.raw": False},
  "flat, 128 positives": {"data.n_pos": 128},
  "flat, queue 64": {"data.queue_size": 64},
  # Teacher positives (issue 14): per position, the LM's top-k next tokens after the sample's own prefix.
  "teacher": {"drift.positives": "teacher"},
  "teacher, 3-gram repeat mask": {"drift.positives": "teacher", "drift.teacher_repeat_ngram": 3},
  "teacher, 2-gram repeat mask": {"drift.positives": "teacher", "drift.teacher_repeat_ngram": 2},
  "teacher, 3-gram, queue 64": {"drift.positives": "teacher", "drift.teacher_repeat_ngram": 3, "probe.queue": 64},
  "teacher, 3-gram, repeat window 4": {
    "drift.positives": "teacher",
    "drift.teacher_repeat_ngram": 3,
    "drift.teacher_repeat_window": 4,
  },
  "teacher, 3-gram, T=(0.02, 0.05)": {
    "drift.positives": "teacher",
    "drift.teacher_repeat_ngram": 3,
    "drift.temperatures": (0.02, 0.05),
  },
  "teacher, 3-gram, top-32, floor 0.001": {
    "drift.positives": "teacher",
    "drift.teacher_repeat_ngram": 3,
    "drift.teacher_top_k": 32,
    "drift.teacher_floor": 0.001,
  },
  "data+teacher, 3-gram": {"drift.positives": "data+teacher", "drift.teacher_repeat_ngram": 3},
  # Continuation positives (issue 14 option 2): the LM's continuations of each sample from its first unlikely
  # token, whole-sample features like the data's.
  "continuation": {"drift.positives": "continuation"},
  "continuation, repair": {"drift.positives": "continuation", "drift.continuation_policy": "repair"},
  "data+continuation": {"drift.positives": "data+continuation"},
  "data+continuation, repair": {"drift.positives": "data+continuation", "drift.continuation_policy": "repair"},
  "continuation, resample": {"drift.positives": "continuation", "drift.continuation_policy": "resample"},
  "data+continuation, resample": {"drift.positives": "data+continuation", "drift.continuation_policy": "resample"},
  "data+continuation, resample, 3-gram": {
    "drift.positives": "data+continuation",
    "drift.continuation_policy": "resample",
    "drift.teacher_repeat_ngram": 3,
  },
  "data+continuation, resample, own": {
    "drift.positives": "data+continuation",
    "drift.continuation_policy": "resample",
    "drift.continuation_kernel": "own",
  },
  "data+continuation, own": {"drift.positives": "data+continuation", "drift.continuation_kernel": "own"},
  "continuation, repair, own": REPAIR_OWN,
  "data+continuation, repair, own": {
    **REPAIR_OWN,
    "drift.positives": "data+continuation",
  },
  "continuation, repair, own, floor 0.05": {
    **REPAIR_OWN,
    "drift.teacher_floor": 0.05,
  },
  "continuation, repair, own, top-4, floor 0.1": {
    **REPAIR_OWN,
    "drift.teacher_top_k": 4,
    "drift.teacher_floor": 0.1,
  },
  "continuation, repair, own, 3-gram repeat mask": {
    **REPAIR_OWN,
    "drift.teacher_repeat_ngram": 3,
  },
  "continuation, repair, own, M=1": {
    **REPAIR_OWN,
    "drift.continuation_samples": 1,
  },
  "continuation, repair, own, M=8": {
    **REPAIR_OWN,
    "drift.continuation_samples": 8,
  },
  "data+continuation, repair, own, continuation x3": {
    **REPAIR_OWN,
    "drift.positives": "data+continuation",
    "drift.continuation_weight": 3.0,
  },
  "data+continuation, repair, own, continuation x3, queue 256": {
    **REPAIR_OWN,
    "drift.positives": "data+continuation",
    "drift.continuation_weight": 3.0,
    "data.queue_size": 256,
  },
  # The head's gradient linear in the logits (session 8): every token's logit moves by its first-order effect on
  # the loss, not scaled by its probability (the soft gradient vanishes for tokens the head does not favour).
  "continuation, repair, own, linear ST": {**REPAIR_OWN, "model.vocab_mode": "straight_through_linear"},
  "data positives, linear ST": {"drift.positives": "data", "model.vocab_mode": "straight_through_linear"},
  "continuation, repair, own, linear ST, floor 0.05": {
    **REPAIR_OWN,
    "model.vocab_mode": "straight_through_linear",
    "drift.teacher_floor": 0.05,
  },
  "continuation, repair, own, linear ST, top-4, floor 0.1": {
    **REPAIR_OWN,
    "model.vocab_mode": "straight_through_linear",
    "drift.teacher_top_k": 4,
    "drift.teacher_floor": 0.1,
  },
  "teacher, 3-gram, linear ST": {
    "drift.positives": "teacher",
    "drift.teacher_repeat_ngram": 3,
    "model.vocab_mode": "straight_through_linear",
  },
  "teacher+continuation, repair, own, linear ST": {
    **REPAIR_OWN,
    "drift.positives": "teacher+continuation",
    "model.vocab_mode": "straight_through_linear",
  },
  # Each side of the kernel normalized on its own (session 8): the joint column softmax scales a row's field by
  # Z_pos Z_neg / (Z_pos + Z_neg)^2, which vanishes when its peers are much nearer than its positives.
  "continuation, repair, own, split softmax": {**REPAIR_OWN, "drift.softmax": "split"},
  "continuation, repair, own, linear ST, split softmax": {
    **REPAIR_OWN,
    "model.vocab_mode": "straight_through_linear",
    "drift.softmax": "split",
  },
  "continuation, repair, own, ST backward at T=2": {**REPAIR_OWN, "model.st_temperature": 2.0},
  "continuation, repair, own, linear ST, lr 1e-3": {
    **REPAIR_OWN,
    "model.vocab_mode": "straight_through_linear",
    "optim.lr": 1e-3,
  },
  "continuation, repair, own, linear ST, centred": {
    **REPAIR_OWN,
    "model.vocab_mode": "straight_through_linear",
    "model.linear_center": "batch",
  },
  "continuation, repair, own, linear ST, centred per sample": {
    **REPAIR_OWN,
    "model.vocab_mode": "straight_through_linear",
    "model.linear_center": "sample",
  },
  "continuation, repair, own, linear ST, centred over the vocabulary": {
    **REPAIR_OWN,
    "model.vocab_mode": "straight_through_linear",
    "model.linear_center": "vocab",
  },
  "continuation, repair, own, ST + 0.01 linear": {**REPAIR_OWN, "model.linear_mix": 0.01},
  "continuation, repair, own, ST + 0.001 linear": {**REPAIR_OWN, "model.linear_mix": 0.001},
  "continuation, repair, own, linear ST, top-16": {
    **REPAIR_OWN,
    "model.vocab_mode": "straight_through_linear",
    "model.linear_top_k": 16,
  },
  # The field plus the cross-entropy of the head's logits toward the repairs' tokens (session 9).
  "continuation, repair, own, + repair CE x1": {**REPAIR_OWN, "drift.continuation_ce_weight": 1.0},
  "continuation, repair, own, + repair CE x0.1": {**REPAIR_OWN, "drift.continuation_ce_weight": 0.1},
  "continuation, repair, own, + repair CE x1 from step 300": {
    **REPAIR_OWN,
    "drift.continuation_ce_weight": 1.0,
    "drift.continuation_ce_start": 300,
  },
  # When and how strongly (session 10).
  "continuation, repair, own, + repair CE x1 from step 150": {
    **REPAIR_OWN,
    "drift.continuation_ce_weight": 1.0,
    "drift.continuation_ce_start": 150,
  },
  "continuation, repair, own, + repair CE x1 from step 450": {
    **REPAIR_OWN,
    "drift.continuation_ce_weight": 1.0,
    "drift.continuation_ce_start": 450,
  },
  "continuation, repair, own, + repair CE x0.3 from step 300": {
    **REPAIR_OWN,
    "drift.continuation_ce_weight": 0.3,
    "drift.continuation_ce_start": 300,
  },
  "continuation, repair, own, + repair CE x3 from step 300": {
    **REPAIR_OWN,
    "drift.continuation_ce_weight": 3.0,
    "drift.continuation_ce_start": 300,
  },
  # Coverage (session 10): real stories' tokens under the batch's mixture of the head's distributions.
  "demo + mixture CE x1, first 16 positions": {
    **DEMO,
    "drift.mixture_ce_weight": 1.0,
    "drift.mixture_ce_positions": 16,
  },
  "demo + mixture CE x1, all positions": {**DEMO, "drift.mixture_ce_weight": 1.0},
  "demo + mixture CE x0.3, first 16 positions": {
    **DEMO,
    "drift.mixture_ce_weight": 0.3,
    "drift.mixture_ce_positions": 16,
  },
  "demo + mixture CE x1, first 16 positions, repair CE from step 150": {
    **DEMO,
    "drift.continuation_ce_start": 150,
    "drift.mixture_ce_weight": 1.0,
    "drift.mixture_ce_positions": 16,
  },
  "demo + mixture CE x1, first 16 positions, repair CE from step 150, 900 steps": {
    **DEMO,
    "drift.continuation_ce_start": 150,
    "drift.mixture_ce_weight": 1.0,
    "drift.mixture_ce_positions": 16,
    "optim.total_steps": 900,
  },
  "demo + mixture CE x1, first 16 positions, repair CE from step 0": {
    **REPAIR_OWN,
    "drift.continuation_ce_weight": 1.0,
    "drift.mixture_ce_weight": 1.0,
    "drift.mixture_ce_positions": 16,
  },
  "demo + mixture CE x1, first 32 positions, repair CE from step 0": {
    **REPAIR_OWN,
    "drift.continuation_ce_weight": 1.0,
    "drift.mixture_ce_weight": 1.0,
    "drift.mixture_ce_positions": 32,
  },
  # Coverage (session 11): each sample's cross-entropy toward one real story of the batch, matched one to one.
  "demo + matched CE x1, first 16 positions, repair CE from step 0": MATCHED_16,
  "demo + matched CE x1, first 16 positions, repair CE from step 0, seed 1": {**MATCHED_16, "seed": 1},
  "demo + matched CE x1, first 16 positions, repair CE from step 0, repairs at temperature 0.5": {
    **MATCHED_16,
    "drift.continuation_temperature": 0.5,
  },
  "demo + matched CE x1, first 16 positions, repair CE x2 from step 0": {
    **MATCHED_16,
    "drift.continuation_ce_weight": 2.0,
  },
  "demo + matched CE x1, first 32 positions, repair CE from step 0": {**MATCHED_16, "drift.matched_ce_positions": 32},
  "demo + matched CE x1, all positions, repair CE from step 0": {**MATCHED_16, "drift.matched_ce_positions": 0},
  # Late-story grammar (session 12): one consistent cross-entropy target per sample; a stricter acceptance.
  "matched 16, repair CE toward the likeliest draw": {**MATCHED_16, "drift.continuation_ce_target": "likeliest"},
  "matched 16, floor 0.05": {**MATCHED_16, "drift.teacher_floor": 0.05},
  # The LM's continuations from each sample's first unlikely token (later sentences rewritten, not patched), the
  # cross-entropy toward the likeliest of them.
  "matched 16, continue, CE toward the likeliest draw": {
    **MATCHED_16,
    "drift.continuation_policy": "continue",
    "drift.continuation_ce_target": "likeliest",
  },
  # Twice the steps (run with --steps=1200): is the step budget the limit?
  "matched 16, 1,200 steps": {**MATCHED_16, "optim.total_steps": 1200},
  # Half the learning rate: is the steps' noise (a target that moves with the samples) the limit?
  "matched 16, lr 1.5e-3": {**MATCHED_16, "optim.lr": 1.5e-3},
  # What each part does: the cross-entropies without the field or with a weaker one; the generator's size.
  "matched 16, no field (the two cross-entropies only)": {**MATCHED_16, "drift.continuation_weight": 0.0},
  "matched 16, field x0.2": {**MATCHED_16, "drift.continuation_weight": 0.2},
  "matched 16, generator 256 wide, 4 deep": {**MATCHED_16, "model.width": 256, "model.depth": 4},
  # Coverage of the later choices (session 13): the matching and the matched cross-entropy also compare the
  # whole bags of tokens (order ignored), so a sample is matched to, and pulled to, a story with its later choices.
  "demo + bag x1": {**DEMO_12, "drift.matched_ce_bag_weight": 1.0},
  "demo + bag x3": {**DEMO_12, "drift.matched_ce_bag_weight": 3.0},
  # The batch's pooled bag against the real rows': the samples together say each token as often as stories do.
  "demo + mixture bag x1": {**DEMO_12, "drift.mixture_bag_weight": 1.0},
  "demo + mixture bag x3": {**DEMO_12, "drift.mixture_bag_weight": 3.0},
  # Bags of adjacent pairs (bag-of-ngrams training, arXiv 1911.09320, pooled over the batch).
  "demo + mixture bigram bag x1": {**DEMO_12, "drift.mixture_bag_weight": 1.0, "drift.mixture_bag_n": 2},
  "demo + mixture bigram bag x3": {**DEMO_12, "drift.mixture_bag_weight": 3.0, "drift.mixture_bag_n": 2},
  "demo + mixture trigram bag x1": {**DEMO_12, "drift.mixture_bag_weight": 1.0, "drift.mixture_bag_n": 3},
  "demo + mixture bigram bag x1 + bag x1": {
    **DEMO_12,
    "drift.mixture_bag_weight": 1.0,
    "drift.mixture_bag_n": 2,
    "drift.matched_ce_bag_weight": 1.0,
  },
  "demo + mixture bag x1, 64 samples per step": {
    **DEMO_12,
    "drift.mixture_bag_weight": 1.0,
    "data.n_gen": 64,
    "data.n_pos": 64,
  },
  "demo + bag x1 + mixture bag x1": {**DEMO_12, "drift.matched_ce_bag_weight": 1.0, "drift.mixture_bag_weight": 1.0},
  # Session 14: the matched cross-entropy over whole stories under the cheapest monotone alignment of sample and
  # match (each unaligned token costs the gap, in nats), so late sentences said a few tokens off still meet theirs.
  "demo13 + aligned matched CE, all positions, gap 4": {
    **DEMO_13,
    "drift.matched_ce_positions": 0,
    "drift.matched_ce_gap": 4.0,
  },
  "demo13 + aligned matched CE, all positions, gap 2": {
    **DEMO_13,
    "drift.matched_ce_positions": 0,
    "drift.matched_ce_gap": 2.0,
  },
  "demo13, 1,200 steps": {**DEMO_13, "optim.total_steps": 1200},
  # Twice the samples and real stories per step: the pooled bag and the matching see more of the data's choices
  # (with the bag of single tokens, session 13, coverage 0.46 -> 0.40). Session 14 stopped it at step 200.
  "demo13, 64 + 64 samples per step": {**DEMO_13, "data.n_gen": 64, "data.n_pos": 64},
  # The repairs' cross-entropy is what teaches grammar: twice its weight, or eight repairs per sample (a less
  # noisy average where the repairs disagree).
  "demo13, repair CE x2": {**DEMO_13, "drift.continuation_ce_weight": 2.0},
  "demo13, 8 repairs per sample": {**DEMO_13, "drift.continuation_samples": 8},
  # One noise draw per sample, read at every position (model.noise_scope): 94% of the demo's broken sentences hold
  # a token the LM's repair rule rejects, so the generator does not reach its own repairs there; with a draw per
  # position, neighbouring positions can take different choices (blends of two templates).
  "demo13, one noise draw per sample": {**DEMO_13, "model.noise_scope": "sample"},
  # A bigger generator now that the field no longer pulls against the cross-entropies (session 12 tried it only
  # with the field at full weight).
  "demo13, generator 256 wide, 4 deep": {**DEMO_13, "model.width": 256, "model.depth": 4},
  # Stricter repairs: a kept token needs probability >= 0.03 (0.01 in the demo) under the LM. Every name after
  # "named" has 0.07-0.10 and every object about 0.1, so the choices stay; weak transitions are redrawn.
  "demo13, repairs with floor 0.03": {**DEMO_13, "drift.teacher_floor": 0.03},
  # The one step reads its own draft (model.draft_blocks): the frozen LM reads the blocks' argmax tokens, and more
  # blocks turn its states (and a learned multiple of its log-probabilities) into the final logits. Session 14: 94%
  # of broken sentences hold a token the repair rule rejects, which the LM, reading the draft, can point at.
  "demo13, reads its draft, 1 block": {**DEMO_13, "model.draft_blocks": 1},
  "demo13, reads its draft, 2 blocks": {**DEMO_13, "model.draft_blocks": 2},
  # Greedy repairs (one target per sample): the LM's sequential greedy repair of the demo's 128 samples is
  # grammatical throughout (1.000 against the samples' 0.837; one parallel pass of the same rule 0.851). Session 8
  # found them worse than sampled ones, before the matched cross-entropy and the bag kept the samples apart.
  "demo13, greedy repairs": {**DEMO_13, "drift.continuation_temperature": 0.0},
  # Sentence slots (model.layout_multiple): the generator writes 176 positions over the vocabulary and a filler,
  # sentence k at position 16 k (the grammar's longest sentence is 15 tokens), so no position has to add up the
  # lengths of the sentences before it; the matched opening covers the first two slots.
  "demo13, sentence slots of 16": {**DEMO_13, **SLOTS_16},
  "demo13, sentence slots of 16, 1,200 steps": {**DEMO_13, **SLOTS_16, "optim.total_steps": 1200},
  # Repairs that keep any of the LM's top 16 tokens (8 in the demo) above the floor: the grammar has 12 names and 10
  # objects, each 0.07-0.13 under the LM after "named" or "a red", so 4 names and 2 objects are always outside the
  # top 8 and every repair rewrites them (the demo's 128 samples: Sam 1, Ben 2, Anna 3, ball 1).
  "demo13, repairs keep the top 16": {**DEMO_13, "drift.teacher_top_k": 16},
  # The same top 16, but a token also needs 0.3 of the LM's top probability at its position (min-p,
  # drift.teacher_min_ratio): the 12 names (0.07-0.10) and 10 objects all pass, a weak word beside a strong one
  # (0.05 beside 0.9) does not.
  "demo13, repairs keep the top 16 within 0.3 of the top": DEMO_17,
  # Session 17, on the demo of session 17. Stricter min-p: every name (0.07-0.10 after "named") and object (0.07-0.13)
  # is still within 0.5 of the top there, while more weak words beside a likely one are redrawn.
  "demo17, repairs within 0.5 of the top": {**DEMO_17, "drift.teacher_min_ratio": 0.5},
  # Twice the stories per step over half the steps (the same samples seen, about the same time): the pooled bag of
  # pairs and the one-to-one matching see 64 samples and 64 real stories at once (session 13: 64 + 64 moved the bag
  # of tokens' coverage from 0.46 to 0.40 over 600 steps).
  "demo17, 64 + 64 per step, 300 steps": {
    **DEMO_17,
    "data.n_gen": 64,
    "data.n_pos": 64,
    "optim.total_steps": 300,
    "optim.warmup_steps": 50,
  },
  # Session 18. The matched opening over 24 positions instead of 16: the opening takes 13-15 tokens, so 16 stop
  # before the optional second sentence's action, colour and object and the outing's place, the slots the demo's
  # samples skew most (place 0.38, no second sentence 0.18 too rare). Session 11 found 32 worse, without the bag,
  # min-p or the field at a fifth.
  "demo17, matched opening over 24 positions": {**DEMO_17, "drift.matched_ce_positions": 24},
  # 128 real stories per step instead of 32 (the 32 samples unchanged): the pooled bag of pairs' target is then
  # four times the stories (32 name each of the 8 places about 6 times, give or take 2.3: its share moves by about
  # 40% from step to step), and the one-to-one matching picks each sample's opening among four times as many.
  "demo17, 128 real stories per step": DEMO_18,
  # Session 19, on the demo of session 18. The pooled bag of pairs at twice the weight (its coverage figures moved
  # most with the bag: 0.52 -> 0.30 over 600 steps when it came in, session 13).
  "demo18, pooled bag of pairs x2": {**DEMO_18, "drift.mixture_bag_weight": 2.0},
  # 256 real stories per step: 32 -> 128 moved coverage_tv 0.187 -> 0.153 on the same LMs (session 18).
  "demo18, 256 real stories per step": {**DEMO_18, "data.n_pos": 256},
  # The pooled bag's target counted once over every training story (drift.mixture_bag_target="split": 660
  # distinct pairs of the grammar, padding included) instead of the step's 128: the same expected gradient without
  # the target's sampling noise, and a 660-column bag instead of 12,160.
  "demo18, pooled bag against the training split": {**DEMO_18, "drift.mixture_bag_target": "split"},
  # Session 20. The demo's samples skip whole choices: over 512 of them, green, shiny and yellow 0.2% each (data
  # 13%), cat 2% and bird 4% (12-13%), while the softmax's pooled bag is near the target (its head hedges). The
  # bag's gradient weighed by the argmax's counts pushes the choices no sample writes (drift.mixture_bag_counts).
  "demo18, pooled bag by argmax counts": {**DEMO_18, "drift.mixture_bag_counts": "argmax"},
  # The same with the push toward an unwritten pair at most twice an exact one's (10 above; session 20's next step).
  "demo18, pooled bag by argmax counts, ratio 2": {
    **DEMO_18,
    "drift.mixture_bag_counts": "argmax",
    "drift.mixture_bag_max_ratio": 2.0,
  },
  # The matching among 32 of the 128 real stories (drift.matched_ce_rows): every real opening of the step becomes
  # a sample's target, instead of each sample's nearest of 128, which kept its favourite kind and adjective.
  "demo18, matching among 32 real stories": {**DEMO_18, "drift.matched_ce_rows": 32},
  "demo18, argmax bag and matching among 32": {
    **DEMO_18,
    "drift.mixture_bag_counts": "argmax",
    "drift.matched_ce_rows": 32,
  },
  # The pooled bag of pairs at three times the weight, and at twice with the matching among 32 (the best quality
  # of the three rows above).
  "demo18, pooled bag of pairs x3": {**DEMO_18, "drift.mixture_bag_weight": 3.0},
  "demo18, matching among 32, pooled bag of pairs x2": {
    **DEMO_18,
    "drift.matched_ce_rows": 32,
    "drift.mixture_bag_weight": 2.0,
  },
  # Session 21. Each sample's opening target at its noise's quantile among every training story's openings sorted
  # in token order (drift.matched_ce_coupling="noise"): the same noise keeps the same target from step to step
  # (the nearest of the step's stories moves with the batch, session 20), and over the samples the targets are
  # distributed as the data's openings (template, adjective, kind, name).
  "demo18, openings coupled to the noise": {**DEMO_18, "drift.matched_ce_coupling": "noise"},
  "demo18, openings coupled to the noise, pooled bag of pairs x2": {
    **DEMO_18,
    "drift.matched_ce_coupling": "noise",
    "drift.mixture_bag_weight": 2.0,
  },
  # The coupled opening over the first 32 positions: the second sentence too (action, or colour and object).
  "demo18, openings of 32 coupled to the noise": {
    **DEMO_18,
    "drift.matched_ce_coupling": "noise",
    "drift.matched_ce_positions": 32,
  },
  # The noise picks only the coarse choices: the nearest opening (by the matched cross-entropy) among a window of
  # the 19,488 sorted training openings around the noise's quantile (drift.matched_ce_window). 1,218 rows are a
  # sixteenth (about one template and adjective: the first tokens that differ), 152 a 128th (also the kind).
  "demo18, nearest opening among 1,218 around the noise": {
    **DEMO_18,
    "drift.matched_ce_coupling": "noise",
    "drift.matched_ce_window": 1218,
  },
  "demo18, nearest opening among 152 around the noise": {
    **DEMO_18,
    "drift.matched_ce_coupling": "noise",
    "drift.matched_ce_window": 152,
  },
  # Repairs balanced against the step's real stories (drift.continuation_balance): a token the samples write more
  # often than real stories do (a favourite colour, kind or name) stays with probability real share / samples'
  # share, else the LM redraws it among its candidates weighted the same way, so the repairs (the cross-entropy's
  # targets) move the over-written choices toward the ones the samples skip.
  "demo18, repairs balanced against the real stories' tokens": {**DEMO_18, "drift.continuation_balance": 1.0},
  # The same with the weights' square root: half the redraws' strength (the plain ratio broke sentences).
  "demo18, repairs balanced by the ratio's square root": {**DEMO_18, "drift.continuation_balance": 0.5},
  # Choice points that follow the noise (drift.continuation_choices): where at least 2 of the LM's candidates pass
  # min-p (a name, a colour, a kind: the LM gives each 0.07-0.14), every one of a sample's four repairs takes the
  # inverse CDF at Phi(noise[b, t, 0]) over them, whatever the sample wrote; elsewhere the four repairs draw
  # independently as in the demo. The choice is then a function of the noise at its own position (a staircase of
  # 8-12 steps, against session 21's 1,536 openings), and over many samples it follows the LM's even probabilities.
  # After the matched opening (16 positions), whose targets already decide its choices (docs/demo.md, session 23).
  "demo18, choice points follow the noise after the opening": {
    **DEMO_18,
    "drift.continuation_choices": 2,
    "drift.continuation_choices_from": 16,
  },
  # Session 24. A repetition penalty in the repairs (drift.continuation_repeat_penalty): the LM's log-probability of
  # a token is lowered by 2 nats for each time it stands among the repair's last 3 tokens, so "Lucy asked
  # Lucy", "Sue and Sue" and ",," (the grammar never makes the friend the main character) are redrawn, while the
  # grammar's certain repeats (a name after a full stop, the object) still beat the other candidates.
  "demo18, repetition penalty 2 within 3 tokens": {
    **DEMO_18,
    "drift.continuation_repeat_penalty": 2.0,
    "drift.continuation_repeat_window": 3,
  },
  # Noise-coupled repairs: where the LM redraws a token, the draw is the inverse CDF at Phi(noise[b, t, 0]), so a
  # sample's repair is a function of its noise and the cross-entropy's target does not change from step to step
  # (the demo's four independent repairs disagree at 22-28% of positions, which the head then averages); one
  # LM decode per sample instead of four. Session 7 tried it only with the field alone.
  "demo13, noise-coupled repairs": {**DEMO_13, "drift.continuation_coupling": "noise"},
  # Slots of 12 (144 positions, a fifth fewer to write): every sentence but the opening has at most 12 tokens, and
  # the opening (13-15) always takes two slots, so sentence k still starts at a fixed position; the matched opening
  # covers its first three slots (the opening and the next sentence), as 32 positions of slots of 16 do.
  "demo13, sentence slots of 12, 1,200 steps": {**DEMO_13, **SLOTS_12, "optim.total_steps": 1200},
  "demo13, sentence slots of 12, 900 steps": {**DEMO_13, **SLOTS_12, "optim.total_steps": 900},
  # The LM's own samples driven by each sample's noise (ancestral, noise-coupled draws) as the cross-entropy's
  # target and the field's positives: sequence-level distillation of the LM into the one-step generator.
  "demo, ancestral coupled CE, top 16": {
    **DEMO_12,
    "drift.continuation_policy": "ancestral",
    "drift.continuation_coupling": "noise",
    "drift.teacher_top_k": 16,
  },
  "demo, ancestral coupled CE, top 16, no matched CE": {
    **DEMO_12,
    "drift.continuation_policy": "ancestral",
    "drift.continuation_coupling": "noise",
    "drift.teacher_top_k": 16,
    "drift.matched_ce_weight": 0.0,
  },
  "continuation, repair, own, + repair CE x1 from step 300, seed 1": {
    **REPAIR_OWN,
    "drift.continuation_ce_weight": 1.0,
    "drift.continuation_ce_start": 300,
    "seed": 1,
  },
  # The "continue" policy with the own kernel (session 9).
  "continuation, continue, own": {**REPAIR_OWN, "drift.continuation_policy": "continue"},
  # The soft gradient's training settings (session 9): the learning rate; twice the samples (peers).
  "continuation, repair, own, lr 1e-3": {**REPAIR_OWN, "optim.lr": 1e-3},
  "continuation, repair, own, lr 6e-3": {**REPAIR_OWN, "optim.lr": 6e-3},
  "continuation, repair, own, 64 samples per step": {**REPAIR_OWN, "data.n_gen": 64},
  # The generator's size (session 8): is the one-step map the limit?
  "continuation, repair, own, generator 256 wide, 4 deep": {**REPAIR_OWN, "model.width": 256, "model.depth": 4},
  # Greedy repairs (session 8): the LM's likeliest candidate where it rejects a token, so a sample's target does
  # not change from draw to draw (M = 1 with sampled draws was much worse than M = 4).
  "continuation, repair, own, greedy": {**REPAIR_OWN, "drift.continuation_temperature": 0.0},
  # Noise-coupled continuations (session 7): the LM's draws for a sample are the inverse CDF at uniforms from the
  # sample's own generator noise, so each sample's positive is a function of its noise (M copies of one row).
  "ancestral, noise-coupled, own": {
    "drift.positives": "continuation",
    "drift.continuation_policy": "ancestral",
    "drift.continuation_kernel": "own",
    "drift.continuation_coupling": "noise",
  },
  "ancestral, noise-coupled, own, M=1": {
    "drift.positives": "continuation",
    "drift.continuation_policy": "ancestral",
    "drift.continuation_kernel": "own",
    "drift.continuation_coupling": "noise",
    "drift.continuation_samples": 1,
  },
  "repair, noise-coupled, own": {
    **REPAIR_OWN,
    "drift.continuation_coupling": "noise",
  },
  # The per-position teacher loss beside the repairs: its negatives are the batch's tokens at each position, so
  # samples that agree are pushed apart toward the LM's other likely tokens after their own prefix.
  "teacher+continuation, repair, own": {
    **REPAIR_OWN,
    "drift.positives": "teacher+continuation",
  },
  "teacher+continuation, repair, own, teacher x0.3": {
    **REPAIR_OWN,
    "drift.positives": "teacher+continuation",
    "drift.teacher_weight": 0.3,
  },
  "teacher+continuation, repair, own, M=8": {
    **REPAIR_OWN,
    "drift.positives": "teacher+continuation",
    "drift.continuation_samples": 8,
  },
  # Seed 1 (the generator's initialization, noise and the LM's draws): the spread of one 600-step run.
  "continuation, repair, own, seed 1": {
    **REPAIR_OWN,
    "seed": 1,
  },
  "continuation, repair, own, seed 2": {**REPAIR_OWN, "seed": 2},
  "teacher+continuation, repair, own, seed 1": {
    **REPAIR_OWN,
    "drift.positives": "teacher+continuation",
    "seed": 1,
  },
  "continuation, repair, M=1": {
    "drift.positives": "continuation",
    "drift.continuation_policy": "repair",
    "drift.continuation_samples": 1,
  },
  "data+teacher+continuation, resample, 3-gram": {
    "drift.positives": "data+teacher+continuation",
    "drift.continuation_policy": "resample",
    "drift.teacher_repeat_ngram": 3,
  },
  "data+continuation, top-4, floor 0.05": {
    "drift.positives": "data+continuation",
    "drift.teacher_top_k": 4,
    "drift.teacher_floor": 0.05,
  },
  "data+teacher+continuation, 3-gram": {
    "drift.positives": "data+teacher+continuation",
    "drift.teacher_repeat_ngram": 3,
  },
  "data+teacher, 3-gram, queue 64": {
    "drift.positives": "data+teacher",
    "drift.teacher_repeat_ngram": 3,
    "probe.queue": 64,
  },
}
PROBE_KEYS = ("probe.queue",)  # Settings of the probe itself, not of the config.


def set_path(config, path: str, value) -> None:
  node = config
  for part in path.split(".")[:-1]:
    node = node[part]
  node[path.split(".")[-1]] = value


def scores(ids: np.ndarray, trainer, evaluator=None, reference=None) -> dict:
  rows = decode.truncate_at_eos(ids, trainer.tokenizer.eos_token_id)
  texts = [trainer.tokenizer.decode(r) for r in rows]
  reference = reference if reference is not None else texts
  agree = np.mean([np.bincount(ids[:, p]).max() / len(ids) for p in range(ids.shape[1])])
  # Where grammar breaks: the share of grammatical sentences among each text's last three.
  last3 = [synthetic.grammatical_rate(" ".join(synthetic.split_sentences(t)[-3:])) for t in texts]
  by_slot = synthetic.coverage_tv_by_slot(texts, reference)
  return {
    "gen_ppl": text_metrics.gen_ppl(trainer.encoder, trainer.tokenizer, texts),
    "eval_ppl": text_metrics.gen_ppl(*evaluator, texts) if evaluator else float("nan"),
    # Adjacent duplicates within the text (end-of-text padding excluded).
    "dup_adjacent": sum(int(np.sum(np.diff(r) == 0)) for r in rows) / max(sum(len(r) - 1 for r in rows), 1),
    "grammatical_rate": float(np.mean([synthetic.grammatical_rate(t) for t in texts])),
    "gram_last3": float(np.mean(last3)),
    # Rows with no end-of-text: cut at the length, their last sentence a fragment.
    "unended": float(np.mean([len(r) == ids.shape[1] for r in rows])),
    "distinct_2": text_metrics.distinct_n(rows, 2),
    "agree": float(agree),
    # The grammar's choices (character, name, place, ...) against held-out stories' (issue 14's coverage).
    "coverage_tv": float(np.mean(list(by_slot.values()))),
    "coverage_by_slot": by_slot,
  }


def run_particles(trainer, steps: int, n: int = 32, lr: float = 0.1, queue: int = 0):
  """The free sequences' final tokens (n, L) and the loss's metrics at the end (diagnostics included)."""
  cfg, enc = trainer.cfg, trainer.encoder
  table = enc.wte[...][: len(trainer.tokenizer)]
  width = table.shape[0] if cfg.gen.head == "vocab" else table.shape[1]
  x = jax.random.normal(jax.random.key(0), (n, cfg.gen.seq_len, width))
  if cfg.gen.head == "embedding":  # Start at random tokens' embeddings.
    x = table[jax.random.randint(jax.random.key(0), x.shape[:2], 0, table.shape[0])]
  tx = optax.adam(lr)
  opt = tx.init(x)
  pos_w = jnp.ones((1, cfg.n_pos))

  def positives(real):
    return jax.lax.stop_gradient(step_lib.feature_dict(enc, None, real, cfg)) if cfg.uses_data else None

  @jax.jit
  def step(x, opt, real, queue_ids, key):
    loss_fn = lambda x: step_lib.generated_loss(enc, x, positives(real), pos_w, cfg, queue_ids, key, real_ids=real)[0]
    grads = jax.grad(loss_fn)(x)
    updates, opt = tx.update(grads, opt)
    ids = step_lib.decoded_ids(x, table, cfg.gen)
    # FIFO of earlier particles' tokens: this step's newest first, the oldest drop out.
    queue_ids = None if queue_ids is None else jnp.concatenate([ids, queue_ids])[: queue_ids.shape[0]]
    return optax.apply_updates(x, updates), opt, queue_ids

  queue_ids = None
  if queue:
    queue_ids = jnp.tile(step_lib.decoded_ids(x, table, cfg.gen), (-(-queue // n), 1))[:queue]
  keys = jax.random.split(jax.random.key(5), steps + 1)  # The continuations' sampling.
  for i in range(steps):
    x, opt, queue_ids = step(x, opt, trainer.next_batch(), queue_ids, keys[i])
  metrics = jax.jit(
    lambda x, real, q, k: step_lib.generated_loss(enc, x, positives(real), pos_w, cfg, q, k, real_ids=real)[1]
  )(x, trainer.next_batch(), queue_ids, keys[-1])
  return np.asarray(decode.decode_outputs(x, table, cfg.gen)[0]), jax.device_get(metrics)


def run_generator(trainer, steps: int, n: int = 64, log_every: int = 0):
  """n greedy EMA samples (n, L) after `steps` steps, and the last step's metrics (diagnostics included).
  log_every > 0 prints the training batch's diagnostics every so many steps (where a run collapses)."""
  state, metrics = trainer.init_state(), {}
  for i in range(steps):
    state, metrics = trainer.step_fn(state, trainer.next_batch(), trainer.enc_state)
    if log_every and (i + 1) % log_every == 0:
      m = jax.device_get(metrics)
      keys = [k for k in sorted(m) if k.startswith("diag/") or k in ("loss", "grad_norm")]
      print(f"    step {i + 1}: " + " ".join(f"{k.split('/')[-1]}={float(m[k]):.3g}" for k in keys), flush=True)
  gen = sampler_lib.Sampler(
    graphdef=trainer.graphdef,
    params=state["ema"],
    gen_cfg=trainer.cfg.gen,
    table=trainer.encoder.wte[...][: len(trainer.tokenizer)],
    tokenizer=trainer.tokenizer,
    encoder=trainer.encoder,
    batch=n,
  )
  return gen.generate(n, jax.random.key(1))[0], jax.device_get(metrics)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True, help="a demo workdir holding encoder/")
  parser.add_argument("--kind", default="particles", choices=("particles", "generator"))
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--only", default="", help="variant names separated by ; (default: all)")
  parser.add_argument("--evaluator", default="", help="the independent evaluator LM (default: DIR/evaluator)")
  parser.add_argument("--seeds", default="", help="run each variant with each of these seeds (e.g. 0,1,2)")
  parser.add_argument("--show", type=int, default=0, help="print this many samples after each variant's row")
  parser.add_argument("--log_every", type=int, default=0, help="generator: print diagnostics every N steps")
  parser.add_argument(
    "--samples",
    type=int,
    default=64,
    help="generator: EMA samples scored (above 64, coverage is against as many fresh stories of the grammar)",
  )
  parser.add_argument(
    "--holdout",
    type=int,
    default=0,
    help="stories held out of training (default 0: FIELD_ALONE's 256, the split of the LMs of the workdirs before "
    "session 17; 512 is the split of the LMs a configs/demo.py run trains)",
  )
  args = parser.parse_args()
  names = [n for n in VARIANTS if not args.only or n in args.only.split(";")]
  if args.only and len(names) != len(args.only.split(";")):
    unknown = sorted(set(args.only.split(";")) - set(names))
    raise SystemExit(f"--only names no variant: {unknown}")
  seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [None]
  runs = [(name, seed) for name in names for seed in seeds]
  eval_dir = args.evaluator or os.path.join(args.workdir, "evaluator")
  evaluator = (gpt2.load_gpt2(eval_dir), tok_lib.load_tokenizer(eval_dir)) if os.path.isdir(eval_dir) else None
  print(f"{args.kind}, {args.steps} steps, {jax.devices()[0].device_kind}, evaluator {evaluator and eval_dir}")
  print(
    "| variant | gen_ppl | eval_ppl | grammatical_rate | gram_last3 | unended | distinct_2 | agree | dup_adjacent | "
    "head_top_p | eff_positives | cont_changed | cont_disagree | bag_overlap | coverage_tv | seconds |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  )
  first = None
  for name, seed in runs:
    config = demo_config.get_config()
    probe = {k: v for k, v in VARIANTS[name].items() if k in PROBE_KEYS}
    for path, value in {**FIELD_ALONE, **VARIANTS[name]}.items():
      if path not in PROBE_KEYS:
        set_path(config, path, value)
    if args.holdout:  # The split the workdir's LMs were trained on (docs/demo.md, session 22).
      config.data.holdout = args.holdout
    if seed is not None:
      config.seed = seed
      name = f"{name}, seed {seed}"
    config.train.eval_every = 0
    trainer = train.setup(config, args.workdir)
    eos = trainer.tokenizer.eos_token_id
    if first is None:  # The data row: held-out stories, the same way (coverage against other held-out ones).
      first = trainer
      heldout = build.corpus(config).heldout_rows(trainer.tokenizer, 128)
      reference = [trainer.tokenizer.decode(r) for r in decode.truncate_at_eos(heldout[64:], eos)]
      r = scores(heldout[:64], trainer, evaluator, reference)
      print(
        f"| data (held-out stories) | {r['gen_ppl']:.3g} | {r['eval_ppl']:.3g} | {r['grammatical_rate']:.3f} | "
        f"{r['gram_last3']:.3f} | {r['unended']:.3f} | {r['distinct_2']:.3f} | {r['agree']:.3f} | "
        f"{r['dup_adjacent']:.3f} | | | | | | {r['coverage_tv']:.3f} | |",
        flush=True,
      )
      if args.samples > 64:  # 64 samples leave gen-PPL and grammar noisy (docs/demo.md, session 17).
        reference = synthetic.generate_stories(args.samples, seed=7_000_003)
        floor = synthetic.coverage_tv(synthetic.generate_stories(args.samples, seed=7_000_004), reference)
        print(
          f"    variants: {args.samples} samples, coverage against {args.samples} fresh stories (floor {floor:.3f})"
        )
    t0 = time.time()
    if args.kind == "particles":
      ids, metrics = run_particles(trainer, args.steps, queue=probe.get("probe.queue", 0))
    else:
      ids, metrics = run_generator(trainer, args.steps, n=args.samples, log_every=args.log_every)
    r = scores(ids, trainer, evaluator, reference)
    top_p, eff = metrics.get("diag/head_top_p_median", float("nan")), metrics.get("diag/eff_positives", float("nan"))
    changed = metrics.get("diag/cont_changed", float("nan"))
    disagree = metrics.get("diag/cont_disagree", float("nan"))
    overlap = metrics.get("diag/matched_bag_overlap", float("nan"))
    print(
      f"| {name} | {r['gen_ppl']:.3g} | {r['eval_ppl']:.3g} | {r['grammatical_rate']:.3f} | "
      f"{r['gram_last3']:.3f} | {r['unended']:.3f} | {r['distinct_2']:.3f} | {r['agree']:.3f} | "
      f"{r['dup_adjacent']:.3f} | {top_p:.2f} | {eff:.2f} | {changed:.3f} | {disagree:.3f} | {overlap:.3f} | "
      f"{r['coverage_tv']:.3f} | {time.time() - t0:.0f} |",
      flush=True,
    )
    print("    coverage by slot: " + " ".join(f"{k} {v:.2f}" for k, v in r["coverage_by_slot"].items()), flush=True)
    if "diag/matched_shift_saving" in metrics:  # Nats per position that the alignment forgives (matched_ce_gap).
      print(f"    matched_shift_saving {metrics['diag/matched_shift_saving']:.3f}", flush=True)
    for row in decode.truncate_at_eos(ids[: args.show], trainer.tokenizer.eos_token_id):
      print(f"    {trainer.tokenizer.decode(row)!r}", flush=True)


if __name__ == "__main__":
  main()
