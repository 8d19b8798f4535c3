"""The train state and the pure, jit-able training step (docs/method.md sections 3-4).

noise -> generator -> embeddings E; frozen GPT-2 features of E (inputs_embeds) and of real ids (input_ids)
at the configured layers, plus the raw embeddings; poolings; the drift loss summed over feature keys; AdamW
with warmup + cosine and clipping; EMA of the generator. With drift.positives including "teacher", the frozen
LM reads the generator's decoded tokens and its likely next tokens are per-position positives
(driftjax/drift/teacher.py); with "continuation", the LM's continuations or repairs of each decoded sample
(driftjax/models/kv_decode.py) are whole-sample positives of a second data-like loss. The real-sample queue
(token ids, G x Q x L) lives in the state: positives of group g are its fresh real rows plus its queued ones
(empty slots weigh 0).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from driftjax.drift import alignment as align_lib
from driftjax.drift import features as feat_lib
from driftjax.drift import field as field_lib
from driftjax.drift import losses as losses_lib
from driftjax.drift import teacher as teacher_lib
from driftjax.models import generator as gen_lib
from driftjax.models import gpt2
from driftjax.models import kv_decode
from driftjax.models import layout as layout_lib

Array = jax.Array
TrainState = dict[str, Any]  # step, params, ema, opt_state, queue, queue_filled, rng.
POSITIVE_PARTS = ("data", "teacher", "continuation")  # drift.positives: one or several joined by "+".
CONTINUATION_POLICIES = ("continue", "repair", "resample", "ancestral")
CE_TARGETS = ("draws", "likeliest")
CONTINUATION_COUPLINGS = ("none", "noise")
# The argmax bag's default cap (drift.mixture_bag_max_ratio): the push toward an n-gram no sample writes, relative
# to one written exactly as often as the target says.
BAG_MAX_RATIO = 10.0


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the step (hashable)."""

  gen: gen_lib.GeneratorConfig
  field: field_lib.FieldConfig
  groups: int
  n_gen: int
  n_pos: int
  queue_size: int
  layers: tuple[int, ...]
  raw: bool
  poolings: tuple[str, ...]
  ema_decay: float
  # Where positives come from: "data" (real stories' features), "teacher" (the LM's next tokens after each
  # sample's own prefix, per position), "continuation" (the LM's continuations of each sample, whole-sample
  # features), or several joined by "+" (the sum of their losses).
  positive_source: str = "data"
  teacher_top_k: int = 8
  teacher_floor: float = 0.01
  # A candidate (kept or drawn) also needs at least this fraction of the LM's top probability at its position
  # (min-p): with a larger teacher_top_k, every one of many equally likely choices passes (12 names at 0.07-0.10)
  # while a weak word beside one strong one does not. 0: off.
  teacher_min_ratio: float = 0.0
  teacher_repeat_ngram: int = 0
  teacher_repeat_window: int = 0
  teacher_weight: float = 1.0
  # Continuations: M per sample; "continue" samples every token after the first unlikely one, "repair" keeps
  # each of the sample's tokens that the LM finds likely (teacher_top_k / teacher_floor say which are), both
  # sequentially (KV-cached); "resample" replaces each unlikely token given the sample's own prefix (one pass);
  # "ancestral" keeps none (the LM's own sample).
  continuation_samples: int = 4
  continuation_policy: str = "continue"
  continuation_weight: float = 1.0
  # "batch": the group's continuations are positives of every sample in it (the data loss's kernel); "own": each
  # sample's field reaches only its own continuations, the group's other samples repel it.
  continuation_kernel: str = "batch"
  # "noise": the LM's draws for a sample come from the sample's own generator noise (the uniform Phi(noise[b, t, 0])
  # at position t), so its continuation is a function of its noise and the M continuations are one (M copies);
  # "none": independent draws.
  continuation_coupling: str = "none"
  # The LM's draws among its candidates at this temperature; 0: its likeliest candidate (greedy, so the M
  # continuations of a sample are one row, M times).
  continuation_temperature: float = 1.0
  # > 0: plus this weight times the cross-entropy of the vocab head's logits toward the continuations' tokens (each
  # sample's own M rows, so the mean over its draws): the LM's choices reach the head whatever it gives them, where
  # the straight-through gradient scales each token's push by its probability. 0: off (the field alone).
  continuation_ce_weight: float = 0.0
  # The cross-entropy applies from this step on (0: from the start): from the start it makes every sample the same
  # story; after the field alone has spread the samples it sharpens each one (docs/demo.md, session 9).
  continuation_ce_start: int = 0
  # The cross-entropy's targets: "draws" (each sample's M draws, so the mean over them: where the draws disagree
  # the head is pulled to all their choices at once) or "likeliest" (the one of a sample's M draws that the LM
  # finds likeliest: one consistent story per sample; an extra teacher-forced LM pass over the draws).
  continuation_ce_target: str = "draws"
  # > 0: the sequential continuations keep or draw each token v with weight min(1, r_v / g_v) ** this
  # (balance_weights: r_v is v's share among the step's real rows' tokens, g_v its share among the samples'), so a
  # choice the samples write more often than real stories (one colour of eight) is redrawn in part among the LM's
  # candidates, toward the ones they write too rarely; the LM still decides what may stand there. Needs the real
  # rows. 0: off. At 1 and 1/2 in the demo's probe it broke sentences (a redrawn name rewrites the rest of the
  # story; docs/demo.md, session 22).
  continuation_balance: float = 0.0
  # > 0: the sequential continuations' LM lowers each token's log-probability by this many nats for every time it
  # stands among the new row's last continuation_repeat_window tokens (0: anywhere before), before its top-k and
  # min-p tests (a repetition penalty that grows with the repeats): a word the row just wrote is kept or drawn only
  # where it beats the other candidates by that much, so a tiny LM's repairs stop endorsing loops ("Timmy, Timmy,
  # Timmy", ",,,,"). 0: off.
  continuation_repeat_penalty: float = 0.0
  continuation_repeat_window: int = 0
  # >= 2: the repairs' choice points follow the noise. Where at least this many candidates are acceptable to the LM
  # (several about equally likely tokens: a name, a colour), the repair's token is the inverse CDF at the sample's
  # Phi(noise[b, t, 0]) over them in token-id order, whatever the sample wrote there; elsewhere the repair is as
  # before. Which choice a sample makes is then a function of its noise, one the generator can read at the choice's
  # own position, and over many samples the choices follow the LM's probabilities (coverage). Needs the "repair"
  # policy. 0: off.
  continuation_choices: int = 0
  # Positions before this one are never choice points (the matched opening's targets decide them).
  continuation_choices_from: int = 0
  # > 0: plus this weight times the cross-entropy of the real rows' tokens under the batch's mixture of the vocab
  # head's distributions at each position (mixture_cross_entropy): the samples together must give every real
  # story's token at each position some probability, so they cannot all make the same choice, while no single
  # sample is pulled to the marginal. 0: off.
  mixture_ce_weight: float = 0.0
  # The first this many positions (0: all), where real stories are aligned (their openings).
  mixture_ce_positions: int = 0
  # > 0: plus this weight times the cross-entropy of each sample's head toward the tokens of one real row of the
  # batch, the rows matched one to one to the samples so that the matches' total cross-entropy is small (greedy:
  # matched_cross_entropy): every sample is pulled to a real story it is already near, and together the samples
  # are pulled to as many real stories as there are samples (needs data.n_pos >= data.n_gen). 0: off.
  matched_ce_weight: float = 0.0
  # The first this many positions (0: all) make both the matching's cost and the cross-entropy.
  matched_ce_positions: int = 0
  # > 0: the matching's cost and the matched cross-entropy also hold this weight times the divergence of the
  # sample's whole bag of tokens from its match's (bag_divergence: order ignored, so the later sentences,
  # which start at different positions in different stories, still count): each sample is pulled to its match's
  # choices (object, feelings, friend) wherever it says them. 0: off.
  matched_ce_bag_weight: float = 0.0
  # > 0: the matching's cost and the matched cross-entropy compare a sample with a real row under their cheapest
  # monotone alignment (alignment.aligned_cross_entropy), each token of either left unaligned costing this many
  # nats: a sample that says a later sentence a few tokens early or late is pulled to that sentence's words, not
  # to whatever the real row has at the same positions. Memory O(B R T^2) for T matched positions (the demo's
  # 32 x 32 rows of 96 tokens: about 38 MB). 0: position by position.
  matched_ce_gap: float = 0.0
  # > 0: the matching chooses among the first this many real rows only (at least data.n_gen; 0: all n_pos). With
  # as many rows as samples every real opening of the step is some sample's target, instead of each sample's
  # favourite among more rows (in the demo's probe the samples did not follow them: docs/demo.md, session 20).
  matched_ce_rows: int = 0
  # Which real opening a sample is pulled to: "nearest", the matching above (a sample's match moves with the
  # step's stories); "noise", the one at the sample's noise quantile among every training row's openings sorted in
  # token order (noise_quantile_rows; train_step's openings): the same noise keeps the same target from step to
  # step, and the targets' distribution is the data's.
  matched_ce_coupling: str = "nearest"
  # With the "noise" coupling, > 0: the target is the nearest opening (by the matched cross-entropy) among this many
  # sorted openings around the noise's quantile (noise_window_rows): the noise picks the coarse choices (the first
  # tokens in token order), the sample's own head the rest. 0: the opening at the quantile itself.
  matched_ce_window: int = 0
  # > 0: plus this weight times the divergence of the batch's bag of n-grams (all samples' positions pooled) from
  # the real rows' (mixture_bag_divergence): together the samples must say each token (n-gram) as often as real
  # stories do, wherever and whichever sample says it; the push toward a missing one goes to the sample and
  # position that already offer it most, so the choices spread without pulling any sample to a mean. 0: off.
  mixture_bag_weight: float = 0.0
  # The bag's units: 1, tokens; 2 (3), runs of two (three) adjacent tokens: bags of n-grams, local order too.
  mixture_bag_n: int = 1
  # The bag's target: "batch", the step's real rows; "split", the n-gram distribution of every training row,
  # counted once before training (ngram_distribution; train_step's bag_target): the same expected gradient
  # without the sampling noise of a few real rows.
  mixture_bag_target: str = "batch"
  # Whose counts weigh the bag's gradient: "expected", the softmax's (the plain cross-entropy, which a head that
  # hedges, say 0.1 on a colour its argmax never writes, already satisfies); "argmax", the tokens the samples
  # write: each n-gram's push is its target share over its share among the argmax n-grams (clipped at
  # mixture_bag_max_ratio), so a choice no sample writes is pushed hardest and an over-written one least
  # (pooled_bag_cross_entropy). The value is then the argmax bag's divergence. In the demo's probe it spread the
  # skipped colours and broke sentences (docs/demo.md, session 20).
  mixture_bag_counts: str = "expected"
  # With mixture_bag_counts "argmax": the push toward an n-gram no sample writes, relative to one written exactly as
  # often as the target says (>= 1).
  mixture_bag_max_ratio: float = BAG_MAX_RATIO
  # > 0: features and gradients in chunks of this many rows (chunked_loss_and_grads); 0: all at once.
  chunk: int = 0
  # The tokens that end a sentence (data.tokenizer.sentence_end_ids): a generator with a slotted layout
  # (model.layout_multiple) has its cross-entropies' targets laid out at them (models/layout.py).
  sentence_ends: tuple[int, ...] = ()

  def __post_init__(self):
    if self.gen.layout_multiple and not self.sentence_ends:
      raise ValueError("model.layout_multiple needs the tokenizer's sentence-end tokens (StepConfig.sentence_ends)")
    parts = self.positive_source.split("+")
    if not parts or any(p not in POSITIVE_PARTS for p in parts) or len(set(parts)) != len(parts):
      raise ValueError(
        f"drift.positives={self.positive_source!r}; expected one or more of {POSITIVE_PARTS} joined by '+'"
      )
    if self.continuation_policy not in CONTINUATION_POLICIES:
      raise ValueError(
        f"drift.continuation_policy={self.continuation_policy!r}; expected one of {CONTINUATION_POLICIES}"
      )
    if self.continuation_coupling not in CONTINUATION_COUPLINGS:
      raise ValueError(
        f"drift.continuation_coupling={self.continuation_coupling!r}; expected one of {CONTINUATION_COUPLINGS}"
      )
    if self.continuation_coupling == "noise" and self.continuation_policy == "resample":
      raise ValueError("drift.continuation_coupling='noise' needs a sequential policy (continue, repair, ancestral)")
    if self.continuation_coupling == "noise" and self.gen.layout_multiple:
      raise ValueError(
        "drift.continuation_coupling='noise' reads the noise at the text's positions, which model.layout_multiple "
        "moves; use one or the other"
      )
    if not 0.0 <= self.teacher_min_ratio <= 1.0:
      raise ValueError(f"drift.teacher_min_ratio={self.teacher_min_ratio} must be in [0, 1]")
    if self.continuation_temperature < 0:
      raise ValueError(f"drift.continuation_temperature={self.continuation_temperature} must be >= 0")
    if self.continuation_temperature != 1.0 and (
      self.continuation_policy == "resample" or self.continuation_coupling == "noise"
    ):
      raise ValueError(
        f"drift.continuation_temperature={self.continuation_temperature} applies to independent sequential draws "
        "(continue, repair, ancestral without noise coupling)"
      )
    if self.continuation_balance < 0 or (
      self.continuation_balance and (not self.uses_continuation or self.continuation_policy == "resample")
    ):
      raise ValueError(
        f"drift.continuation_balance={self.continuation_balance} must be >= 0 and needs sequential continuations "
        "(continue, repair, ancestral)"
      )
    if (
      self.continuation_choices < 0
      or self.continuation_choices == 1
      or (
        self.continuation_choices
        and (not self.uses_continuation or self.continuation_policy != "repair" or self.gen.layout_multiple)
      )
    ):
      raise ValueError(
        f"drift.continuation_choices={self.continuation_choices} must be 0 (off) or >= 2 and needs the repair policy "
        "without model.layout_multiple (the noise is read at the text's positions)"
      )
    if self.continuation_repeat_penalty < 0 or self.continuation_repeat_window < 0:
      raise ValueError(
        f"drift.continuation_repeat_penalty={self.continuation_repeat_penalty} and "
        f"continuation_repeat_window={self.continuation_repeat_window} must be >= 0"
      )
    if self.continuation_repeat_window and not self.continuation_repeat_penalty:
      raise ValueError("drift.continuation_repeat_window needs drift.continuation_repeat_penalty > 0")
    if self.continuation_repeat_penalty and (
      not self.uses_continuation or self.continuation_policy not in ("continue", "repair", "ancestral")
    ):
      raise ValueError("drift.continuation_repeat_penalty needs sequential continuations (continue, repair, ancestral)")
    if self.continuation_choices_from < 0 or (self.continuation_choices_from and not self.continuation_choices):
      raise ValueError(
        f"drift.continuation_choices_from={self.continuation_choices_from} must be >= 0 and needs continuation_choices"
      )
    if self.continuation_kernel not in ("batch", "own"):
      raise ValueError(f"drift.continuation_kernel={self.continuation_kernel!r}; expected batch or own")
    if self.continuation_ce_weight < 0 or (
      self.continuation_ce_weight and (not self.uses_continuation or self.gen.head != "vocab")
    ):
      raise ValueError(
        f"drift.continuation_ce_weight={self.continuation_ce_weight} must be >= 0 and needs continuation positives "
        "and model.head='vocab'"
      )
    if self.continuation_ce_target not in CE_TARGETS or (
      self.continuation_ce_target != "draws" and not self.continuation_ce_weight
    ):
      raise ValueError(
        f"drift.continuation_ce_target={self.continuation_ce_target!r}; expected one of {CE_TARGETS} "
        "(other than 'draws' only with continuation_ce_weight > 0)"
      )
    if self.continuation_ce_start < 0 or (self.continuation_ce_start and not self.continuation_ce_weight):
      raise ValueError(
        f"drift.continuation_ce_start={self.continuation_ce_start} must be >= 0 and needs continuation_ce_weight > 0"
      )
    if self.mixture_ce_weight < 0 or (self.mixture_ce_weight and self.gen.head != "vocab"):
      raise ValueError(f"drift.mixture_ce_weight={self.mixture_ce_weight} must be >= 0 and needs model.head='vocab'")
    if self.matched_ce_weight < 0 or (self.matched_ce_weight and (self.gen.head != "vocab" or self.n_pos < self.n_gen)):
      raise ValueError(
        f"drift.matched_ce_weight={self.matched_ce_weight} must be >= 0 and needs model.head='vocab' and "
        f"data.n_pos >= data.n_gen (got {self.n_pos} < {self.n_gen})"
      )
    for name in ("matched_ce_bag_weight", "matched_ce_gap"):  # Settings of the matched cross-entropy.
      value = getattr(self, name)
      if value < 0 or (value and not self.matched_ce_weight):
        raise ValueError(f"drift.{name}={value} must be >= 0 and needs matched_ce_weight > 0")
    if self.mixture_bag_weight < 0 or (self.mixture_bag_weight and self.gen.head != "vocab"):
      raise ValueError(f"drift.mixture_bag_weight={self.mixture_bag_weight} must be >= 0 and needs model.head='vocab'")
    if not 1 <= self.mixture_bag_n <= 3:
      raise ValueError(f"drift.mixture_bag_n={self.mixture_bag_n}; expected 1 (tokens), 2 (pairs) or 3 (triples)")
    if self.mixture_bag_target not in ("batch", "split"):
      raise ValueError(f"drift.mixture_bag_target={self.mixture_bag_target!r}; expected 'batch' or 'split'")
    if self.mixture_bag_counts not in ("expected", "argmax"):
      raise ValueError(f"drift.mixture_bag_counts={self.mixture_bag_counts!r}; expected 'expected' or 'argmax'")
    if self.mixture_bag_max_ratio < 1:
      raise ValueError(f"drift.mixture_bag_max_ratio={self.mixture_bag_max_ratio} must be >= 1")
    if self.matched_ce_rows and not (self.matched_ce_weight and self.n_gen <= self.matched_ce_rows <= self.n_pos):
      raise ValueError(
        f"drift.matched_ce_rows={self.matched_ce_rows} needs matched_ce_weight > 0 and data.n_gen={self.n_gen} <= "
        f"matched_ce_rows <= data.n_pos={self.n_pos} (0: all)"
      )
    if self.matched_ce_coupling not in ("nearest", "noise"):
      raise ValueError(f"drift.matched_ce_coupling={self.matched_ce_coupling!r}; expected 'nearest' or 'noise'")
    if self.matched_ce_coupling == "noise":
      others = [n for n in ("matched_ce_bag_weight", "matched_ce_gap", "matched_ce_rows") if getattr(self, n)]
      if not self.matched_ce_weight or others or self.gen.layout_multiple:
        raise ValueError(
          "drift.matched_ce_coupling='noise' needs matched_ce_weight > 0 and none of matched_ce_bag_weight, "
          f"matched_ce_gap, matched_ce_rows (set: {others}) or model.layout_multiple ({self.gen.layout_multiple})"
        )
    if self.matched_ce_window < 0 or (self.matched_ce_window and self.matched_ce_coupling != "noise"):
      raise ValueError(
        f"drift.matched_ce_window={self.matched_ce_window} must be >= 0 and needs matched_ce_coupling='noise'"
      )
    for name in ("mixture_ce_positions", "matched_ce_positions"):
      if not 0 <= getattr(self, name) <= self.gen.seq_len:
        raise ValueError(f"drift.{name}={getattr(self, name)} must be in [0, model.seq_len={self.gen.seq_len}]")
    if self.uses_continuation and self.continuation_samples < 1:
      raise ValueError(f"drift.continuation_samples={self.continuation_samples} must be >= 1")
    if self.chunk < 0:
      raise ValueError(f"train.chunk={self.chunk} must be >= 0")
    if self.chunk:
      if self.positive_source != "data" or self.gen.head != "embedding":
        raise ValueError(
          f"train.chunk={self.chunk} needs drift.positives='data' and model.head='embedding' "
          f"(got {self.positive_source!r}, {self.gen.head!r}); set train.chunk=0"
        )
      rows = {"generated": self.groups * self.n_gen, "positive": self.groups * self.positives}
      for name, n in rows.items():
        if n % self.chunk:
          raise ValueError(f"train.chunk={self.chunk} must divide the step's {n} {name} rows")

  @property
  def uses_data(self) -> bool:
    return "data" in self.positive_source.split("+")

  @property
  def uses_teacher(self) -> bool:
    return "teacher" in self.positive_source.split("+")

  @property
  def uses_continuation(self) -> bool:
    return "continuation" in self.positive_source.split("+")

  @property
  def continuation_rows(self) -> int:
    """Rows the LM writes per sample: 1 where its M continuations are one row (draws coupled to its noise, or
    greedy; "resample" draws M), else M."""
    one_row = self.continuation_coupling == "noise" or self.continuation_temperature == 0
    return 1 if one_row and self.continuation_policy != "resample" else self.continuation_samples

  @property
  def positives(self) -> int:
    return self.n_pos + self.queue_size


