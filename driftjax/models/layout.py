"""Slotted layout of a generator's outputs: sentences start on a grid, a filler token pads between them.

A one-step generator writes every position at once, so where the k-th sentence starts has to be computed from
the lengths of the sentences before it; in the demo the sentences that start away from their usual position are
the broken ones (docs/demo.md, session 15). With model.layout_multiple = m the generator writes P =
model.layout_positions positions over the vocabulary plus a filler token, and a text is laid out so that each
sentence starts at a multiple of m (fillers after the sentence's end); with m at least the longest sentence,
sentence k starts at k * m, and no position has to count. Decoding drops the fillers (`collapse_index`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def slot(ids: Array, ends: Array, multiple: int, positions: int, filler: int) -> Array:
  """Token rows (N, L) laid out on (N, positions): a token after a sentence end (ends: (V,) bool over token ids)
  moves to the next multiple of `multiple`, the gaps hold `filler`; tokens past `positions` are dropped."""

  def step(cur, tok):
    nxt = cur + 1
    return jnp.where(ends[tok], -(-nxt // multiple) * multiple, nxt), cur

  _, where = jax.lax.scan(step, jnp.zeros((ids.shape[0],), jnp.int32), ids.T)  # (L, N): each token's position.
  rows = jnp.arange(ids.shape[0])[:, None]
  out = jnp.full((ids.shape[0], positions), filler, ids.dtype)
  return out.at[rows, where.T].set(ids, mode="drop")


def collapse_index(ids: Array, filler: int, length: int) -> tuple[Array, Array]:
  """Where the first `length` non-filler tokens of rows (N, P) sit: (index (N, length), valid (N, length)); a row
  with fewer has valid False (and index pointing at a filler) after its last."""
  is_filler = ids == filler
  index = jnp.argsort(is_filler, axis=1, stable=True)[:, :length]
  valid = jnp.arange(length)[None] < jnp.sum(~is_filler, axis=1, keepdims=True)
  return index, valid


def collapse_logits(logits: Array, filler: int, length: int, eos: int) -> Array:
  """Logits (N, P, V + 1) over the vocabulary and the filler (the last) -> (N, length, V): the positions of the
  argmax's first `length` non-filler tokens, in order, without the filler's logit; past a row's last token, a
  constant end-of-text row (as real rows are padded). Gradients reach the gathered positions."""
  index, valid = collapse_index(jnp.argmax(logits, -1), filler, length)
  kept = jnp.take_along_axis(logits[..., :filler], index[..., None], axis=1)
  pad = jnp.asarray(np.where(np.arange(filler) == eos, 0.0, -1e4), logits.dtype)  # End-of-text, certain.
  return jnp.where(valid[..., None], kept, pad)
