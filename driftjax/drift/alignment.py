"""Monotone alignment of a sample's per-position token distributions to a target row of tokens.

A one-step sample and a real story rarely say their sentences at the same positions: one more word early on
shifts everything after it, and a position-by-position cross-entropy then pulls every later position toward the
wrong word. aligned_cross_entropy compares them under the cheapest monotone alignment instead (an edit distance
whose substitution cost is the sample's -log-probability of the target token, as in aligned cross-entropy for
non-autoregressive translation, arXiv 2004.01655): a sample that says the story one token late pays two gaps, not
a mismatch at every later position. Pure functions of arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def token_costs(logp: Array, targets: Array) -> Array:
  """(B, R, I, J): cost[b, r, i, j] = -logp[b, j, targets[r, i]], every sample b (logp (B, J, V)) against every
  target row r (targets (R, I))."""
  return -jnp.swapaxes(logp, 1, 2)[:, targets]


def alignment_cost(cost: Array, gap: float) -> Array:
  """(...,): the least total cost of a monotone alignment of the I targets to the J positions of cost (..., I, J):
  aligning target i to position j costs cost[..., i, j]; leaving a target or a position unaligned costs `gap`.
  The edit distance's recursion, one target at a time (a scan over I); the skips along a row are a running
  minimum (lax.cummin). Its gradient is 1 on the aligned pairs of the cheapest alignment, 0 elsewhere."""
  *batch, n_i, n_j = cost.shape
  steps = jnp.arange(n_j + 1, dtype=cost.dtype)
  first = jnp.broadcast_to(gap * steps, (*batch, n_j + 1))  # No target aligned yet: j skipped positions.

  def row(prev, inputs):
    i, c = inputs  # c (..., J): target i against every position.
    # Reaching (i + 1, j) by aligning target i to position j - 1, or by leaving target i unaligned.
    diagonal = prev[..., :-1] + c
    down = prev + gap
    reach = jnp.concatenate([down[..., :1], jnp.minimum(diagonal, down[..., 1:])], axis=-1)
    # Then any number of positions left unaligned along the row: min_k<=j reach[k] + gap (j - k).
    current = jax.lax.cummin(reach - gap * steps, axis=reach.ndim - 1) + gap * steps
    return current, None

  last, _ = jax.lax.scan(row, first, (jnp.arange(n_i), jnp.moveaxis(cost, -2, 0)))
  return last[..., -1]


def aligned_cross_entropy(logits: Array, targets: Array, gap: float) -> Array:
  """(B, R): alignment_cost of sample b's -log softmax(logits[b]) (logits (B, L, V)) against target row r
  (targets (R, L)), divided by L. The position-wise cross-entropy when no shift saves more than its gaps cost
  (so always, for a gap above L times the largest cost); less when shifting part of the row fits it better."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return alignment_cost(token_costs(logp, targets), gap) / targets.shape[-1]