def make_optimizer(optim) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with linear warmup then cosine decay, after global-norm clipping; no decay of vectors (norms, biases)."""
  if not 0 <= optim.warmup_steps < optim.total_steps:
    raise ValueError(f"optim.warmup_steps={optim.warmup_steps} must be in [0, optim.total_steps={optim.total_steps})")
  schedule = optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=optim.lr,
    warmup_steps=optim.warmup_steps,
    decay_steps=optim.total_steps,
    end_value=optim.lr * optim.final_lr_fraction,
  )
  tx = optax.chain(
    optax.clip_by_global_norm(optim.clip),
    optax.adamw(
      schedule,
      b1=optim.b1,
      b2=optim.b2,
      weight_decay=optim.weight_decay,
      mask=lambda params: jax.tree.map(lambda x: x.ndim >= 2, params),
    ),
  )
  return tx, schedule


def init_state(
  key: Array, graphdef_fn, tx: optax.GradientTransformation, cfg: StepConfig, seq_len: int, eos_id: int
) -> TrainState:
  """A fresh state; graphdef_fn(key) builds the generator (so that jit can create it sharded)."""
  k_model, k_rng = jax.random.split(key)
  params = nnx.state(graphdef_fn(k_model), nnx.Param)
  return {
    "step": jnp.zeros((), jnp.int32),
    "params": params,
    "ema": jax.tree.map(jnp.copy, params),
    "opt_state": tx.init(params),
    "rng": jax.random.key_data(k_rng),
    # Without a queue there is nothing to hold (and orbax cannot save zero-size arrays).
    **(
      {
        "queue": jnp.full((cfg.groups, cfg.queue_size, seq_len), eos_id, jnp.int32),
        "queue_filled": jnp.zeros((cfg.groups, cfg.queue_size), jnp.float32),
      }
      if cfg.queue_size
      else {}
    ),
  }


def feature_dict(encoder, emb: Array | None, ids: Array | None, cfg: StepConfig) -> dict[str, Array]:
  """Pooled features {'<layer>/<pooling>': (B, P, C)} of embeddings (generated) or ids (real)."""
  raw = emb if emb is not None else encoder.embed(ids)
  out = encoder(inputs_embeds=raw, hidden_layers=cfg.layers)
  hidden = {f"h{i}": h.astype(jnp.float32) for i, h in out["hidden"].items()}
  if cfg.raw:
    hidden = {"raw": raw.astype(jnp.float32), **hidden}
  return feat_lib.pool_features(hidden, cfg.poolings)


def decoded_ids(out: Array, table: Array, gen_cfg: gen_lib.GeneratorConfig) -> Array:
  """The tokens the encoder reads for the generator's outputs (B, L): the argmax of a vocab head's logits, the
  L2-nearest token of an embedding head's vectors."""
  if gen_cfg.head == "vocab":
    return jnp.argmax(out, axis=-1).astype(jnp.int32)
  d2 = jnp.sum(table * table, -1) - 2.0 * jnp.einsum("bld,vd->blv", out, table)
  return jnp.argmin(d2, axis=-1).astype(jnp.int32)


