"""Teacher positives (docs/demo.md, "Teacher positives"; issue 14): per-position positives proposed by a frozen LM.

Feature matching against whole real stories stalls on text because real stories are nearly equidistant and
misaligned with any one sample (docs/method.md section 7). Here the positives of position t of a sample are the
tokens a frozen LM finds likely after the sample's own prefix (its tokens before t): near and aligned by
construction. Each (sample, position) is one group of the paper's field on token-embedding features: one
generated row (the sample's output at t), its candidate tokens as positives weighted by the LM's probabilities,
and as negatives the other samples' tokens at t (optionally also earlier samples' tokens from a queue and the
sample's own previous tokens, a repulsion from repeats).

Pure functions: arrays in, arrays out. The caller runs the LM (under stop-gradient) and passes its logits.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from driftjax.drift import field as field_lib

Array = jax.Array


def repeat_mask(ids: Array, cand: Array, n: int) -> Array:
  """Which candidates would repeat an n-gram already in the sample (B, L, K) bool.

  ids: the sample's tokens (B, L); cand: candidate tokens for each position (B, L, K). Candidate c at position
  t is masked when the n-gram ids[t-n+1 .. t-1] + [c] already occurs ending at some s < t. n = 1 masks every
  token seen before t; n < 1 masks nothing.
  """
  b, length = ids.shape
  if n < 1:
    return jnp.zeros(cand.shape, bool)
  t_idx = jnp.arange(length)
  # match[b, t, s]: the n-1 tokens before t equal the n-1 tokens before s, and s < t (s >= n-1, t >= n-1).
  match = (t_idx[None, :, None] > t_idx[None, None, :]) & (t_idx[None, None, :] >= n - 1)
  match = jnp.broadcast_to(match, (b, length, length))
  for j in range(1, n):
    # Left-shifted copies; the two pads differ so that padding never matches padding.
    shift_t = jnp.pad(ids, ((0, 0), (j, 0)), constant_values=-1)[:, :length]
    shift_s = jnp.pad(ids, ((0, 0), (j, 0)), constant_values=-2)[:, :length]
    match = match & (shift_t[:, :, None] == shift_s[:, None, :])
  # Candidate c at t is banned if some matching s holds token c.
  hit = ids[:, None, :, None] == cand[:, :, None, :]  # (B, L_t, L_s, K)
  return jnp.any(match[..., None] & hit, axis=2)


def next_token_candidates(
  logits: Array,
  ids: Array,
  *,
  top_k: int,
  floor: float,
  min_ratio: float = 0.0,
  repeat_ngram: int = 0,
  junk_ids: Array | None = None,
  eos_id: int | None = None,
) -> tuple[Array, Array]:
  """The LM's likely next tokens at each position as weighted positives.

  Args:
    logits: (B, L, V) the LM's next-token logits, row t conditioned on the sample's tokens before t (the caller
      feeds [bos] + ids[:, :-1]).
    ids: the sample's tokens (B, L).
    top_k: candidates per position K.
    floor: candidates with probability below it weigh 0.
    min_ratio: so do candidates below this fraction of the position's top probability (0: off; min-p).
    repeat_ngram: candidates that would repeat an n-gram of this size already in the sample weigh 0 (0: off).
    junk_ids: optional (J,) tokens that are never positives.
    eos_id: when given, positions after the sample's first end-of-text are padding, as in real rows: their
      only candidate is end-of-text with weight 1.

  Returns:
    cand (B, L, K) int32 token ids and weights (B, L, K): the LM's probabilities, 0 where masked.
  """
  logits = logits.astype(jnp.float32)
  # top_k of the logits, then their probabilities: of the softmax's output (a fusion) XLA:CPU can sort the whole
  # vocabulary instead (kv_decode.continue_samples measured 8x slower).
  top, cand = jax.lax.top_k(logits, top_k)
  w = jnp.exp(top - jax.nn.logsumexp(logits, axis=-1, keepdims=True))
  cand = cand.astype(jnp.int32)
  keep = (w >= floor) & (w >= min_ratio * w[..., :1])  # w is sorted: [..., 0] is the top probability.
  if repeat_ngram > 0:
    keep = keep & ~repeat_mask(ids, cand, repeat_ngram)
  if junk_ids is not None and junk_ids.size:
    keep = keep & ~jnp.any(cand[..., None] == junk_ids.reshape(-1), axis=-1)
  w = jnp.where(keep, w, 0.0)
  if eos_id is not None:
    is_eos = ids == eos_id
    first = jnp.where(jnp.any(is_eos, 1), jnp.argmax(is_eos, 1), ids.shape[1])  # (B,)
    after = jnp.arange(ids.shape[1])[None, :] > first[:, None]  # (B, L)
    pad_cand = jnp.zeros_like(cand).at[..., 0].set(eos_id)
    pad_w = jnp.zeros_like(w).at[..., 0].set(1.0)
    cand = jnp.where(after[..., None], pad_cand, cand)
    w = jnp.where(after[..., None], pad_w, w)
  return cand, w


def resample_unlikely(key: Array, ids: Array, cand: Array, weights: Array, m: int) -> tuple[Array, Array]:
  """M copies of each sample with every token the LM finds unlikely replaced by one of its candidates.

  ids (B, L); cand, weights (B, L, K) from next_token_candidates (a token is likely at t when it is a candidate
  there with weight > 0). Each unlikely token is replaced by a candidate drawn with probability proportional to
  the weights (the top candidate when all weigh 0), independently in each copy; every position is conditioned
  on the sample's own tokens before it (one LM pass, no loop: kv_decode.continue_samples(policy="repair") is the
  sequential version). Returns rows (B * M, L), sample-major (copies of sample b are rows b*M .. b*M+M-1), and
  the likely mask (B, L).
  """
  likely = jnp.any((cand == ids[..., None]) & (weights > 0), axis=-1)
  w = jnp.where(jnp.sum(weights, -1, keepdims=True) > 0, weights, jnp.zeros_like(weights).at[..., 0].set(1.0))
  logw = jnp.where(w > 0, jnp.log(jnp.maximum(w, 1e-30)), -jnp.inf)
  pick = jax.random.categorical(key, logw, axis=-1, shape=(m,) + ids.shape)  # (M, B, L)
  drawn = jnp.take_along_axis(cand[None], pick[..., None], axis=-1)[..., 0]
  rows = jnp.where(likely[None], ids[None], drawn)  # (M, B, L)
  return jnp.swapaxes(rows, 0, 1).reshape(-1, ids.shape[1]), likely


def teacher_groups(
  emb: Array,
  ids: Array,
  cand: Array,
  weights: Array,
  table: Array,
  *,
  queue_ids: Array | None = None,
  repeat_window: int = 0,
) -> tuple[Array, Array, Array, Array, Array]:
  """One field group per (sample, position): (x, pos, pos_w, neg, neg_w).

  emb: the generated embeddings (B, L, D) (with gradient); ids: their tokens (B, L); cand, weights: (B, L, K);
  table: token embeddings (V, D); queue_ids: optional (Q, L) earlier generated samples, extra negatives at the
  same position; repeat_window: the sample's own previous w tokens are also negatives (a repulsion from repeats).
  Returns x (B*L, 1, D), pos (B*L, K, D), pos_w (B*L, K), neg (B*L, Kn, D), neg_w (B*L, Kn).
  """
  b, length, d = emb.shape
  k = cand.shape[-1]
  hard = jnp.take(table, ids, axis=0)  # (B, L, D): what the encoder reads (straight-through forward).
  x = emb.reshape(b * length, 1, d)
  pos = jnp.take(table, cand, axis=0).reshape(b * length, k, d)
  pos_w = weights.reshape(b * length, k)
  # The other samples' tokens at the same position; the sample's own column weighs 0.
  negs = [jnp.broadcast_to(jnp.swapaxes(hard, 0, 1)[None], (b, length, b, d))]  # [i, t, j] = hard[j, t]
  neg_ws = [jnp.broadcast_to((1.0 - jnp.eye(b))[:, None, :], (b, length, b))]
  if queue_ids is not None:
    q = jnp.take(table, queue_ids, axis=0)  # (Q, L, D)
    negs.append(jnp.broadcast_to(jnp.swapaxes(q, 0, 1)[None], (b, length, q.shape[0], d)))
    neg_ws.append(jnp.ones((b, length, q.shape[0])))
  for j in range(1, repeat_window + 1):
    prev = jnp.pad(hard, ((0, 0), (j, 0), (0, 0)))[:, :length]
    negs.append(prev[:, :, None])
    neg_ws.append((jnp.arange(length) >= j).astype(jnp.float32)[None, :, None] * jnp.ones((b, 1, 1)))
  neg = jnp.concatenate(negs, axis=2).reshape(b * length, -1, d)
  neg_w = jnp.concatenate(neg_ws, axis=2).reshape(b * length, -1)
  return x, jax.lax.stop_gradient(pos), pos_w, jax.lax.stop_gradient(neg), neg_w


def teacher_loss(
  emb: Array,
  ids: Array,
  cand: Array,
  weights: Array,
  table: Array,
  *,
  config: field_lib.FieldConfig,
  queue_ids: Array | None = None,
  repeat_window: int = 0,
) -> tuple[Array, dict[str, Array]]:
  """The drift loss of every (sample, position) group against its teacher positives (see teacher_groups).

  The generated row is the group's only generated row, so it is not its own negative: the negatives are the
  other samples (and the queue, and the repeat window).
  """
  x, pos, pos_w, neg, neg_w = teacher_groups(
    emb, ids, cand, weights, table, queue_ids=queue_ids, repeat_window=repeat_window
  )
  cfg = dataclasses.replace(config, include_generated_negatives=False)
  return field_lib.drift_loss(x, pos, neg, pos_w, neg_w, config=cfg)


def diagnostics(
  ids: Array, vocab: int, head_logits: Array | None, weights: Array | None, eos_id: int | None = None
) -> dict[str, Array]:
  """Scalars to watch: adjacent duplicates, the head's commitment, effective positives, agreement.

  ids (B, L) the decoded tokens, below vocab; head_logits (B, L, V) the vocab head's logits (None for other heads);
  weights (B, L, K) the teacher's candidate weights (None without a teacher); eos_id: when given, adjacent pairs
  at or after a sample's first end-of-text (its padding) are not counted.
  """
  b = ids.shape[0]
  pairs = jnp.ones(ids[:, 1:].shape, bool)
  if eos_id is not None:
    pairs = jnp.cumsum(ids == eos_id, axis=1)[:, 1:] == 0  # Both tokens of the pair before the end.
  dup = (ids[:, 1:] == ids[:, :-1]) & pairs
  out = {"diag/dup_adjacent": jnp.sum(dup) / jnp.maximum(jnp.sum(pairs), 1)}
  counts = jnp.sum(jax.nn.one_hot(ids, vocab, dtype=jnp.float32), axis=0)  # (L, V)
  out["diag/agree"] = jnp.mean(jnp.max(counts, -1)) / b
  if head_logits is not None:
    out["diag/head_top_p_median"] = jnp.median(jnp.max(jax.nn.softmax(head_logits.astype(jnp.float32), -1), -1))
  if weights is not None:
    s1, s2 = jnp.sum(weights, -1), jnp.sum(jnp.square(weights), -1)
    eff = jnp.where(s1 > 0, jnp.square(s1) / jnp.maximum(s2, 1e-30), 0.0)
    out["diag/eff_positives"] = jnp.mean(eff)
    out["diag/no_positive_share"] = jnp.mean((s1 <= 0).astype(jnp.float32))
  return out