def lm_next_token_logits(encoder, rows: Array, vocab_size: int) -> Array:
  """The frozen LM's next-token logits (N, L, vocab_size) at each position of rows (N, L) read after a start token
  (end-of-text): position t's are for rows[:, t] given rows[:, :t]. No gradient (one teacher-forced pass)."""
  return jax.lax.stop_gradient(gpt2.read_after_start(encoder, rows, logits=True)["logits"][..., :vocab_size])


def continuation_cross_entropy(logits: Array, targets: Array, per_sample: int) -> Array:
  """Mean cross-entropy of logits (B, L, V) toward target tokens (B * per_sample, L), whose rows are grouped by
  sample (sample b's targets are rows b * per_sample ... (b + 1) * per_sample - 1)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)[:, None]  # (B, 1, L, V): no copy per draw.
  own = targets.reshape(logits.shape[0], per_sample, logits.shape[1], 1)
  return -jnp.mean(jnp.take_along_axis(logp, own, axis=-1))


def likeliest_draws(lm_logits: Array, draws: Array, per_sample: int) -> tuple[Array, Array]:
  """The likeliest of each sample's draws: draws (B * per_sample, L), grouped by sample as in
  continuation_cross_entropy, and the LM's next-token logits lm_logits (B * per_sample, L, V) at each of their
  positions (the LM read each row after a start token). Returns the rows (B, L) whose total log-probability
  sum_t log p(draws[r, t] | draws[r, :t]) is the highest of their sample's, and those totals (B * per_sample,)."""
  logp = jax.nn.log_softmax(lm_logits.astype(jnp.float32), axis=-1)
  total = jnp.sum(jnp.take_along_axis(logp, draws[..., None], axis=-1)[..., 0], axis=-1)
  best = jnp.argmax(total.reshape(-1, per_sample), axis=-1)
  rows = draws.reshape(-1, per_sample, draws.shape[-1])
  return rows[jnp.arange(rows.shape[0]), best], total


def mixture_cross_entropy(logits: Array, real_ids: Array, positions: int = 0, smoothing: float = 1e-4) -> Array:
  """Mean over real rows r and positions t < positions (0: all) of -log q_t(real_ids[r, t]), where q_t is the
  mean over the batch's samples of softmax(logits[b, t]) (logits (B, L, V), real_ids (R, L)), mixed with
  `smoothing` of the uniform distribution so that a token no sample offers costs log(V / smoothing), not
  infinity. Its minimum is the real tokens' entropy at each position: reached when the samples' choices are
  spread as the real stories' are, whichever sample makes which choice."""
  positions = positions or logits.shape[1]
  probs = jax.nn.softmax(logits[:, :positions].astype(jnp.float32), axis=-1)
  mixture = (1.0 - smoothing) * jnp.mean(probs, axis=0) + smoothing / logits.shape[-1]  # (T, V)
  picked = mixture[jnp.arange(positions)[None, :], real_ids[:, :positions]]  # (R, T)
  return -jnp.mean(jnp.log(picked))


def greedy_assignment(cost: Array) -> Array:
  """A one-to-one match of rows to columns of cost (B, R), R >= B, by taking the cheapest remaining pair B times;
  returns the column of each row (B,) int32. O(B B R); not the optimal assignment (Hungarian), which may cost less."""
  b, r = cost.shape
  if r < b:
    raise ValueError(f"greedy_assignment needs at least as many columns as rows, got cost {cost.shape}")

  def take(_, carry):
    remaining, columns = carry
    flat = jnp.argmin(remaining)
    row, col = flat // r, flat % r
    remaining = remaining.at[row, :].set(jnp.inf).at[:, col].set(jnp.inf)
    return remaining, columns.at[row].set(col.astype(jnp.int32))

  return jax.lax.fori_loop(0, b, take, (cost.astype(jnp.float32), jnp.zeros((b,), jnp.int32)))[1]


def unit_shares(units: Array) -> Array:
  """(..., S): the share of the S units of n tokens, units (..., S, n), equal to each unit. Memory O(S^2)."""
  same = jnp.all(units[..., :, None, :] == units[..., None, :, :], axis=-1)  # (..., S, S)
  return jnp.mean(same.astype(jnp.float32), axis=-1)


def empirical_entropy(units: Array) -> Array:
  """The entropy of the empirical distribution of S units of n tokens, units (..., S, n): -1/S sum_s log c(u_s),
  c(u_s) the share of the S units equal to u_s. Returns (...). Memory O(S^2)."""
  return -jnp.mean(jnp.log(unit_shares(units)), axis=-1)


def bag_divergence(logits: Array, real_ids: Array, smoothing: float = 1e-4) -> Array:
  """(B, R): KL(c_r || q_b) between real row r's bag of tokens c_r (the share of its L positions holding each
  token) and sample b's q_b (the mean over its L positions of softmax(logits[b]), mixed with `smoothing` of the
  uniform distribution); logits (B, L, V), real_ids (R, L). Order is ignored: a sentence at another position
  still counts. 0 when sample b's expected token counts are row r's; its gradient is the cross-entropy's,
  -1/L sum_t log q_b(real_ids[r, t]) (the entropy of c_r is a constant)."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  bag = (1.0 - smoothing) * jnp.mean(probs, axis=1) + smoothing / logits.shape[-1]  # (B, V)
  cross = -jnp.mean(jnp.log(bag[:, real_ids]), axis=-1)  # (B, R, L) -> (B, R)
  return cross - empirical_entropy(real_ids[..., None])[None]


def ngrams(rows: Array, n: int) -> Array:
  """Every run of n adjacent tokens of every row of rows (N, L), row by row: (N (L - n + 1), n)."""
  length = rows.shape[1] - n + 1
  return jnp.stack([rows[:, i : i + length].reshape(-1) for i in range(n)], -1)


def noise_uniforms(noise: Array | None, option: str) -> Array:
  """The uniforms Phi(noise[b, t, 0]) (B, L) in [0, 1) of the generator's noise (B, L, noise_dim) that couple the
  LM's draws to it (`option` names the setting that needs them in the error when noise is None)."""
  if noise is None:
    raise ValueError(f"{option} needs the generator's noise")
  return jnp.clip(jax.scipy.stats.norm.cdf(noise[..., 0].astype(jnp.float32)), 0.0, 1.0 - 1e-7)


def balance_weights(ids: Array, real_ids: Array, vocab_size: int, eos: int, power: float = 1.0) -> Array:
  """(V,): min(1, r_v / g_v) ** power, where r_v is token v's share of the real rows' (R, L) tokens and g_v its
  share of the samples' (B, L) (end-of-text left out of both); 1 for a token the samples do not write."""

  def shares(rows):
    counts = jnp.zeros((vocab_size,), jnp.float32).at[rows.reshape(-1)].add(1.0).at[eos].set(0.0)
    return counts / jnp.maximum(jnp.sum(counts), 1.0)

  real, gen = shares(real_ids), shares(ids)
  return jnp.where(gen > 0, jnp.minimum(1.0, real / jnp.where(gen > 0, gen, 1.0)), 1.0) ** power


def ngram_distribution(rows: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
  """The pooled bag of n-grams of rows (N, L) of token ids (every run of n adjacent tokens of every row, padding
  included, as mixture_bag_divergence counts a batch's): its S distinct n-grams (S, n) int32 in sorted order and
  their shares (S,) float32, which sum to 1."""
  rows = np.asarray(rows)
  if rows.ndim != 2 or rows.shape[0] == 0 or rows.shape[1] < n:
    raise ValueError(f"ngram_distribution needs rows (N >= 1, L >= n={n}), got shape {rows.shape}")
  distinct, counts = np.unique(np.asarray(ngrams(rows, n)), axis=0, return_counts=True)
  return distinct.astype(np.int32), (counts / counts.sum()).astype(np.float32)


def sorted_openings(rows: np.ndarray, positions: int) -> np.ndarray:
  """The first `positions` tokens (0: all) of every row of rows (N, L), in token order (the first token the
  major key, then the second, ...): (N, positions) int32, repeats kept, so that equal openings take their share."""
  rows = np.asarray(rows)
  if rows.ndim != 2 or rows.shape[0] == 0:
    raise ValueError(f"sorted_openings needs rows (N >= 1, L), got shape {rows.shape}")
  head = rows[:, : positions or rows.shape[1]].astype(np.int32)
  return head[np.lexsort(head.T[::-1])]


def noise_quantile_rows(noise: Array, openings: Array) -> Array:
  """Index (B,) into openings (N, T) sorted by sorted_openings: the row at quantile Phi(noise[b, 0, -1]), the
  normal CDF of the last coordinate of the sample's first noise vector (uniform over (0, 1) as the noise is
  drawn), so that the same noise always has the same target, nearby noise a nearby opening in token order, and
  the targets over many samples are the openings' own distribution."""
  u = jax.scipy.stats.norm.cdf(noise[:, 0, -1].astype(jnp.float32))
  n = openings.shape[0]
  return jnp.clip(jnp.floor(u * n).astype(jnp.int32), 0, n - 1)


def noise_window_rows(logp: Array, noise: Array, openings: Array, window: int) -> Array:
  """Index (B,) into openings (N, T): among the `window` rows around each sample's noise_quantile_rows row (a
  window that would pass an end is moved inside), the one whose tokens the sample's first T log-probabilities
  logp (B, T, V) give the smallest cross-entropy (no gradient through the choice)."""
  n, _ = openings.shape
  window = min(window, n)
  start = jnp.clip(noise_quantile_rows(noise, openings) - window // 2, 0, n - window)  # (B,)
  rows = jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(openings, s, window))(start)  # (B, W, T)
  logp = jax.lax.stop_gradient(logp)
  cost = -jnp.take_along_axis(logp[:, None], rows[..., None], axis=-1)[..., 0].sum(-1)  # (B, W)
  return start + jnp.argmin(cost, axis=-1).astype(start.dtype)


def pooled_bag_cross_entropy(
  logits: Array,
  grams: Array,
  shares: Array,
  smoothing: float = 1e-4,
  counts: str = "expected",
  totals: Array | None = None,
  max_ratio: float = BAG_MAX_RATIO,
) -> Array:
  """-sum_s shares[s] log q(grams[s]): a target bag of n-grams (grams (S, n), shares (S,) summing to 1) under the
  batch's expected one q (logits (B, L, V): q(g) is the mean over every sample b and start t of
  prod_i softmax(logits[b, t + i])[g_i], mixed with `smoothing` of the uniform distribution over V^n n-grams).

  counts "argmax": the value is the same cross-entropy of the argmax bag a (the n-grams of each sample's argmax
  tokens, pooled and smoothed alike), and the gradient is that of -sum_s w_s q(grams[s]), w_s = shares[s] /
  max(a(grams[s]), totals[s] / max_ratio) held fixed: the cross-entropy's gradient at the counts the samples
  write, passed through the softmax. totals[s]: grams[s]'s target share with its repeats in grams (default
  shares: distinct grams). Memory O(B L S)."""
  if counts not in ("expected", "argmax"):
    raise ValueError(f"pooled_bag_cross_entropy: counts={counts!r}; expected 'expected' or 'argmax'")
  n = grams.shape[1]
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  starts = probs.shape[1] - n + 1
  expected = jnp.ones((probs.shape[0], starts, grams.shape[0]), jnp.float32)
  for i in range(n):  # The chance that sample b says target n-gram s at start t: (B, T, S).
    expected = expected * probs[:, i : i + starts][..., grams[:, i]]
  floor = smoothing / float(logits.shape[-1]) ** n
  q = jnp.mean(expected, axis=(0, 1))
  if counts == "expected":
    return -jnp.sum(shares * jnp.log((1.0 - smoothing) * q + floor))
  ids = jnp.argmax(logits, axis=-1)
  written = jnp.ones_like(expected, dtype=bool)
  for i in range(n):  # Whether sample b writes target n-gram s at start t.
    written = written & (ids[:, i : i + starts, None] == grams[:, i])
  a = jnp.mean(written.astype(jnp.float32), axis=(0, 1))
  totals = shares if totals is None else totals
  w = jax.lax.stop_gradient(shares / jnp.maximum(a, totals / max_ratio))
  surrogate = -jnp.sum(w * q)
  return -jnp.sum(shares * jnp.log((1.0 - smoothing) * a + floor)) + surrogate - jax.lax.stop_gradient(surrogate)


def pooled_bag_divergence(
  logits: Array,
  grams: Array,
  shares: Array,
  smoothing: float = 1e-4,
  counts: str = "expected",
  max_ratio: float = BAG_MAX_RATIO,
) -> Array:
  """KL(c || q) between a target bag of n-grams c (distinct grams (S, n), shares (S,) summing to 1) and the
  batch's expected (counts "argmax": written) one q (pooled_bag_cross_entropy less the target's entropy). Neither
  which sample says an n-gram nor where counts; 0 when the samples together say each one as often as c."""
  value = pooled_bag_cross_entropy(logits, grams, shares, smoothing, counts, max_ratio=max_ratio)
  return value - distribution_entropy(shares)


def distribution_entropy(shares: Array) -> Array:
  """-sum_s p_s log p_s of a distribution (S,) (0 log 0 = 0)."""
  safe = jnp.where(shares > 0, shares, 1.0)
  return -jnp.sum(shares * jnp.log(safe))


def mixture_bag_divergence(
  logits: Array,
  real_ids: Array,
  n: int = 1,
  smoothing: float = 1e-4,
  counts: str = "expected",
  max_ratio: float = BAG_MAX_RATIO,
) -> Array:
  """pooled_bag_divergence against the real rows' (R, L) pooled bag of n-grams (every run of n adjacent tokens
  of every row, all rows together, each occurrence one unit). n = 1: tokens; n = 2: pairs of adjacent tokens (a
  pair no real row has takes mass from the real ones, so broken pairs such as a repeated word cost too); and so
  on. counts: pooled_bag_cross_entropy's. Memory O((B + R) L R L): for the demo's 32 + 128 rows of 96 tokens,
  about 150 MB."""
  grams = ngrams(real_ids, n)  # (S, n): the real n-grams.
  shares = jnp.full((grams.shape[0],), 1.0 / grams.shape[0], jnp.float32)  # Repeats add up to their share.
  totals = unit_shares(grams)
  # Less the target's entropy over distinct n-grams (the shares of repeated ones counted together).
  value = pooled_bag_cross_entropy(logits, grams, shares, smoothing, counts, totals, max_ratio)
  return value + jnp.mean(jnp.log(totals))


def position_cross_entropy(logits: Array, real_ids: Array) -> Array:
  """(B, R): -1/L sum_t log softmax(logits[b, t])[real_ids[r, t]], every sample (logits (B, L, V)) against every
  real row (real_ids (R, L)), position by position."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # (B, L, V)
  real = jnp.broadcast_to(real_ids.T[None], (logits.shape[0], real_ids.shape[1], real_ids.shape[0]))
  return -jnp.mean(jnp.take_along_axis(logp, real, axis=-1), axis=1)


def matched_cross_entropy(
  logits: Array, real_ids: Array, positions: int = 0, bag_weight: float = 0.0, gap: float = 0.0
) -> tuple[Array, Array, Array]:
  """Mean over samples b of cost[b, m(b)], where cost[b, r] is -1/T sum_{t < T} log softmax(logits[b, t])
  [real_ids[r, t]] over the first T = positions (0: all) positions (with gap > 0: the same under the cheapest
  monotone alignment of the two rows' first T tokens, each unaligned token costing gap; align_lib.
  aligned_cross_entropy), plus bag_weight times bag_divergence (the whole rows' bags of tokens), and m matches
  the B samples one to one to real rows (R >= B) by greedy_assignment of those costs (no gradient through the
  matching). Returns the value, m (B,) and the matched pairs' bag divergence (0 when bag_weight is 0)."""
  positions = positions or logits.shape[1]
  if gap:
    cost = align_lib.aligned_cross_entropy(logits[:, :positions], real_ids[:, :positions], gap)  # (B, R)
  else:
    cost = position_cross_entropy(logits[:, :positions], real_ids[:, :positions])
  bag = bag_divergence(logits, real_ids) if bag_weight else jnp.zeros_like(cost)
  cost = cost + bag_weight * bag
  match = greedy_assignment(jax.lax.stop_gradient(cost))
  rows = jnp.arange(logits.shape[0])
  return jnp.mean(cost[rows, match]), match, jnp.mean(bag[rows, match])


def bag_overlap(ids: Array, real_ids: Array, vocab_size: int) -> Array:
  """(B,): the share of the L tokens of ids[b] that real_ids[b] also has, counts included (sum_v min of the two
  rows' counts of v, over L): 1 when the rows are the same tokens in any order."""
  count = lambda x: jax.vmap(lambda row: jnp.zeros((vocab_size,), jnp.int32).at[row].add(1))(x)
  return jnp.sum(jnp.minimum(count(ids), count(real_ids)), axis=-1) / ids.shape[1]


def generated_loss(
  encoder,
  out: Array,
  pos_feats,
  pos_w: Array | None,
  cfg: StepConfig,
  queue_ids: Array | None = None,
  key: Array | None = None,
  noise: Array | None = None,
  step: Array | None = None,
  real_ids: Array | None = None,
  bag_target: tuple[Array, Array] | None = None,
  openings: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
  """The drift loss of generator outputs out (B, L, V or D; with a slotted layout (B, P, V + 1)) and the metrics
  to watch.

  pos_feats / pos_w: the real positives' pooled features and weights (used when cfg.uses_data);
  queue_ids: optional (Q, L) earlier generated tokens, extra negatives of the teacher loss;
  key: the PRNG key of the continuations' sampling (needed when cfg.uses_continuation);
  noise: the generator's input noise (B, L, noise_dim) (needed with continuation_coupling "noise" or
  continuation_choices);
  step: the training step (needed with continuation_ce_start > 0);
  real_ids: (R, L) real stories' tokens (needed with mixture_ce_weight, mixture_bag_weight, matched_ce_weight or
  continuation_balance > 0);
  bag_target: the (grams (S, n), shares (S,)) of ngram_distribution over the training rows (needed with
  mixture_bag_target "split");
  openings: (N, T) the training rows' sorted_openings (needed with matched_ce_coupling "noise", with the noise).
  """
  noise_coupled = cfg.matched_ce_weight and cfg.matched_ce_coupling == "noise"
  if noise_coupled and (openings is None or noise is None):
    raise ValueError("drift.matched_ce_coupling='noise' needs the training rows' sorted openings and the noise")
  if cfg.mixture_bag_weight and cfg.mixture_bag_target == "split" and bag_target is None:
    raise ValueError("drift.mixture_bag_target='split' needs the training rows' n-gram distribution (bag_target)")
  uses_real = ["mixture_ce_weight"] if cfg.mixture_ce_weight else []
  if cfg.matched_ce_weight and not noise_coupled:
    uses_real.append("matched_ce_weight")
  if cfg.mixture_bag_weight and cfg.mixture_bag_target == "batch":
    uses_real.append("mixture_bag_weight")
  if cfg.continuation_balance:
    uses_real.append("continuation_balance")
  if uses_real and real_ids is None:
    raise ValueError(f"drift.{uses_real[0]} needs the real rows' tokens")
  if cfg.uses_continuation and cfg.continuation_ce_start and step is None:
    raise ValueError("drift.continuation_ce_start needs the training step")
  table = encoder.wte[...][: cfg.gen.vocab_size]  # The tokens the vocab head chooses among.
  laid_out = to_layout = None
  if cfg.gen.layout_multiple:  # The text is the layout's non-filler tokens; the cross-entropies' targets are laid out.
    laid_out, filler = out, cfg.gen.filler
    out = layout_lib.collapse_logits(laid_out, filler, cfg.gen.seq_len, encoder.cfg.eos_token_id)
    ends = jnp.zeros((filler + 1,), bool).at[jnp.asarray(cfg.sentence_ends)].set(True)
    to_layout = lambda ids: layout_lib.slot(ids, ends, cfg.gen.layout_multiple, cfg.gen.positions, filler)
  emb = gen_lib.to_embeddings(out, table, cfg.gen)
  total, metrics = jnp.zeros((), jnp.float32), {}
  gen_feats = feature_dict(encoder, emb, None, cfg) if cfg.uses_data or cfg.uses_continuation else None
  if cfg.uses_data:
    total, metrics = losses_lib.drift_losses(gen_feats, pos_feats, pos_w, cfg.groups, cfg.field)
  if cfg.mixture_ce_weight:
    mix = mixture_cross_entropy(out, real_ids, cfg.mixture_ce_positions)
    total = total + cfg.mixture_ce_weight * mix
    metrics["loss/mixture_ce"] = mix
  if cfg.mixture_bag_weight:
    if cfg.mixture_bag_target == "split":
      pooled = pooled_bag_divergence(
        out, *bag_target, counts=cfg.mixture_bag_counts, max_ratio=cfg.mixture_bag_max_ratio
      )
    else:
      pooled = mixture_bag_divergence(
        out, real_ids, cfg.mixture_bag_n, counts=cfg.mixture_bag_counts, max_ratio=cfg.mixture_bag_max_ratio
      )
    total = total + cfg.mixture_bag_weight * pooled
    metrics["loss/mixture_bag"] = pooled
  if noise_coupled:  # Each sample toward the opening at its noise's quantile (no layout: checked by StepConfig).
    m_out, m_real = out, jnp.asarray(openings)  # A NumPy constant of the compiled step.
    logp = jax.nn.log_softmax(out[:, : m_real.shape[1]].astype(jnp.float32), axis=-1)
    if cfg.matched_ce_window:
      match = noise_window_rows(logp, noise, m_real, cfg.matched_ce_window)
    else:
      match = noise_quantile_rows(noise, m_real)
    matched = -jnp.mean(jnp.take_along_axis(logp, m_real[match][..., None], axis=-1))
  elif cfg.matched_ce_weight:
    # With a layout: the laid-out logits toward the laid-out real rows (the first positions hold the opening).
    m_real = real_ids[: cfg.matched_ce_rows] if cfg.matched_ce_rows else real_ids
    m_out, m_real = (laid_out, to_layout(m_real)) if to_layout else (out, m_real)
    matched, match, bag = matched_cross_entropy(
      m_out, m_real, cfg.matched_ce_positions, cfg.matched_ce_bag_weight, cfg.matched_ce_gap
    )
  if cfg.matched_ce_weight:
    total = total + cfg.matched_ce_weight * matched
    metrics["loss/matched_ce"] = matched
    # How far the samples are from their matches: the share of the matched positions whose argmax differs.
    t = cfg.matched_ce_positions or m_out.shape[1]
    argmax = jnp.argmax(m_out, -1)
    metrics["diag/matched_changed"] = jnp.mean((argmax[:, :t] != m_real[match, :t]).astype(jnp.float32))
    if cfg.matched_ce_gap:  # What the alignment forgives: the matched pairs' position-wise cross-entropy less theirs.
      plain = jnp.diagonal(position_cross_entropy(m_out[:, :t], m_real[match, :t]))  # (B,): each with its match.
      metrics["diag/matched_shift_saving"] = jnp.mean(plain) - (matched - cfg.matched_ce_bag_weight * bag)
    if cfg.matched_ce_bag_weight:
      metrics["loss/matched_bag"] = bag
      metrics["diag/matched_bag_overlap"] = jnp.mean(bag_overlap(argmax, m_real[match], m_out.shape[-1]))
  if to_layout:  # How much of the layout is filler, and whether the text fits in it.
    fill = jnp.argmax(laid_out, -1) == cfg.gen.filler
    metrics["diag/layout_filler"] = jnp.mean(fill.astype(jnp.float32))
    metrics["diag/layout_short"] = jnp.mean((jnp.sum(~fill, 1) < cfg.gen.seq_len).astype(jnp.float32))
  if not (cfg.uses_teacher or cfg.uses_continuation) and cfg.gen.head != "vocab":
    # Decoding an embedding head is a nearest-token search over the whole vocabulary ((B, L, V) distances):
    # the data-only step does not pay for it just to report the decoded tokens' diagnostics.
    return total, metrics
  ids = jax.lax.stop_gradient(decoded_ids(out, table, cfg.gen))
  eos = encoder.cfg.eos_token_id
  cand = weights = None
  if cfg.uses_teacher or (cfg.uses_continuation and cfg.continuation_policy == "resample"):
    # The LM's likely next tokens after each sample's own prefix (one pass, teacher-forced).
    cand, weights = teacher_lib.next_token_candidates(
      lm_next_token_logits(encoder, ids, cfg.gen.vocab_size),
      ids,
      top_k=cfg.teacher_top_k,
      floor=cfg.teacher_floor,
      min_ratio=cfg.teacher_min_ratio,
      repeat_ngram=cfg.teacher_repeat_ngram,
      eos_id=eos,
    )
  if cfg.uses_continuation:
    if key is None:
      raise ValueError("continuation positives need a PRNG key")
    m = cfg.continuation_samples
    own = jnp.repeat(ids, m, axis=0)  # Each sample's M positives stay in its group (group-major rows).
    kw = dict(
      top_k=cfg.teacher_top_k,
      floor=cfg.teacher_floor,
      min_ratio=cfg.teacher_min_ratio,
      policy=cfg.continuation_policy,
      repeat_ngram=cfg.teacher_repeat_ngram,
      repeat_penalty=cfg.continuation_repeat_penalty,
      repeat_window=cfg.continuation_repeat_window,
      temperature=cfg.continuation_temperature,
    )
    if cfg.continuation_balance:
      kw["token_weights"] = balance_weights(ids, real_ids, cfg.gen.vocab_size, eos, cfg.continuation_balance)
      # The chance that a sample's token stays on the balance's account (the LM may still reject it).
      metrics["diag/balance_keep"] = jnp.mean(jnp.where(ids == eos, 1.0, kw["token_weights"][ids]))
    copies = 1  # Positives per row of cont (M where one row stands for a sample's M positives).

    def choice_kw(reps: int) -> dict:  # The choice points' settings for rows holding each sample reps times.
      if not cfg.continuation_choices:
        return {}
      u = jnp.repeat(noise_uniforms(noise, "continuation_choices"), reps, axis=0)
      return dict(choices=cfg.continuation_choices, choice_uniforms=u, choices_from=cfg.continuation_choices_from)

    if cfg.continuation_policy == "resample":
      cont, _ = teacher_lib.resample_unlikely(key, ids, cand, weights, m)
    elif cfg.continuation_rows == 1:  # (With M = 1 the same call as below.)
      # The M continuations of a sample are one row: its draws are a function of its noise, or greedy.
      uniforms = (
        noise_uniforms(noise, "continuation_coupling='noise'") if cfg.continuation_coupling == "noise" else None
      )
      out_rows, copies = kv_decode.continue_samples(encoder, key, ids, uniforms=uniforms, **kw, **choice_kw(1)), m
    else:
      out_rows = kv_decode.continue_samples(encoder, key, own, **kw, **choice_kw(m))
    if cfg.continuation_policy != "resample":
      cont = out_rows[0]
      if cfg.continuation_choices:  # The share of a sample's positions that are choice points.
        metrics["diag/choice_points"] = jnp.mean(out_rows[2].astype(jnp.float32))
    cont_feats = jax.lax.stop_gradient(feature_dict(encoder, None, cont, cfg))
    if copies > 1:  # The encoder reads each distinct row once; its features stand for its M copies.
      cont_feats = {k: jnp.repeat(v, copies, axis=0) for k, v in cont_feats.items()}
    if cfg.continuation_kernel == "own":
      c_loss, c_metrics = losses_lib.own_positive_losses(gen_feats, cont_feats, cfg.groups, cfg.field)
    else:
      c_loss, c_metrics = losses_lib.drift_losses(
        gen_feats, cont_feats, jnp.ones((cfg.groups, cfg.n_gen * m)), cfg.groups, cfg.field
      )
    total = total + cfg.continuation_weight * c_loss
    per_sample = m // copies  # Distinct rows of cont per sample (its draws).
    if cfg.continuation_ce_weight:
      targets, ce_rows = cont, per_sample
      if cfg.continuation_ce_target == "likeliest" and per_sample > 1:
        targets, _ = likeliest_draws(lm_next_token_logits(encoder, cont, cfg.gen.vocab_size), cont, per_sample)
        ce_rows = 1
      ce_out = out
      if to_layout:  # Laid-out logits toward the laid-out targets: each sentence on its grid position.
        ce_out, targets = laid_out, to_layout(targets)
      ce = continuation_cross_entropy(ce_out, targets, ce_rows)
      weight = jnp.asarray(cfg.continuation_ce_weight, jnp.float32)
      if cfg.continuation_ce_start:
        weight = jnp.where(step >= cfg.continuation_ce_start, weight, 0.0)
      total = total + weight * ce
      metrics["loss/continuation_ce"] = ce
    metrics.update({f"cont/{k}": v for k, v in c_metrics.items()})
    metrics["loss/continuation"] = c_loss
    # How much of the samples the LM would change: the share of tokens, and the first changed position.
    changed = cont != (own if copies == 1 else ids)
    metrics["diag/cont_changed"] = jnp.mean(changed.astype(jnp.float32))
    first = jnp.where(jnp.any(changed, 1), jnp.argmax(changed, 1), ids.shape[1])
    metrics["diag/cont_first_changed"] = jnp.mean(first.astype(jnp.float32))
    if per_sample > 1:  # Where a sample's draws disagree: the share of its positions where they are not all one.
      draws = cont.reshape(ids.shape[0], per_sample, ids.shape[1])
      metrics["diag/cont_disagree"] = jnp.mean(jnp.any(draws != draws[:, :1], axis=1).astype(jnp.float32))
  if cfg.uses_teacher:
    t_loss, aux = teacher_lib.teacher_loss(
      emb, ids, cand, weights, table, config=cfg.field, queue_ids=queue_ids, repeat_window=cfg.teacher_repeat_window
    )
    total = total + cfg.teacher_weight * t_loss
    metrics.update({"loss/teacher": t_loss, "scale/teacher": aux["scale"]})
  head_logits = out if cfg.gen.head == "vocab" else None
  metrics.update(
    teacher_lib.diagnostics(ids, cfg.gen.vocab_size, head_logits, weights if cfg.uses_teacher else None, eos)
  )
  return total, metrics


def _in_chunks(x: Array, chunk: int) -> Array:
  """(B, ...) -> (B / chunk, chunk, ...)."""
  return x.reshape(x.shape[0] // chunk, chunk, *x.shape[1:])


def _joined(tree):
  """The inverse of _in_chunks on every leaf."""
  return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), tree)


def chunked_loss_and_grads(
  params, graphdef, encoder, noise: Array, style: Array, pos_ids: Array, pos_w: Array, cfg: StepConfig
) -> tuple[Array, dict[str, Array], Any]:
  """The data-positives loss, its metrics and gradients as the whole-batch step computes them, with the
  activations of only cfg.chunk rows alive at a time (train.chunk).

  The field couples samples only through their features: the real rows' features are taken chunk by chunk, the
  generated rows' too (no gradients), then the fields of all of them; given the fields the loss is a sum over
  generated rows, so its gradient is summed over chunks, each running the generator and encoder again.
  The price: one more forward pass of the generated rows (generator and encoder).
  pos_ids: (G * M, L) positives, group-major; pos_w: (G, M).
  """
  c = cfg.chunk
  table = encoder.wte[...][: cfg.gen.vocab_size]

  reader = gpt2.draft_reader(encoder, cfg.gen.vocab_size)  # Read only by a generator with draft_blocks.

  def gen_features(p, noise_c, style_c):
    out = nnx.merge(graphdef, p)(noise_c, style_c, reader)
    return feature_dict(encoder, gen_lib.to_embeddings(out, table, cfg.gen), None, cfg)

  inputs = (_in_chunks(noise, c), _in_chunks(style, c))
  pos_feats = _joined(jax.lax.map(lambda ids: feature_dict(encoder, None, ids, cfg), _in_chunks(pos_ids, c)))
  gen_feats = _joined(jax.lax.map(lambda a: gen_features(params, *a), inputs))
  pos_feats, gen_feats = jax.lax.stop_gradient((pos_feats, gen_feats))
  fields, feat_scales, metrics = losses_lib.drift_fields(gen_feats, pos_feats, pos_w, cfg.groups, cfg.field)
  sizes = {k: v.size for k, v in gen_feats.items()}

  def chunk_loss(p, noise_c, style_c, x0_c, v_c):
    # (x - x0) / s' - V: the whole-batch residual x / s' - sg(x / s' + V), without subtracting two large numbers.
    feats = gen_features(p, noise_c, style_c)
    return sum(jnp.sum(jnp.square((feats[k] - x0_c[k]) / feat_scales[k] - v_c[k])) / sizes[k] for k in feats)

  def body(carry, xs):
    loss, grads = carry
    chunk_value, chunk_grads = jax.value_and_grad(chunk_loss)(params, *xs)
    return (loss + chunk_value, jax.tree.map(jnp.add, grads, chunk_grads)), None

  fixed = jax.tree.map(lambda a: _in_chunks(a, c), (gen_feats, fields))
  zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
  (loss, grads), _ = jax.lax.scan(body, zeros, (*inputs, *fixed))
  return loss, metrics, grads


def train_step(
  state: TrainState,
  real_ids: Array,
  enc_state,
  *,
  graphdef,
  enc_graphdef,
  cfg: StepConfig,
  tx: optax.GradientTransformation,
  schedule,
  bag_target: tuple[Array, Array] | None = None,
  openings: Array | None = None,
) -> tuple[TrainState, dict[str, Array]]:
  """One update. real_ids: (G * n_pos, L) int32 fresh real rows, group-major; bag_target and openings:
  generated_loss's."""
  encoder = nnx.merge(enc_graphdef, jax.lax.stop_gradient(enc_state))
  g, length = cfg.groups, real_ids.shape[1]
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
  noise, style = gen_lib.sample_inputs(step_key, g * cfg.n_gen, cfg.gen)

  fresh = real_ids.reshape(g, cfg.n_pos, length)
  pos_ids, pos_w = fresh, jnp.ones((g, cfg.n_pos))  # (G, M, L), (G, M)
  if cfg.queue_size:
    pos_ids = jnp.concatenate([fresh, state["queue"]], axis=1)
    pos_w = jnp.concatenate([pos_w, state["queue_filled"]], axis=1)
  if cfg.chunk:
    loss, metrics, grads = chunked_loss_and_grads(
      state["params"], graphdef, encoder, noise, style, pos_ids.reshape(-1, length), pos_w, cfg
    )
  else:
    pos_feats = None
    if cfg.uses_data:
      pos_feats = jax.lax.stop_gradient(feature_dict(encoder, None, pos_ids.reshape(-1, length), cfg))

    def loss_fn(params):
      model = nnx.merge(graphdef, params)
      draft, out = model.drafts(noise, style, gpt2.draft_reader(encoder, cfg.gen.vocab_size))
      key = jax.random.fold_in(step_key, 1)
      loss, metrics = generated_loss(
        encoder,
        out,
        pos_feats,
        pos_w,
        cfg,
        key=key,
        noise=noise,
        step=state["step"],
        real_ids=real_ids,
        bag_target=bag_target,
        openings=openings,
      )
      if cfg.gen.draft_blocks:  # How much reading the draft changed: the share of tokens the final pass moved.
        changed = jnp.argmax(draft, -1) != jnp.argmax(out, -1)
        metrics["diag/draft_changed"] = jnp.mean(changed.astype(jnp.float32))
        metrics["diag/draft_gate"] = model.draft_gate[...]  # The weight of the LM's log-probabilities.
      return loss, metrics

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  ema = optax.incremental_update(params, state["ema"], 1.0 - cfg.ema_decay)

  new_state = {"step": state["step"] + 1, "params": params, "ema": ema, "opt_state": opt_state, "rng": state["rng"]}
  if cfg.queue_size:  # FIFO: newest first, oldest drop out.
    new_state["queue"] = pos_ids[:, : cfg.queue_size]
    new_state["queue_filled"] = pos_w[:, : cfg.queue_size]
  metrics.update(loss=loss, grad_norm=optax.global_norm(grads), lr=schedule(state["step"]))
  return new_state, metrics
