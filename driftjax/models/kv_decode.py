"""KV-cached decoding with GPT-2: ancestral sampling (sample_ar) and continuation of given rows (continue_samples).

Both feed one token per position through decode_step (embed, every block against its cache, final norm, logits
over the vocabulary) inside one loop, decode_loop. What makes the loop fast (benchmarks/sampling.py measures it):
- The cache of a block is kept as keys (B, H, hd, L) and values (B, H, L, hd): both attention products read it in
  the layout the matmul wants, so no step transposes it (jax.nn.dot_product_attention's (B, L, H, hd) layout made
  XLA transpose every layer's whole cache at every step).
- Positions run in blocks of `block`: within one, the keys and values of earlier blocks are loop constants of
  exactly the filled length, and only the current block's slots are written (in place in the loop's carry), so a
  step reads the filled cache plus at most block - 1 empty slots, not the whole preallocated length.
- The logits table (V, D) is read as it is stored; the weights are cast to the compute dtype once, before the loop.
- Tokens are drawn by inverse-CDF sampling (one uniform per row) instead of Gumbel-max (one random number per
  vocabulary entry: 3.2M threefry draws per step at batch 64, as long as the step's matmuls on CPU).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from driftjax.models import gpt2

Array = jax.Array


class LayerCache(NamedTuple):
  """One block's keys and values: `done` of the blocks before the current one, `cur` of the current block."""

  k_done: Array | None  # (B, H, hd, P): positions 0 .. P-1 (None while P = 0).
  v_done: Array | None  # (B, H, P, hd)
  k_cur: Array  # (B, H, hd, C): positions P .. P+C-1, written as they come.
  v_cur: Array  # (B, H, C, hd)


def categorical(key: Array, logits: Array, temperature: Array, chunk: int = 256) -> Array:
  """Samples (B,) from softmax(logits / temperature) of logits (B, V) by inverse CDF, with one uniform per row.

  The CDF is found in two levels (sums of chunks of `chunk` entries, then the entries of the chosen chunk), so no
  scan over the whole vocabulary is needed. A zero-probability entry is never chosen.
  """
  b, v = logits.shape
  n = -(-v // chunk)
  p = jnp.exp((logits - jnp.max(logits, -1, keepdims=True)) / temperature)
  p = jnp.pad(p, ((0, 0), (0, n * chunk - v))).reshape(b, n, chunk)
  sums = jnp.sum(p, -1)  # (B, n)
  cum = jnp.cumsum(sums, -1)
  u = (1.0 - jax.random.uniform(key, (b,))) * cum[:, -1]  # In (0, total].
  c = jnp.minimum(jnp.sum(cum < u[:, None], -1), n - 1)  # The chunk whose CDF interval holds u.
  before = jnp.where(c > 0, jnp.take_along_axis(cum, jnp.maximum(c - 1, 0)[:, None], -1)[:, 0], 0.0)
  inner = jnp.cumsum(jnp.take_along_axis(p, c[:, None, None], 1)[:, 0], -1)  # (B, chunk)
  r = jnp.minimum(u - before, inner[:, -1])  # Rounding may leave u past the chunk's own total.
  return (c * chunk + jnp.sum(inner < r[:, None], -1)).astype(jnp.int32)


def _attend(q: Array, k: Array, v: Array, cache: LayerCache, slot: Array) -> Array:
  """Attention of one query per row (B, H, 1, hd) to the filled cache (the done blocks, slots 0 .. slot-1 of the
  current one) and to its own position's key and value k, v (B, H, 1, hd), which are not yet in the cache.

  Reading the cache before the new slot is written (see _block_step) lets XLA write the loop's carry in place.
  """
  scale = 1.0 / jnp.sqrt(jnp.float32(q.shape[-1]))

  def scores(keys, eq):  # Scores in float32 whatever the compute dtype, as jax.nn.dot_product_attention's XLA path.
    return jnp.einsum(eq, q, keys, preferred_element_type=jnp.float32) * scale

  cur = jnp.where(jnp.arange(cache.k_cur.shape[-1]) < slot, scores(cache.k_cur, "bhqd,bhdk->bhqk"), -jnp.inf)
  parts = [cur, scores(k, "bhqd,bhkd->bhqk")]
  if cache.k_done is not None:
    parts.insert(0, scores(cache.k_done, "bhqd,bhdk->bhqk"))
  probs = jnp.split(
    jax.nn.softmax(jnp.concatenate(parts, -1), -1).astype(q.dtype), np.cumsum([x.shape[-1] for x in parts[:-1]]), -1
  )
  values = ([] if cache.v_done is None else [cache.v_done]) + [cache.v_cur]
  out = probs[-1] * v  # (B, H, 1, 1) x (B, H, 1, hd)
  for p, vals in zip(probs[-1 - len(values) : -1], values):
    out = out + jnp.einsum("bhqk,bhkd->bhqd", p, vals)
  return out


def _block_step(block: gpt2.Block, x: Array, cache: LayerCache, slot: Array) -> tuple[Array, LayerCache]:
  """One position through a block: x (B, 1, D) -> (B, 1, D); its query attends to the cache and to itself, then
  its key and value are written at `slot` of the cache's current block."""
  b, _, d = x.shape
  h = block.n_head
  q, k, v = (
    t.reshape(b, h, 1, d // h).astype(cache.k_cur.dtype) for t in jnp.split(block.c_attn(block.ln_1(x)), 3, -1)
  )
  attn = _attend(q, k, v, cache, slot)  # (B, H, 1, hd)
  # The written key and value made to depend on the reads of the cache (adding 0 * attn changes no finite
  # value): without a data dependency XLA's copy insertion cannot put the in-place write after the reads and
  # copies each cache twice at every step (an optimization_barrier does not help).
  k, v = k + 0 * attn, v + 0 * attn
  cache = cache._replace(
    k_cur=jax.lax.dynamic_update_slice(cache.k_cur, jnp.swapaxes(k, 2, 3), (0, 0, 0, slot)),
    v_cur=jax.lax.dynamic_update_slice(cache.v_cur, v, (0, 0, slot, 0)),
  )
  x = x + block.attn_proj(attn.reshape(b, 1, d).astype(x.dtype))
  return block.mlp(x), cache


def decode_step(
  model: gpt2.GPT2, table: Array, token: Array, pos: Array, caches: list[LayerCache], slot: Array
) -> tuple[Array, list[LayerCache]]:
  """Token ids (B,) at position pos through the model -> the next token's logits (B, V) float32 and the caches.

  table: the (V, D) token embeddings in the compute dtype (the tied logits weights); slot: pos within the
  current cache block.
  """
  x = (model.embed(token[:, None]) + model.wpe[...][pos][None, None]).astype(model.dtype)
  new = []
  for block, cache in zip(model.h, caches):
    x, cache = _block_step(block, x, cache, slot)
    new.append(cache)
  return jnp.einsum("bd,vd->bv", model.ln_f(x)[:, 0], table, preferred_element_type=jnp.float32), new


def _cast_weights(model: gpt2.GPT2) -> gpt2.GPT2:
  """The model with its blocks' matrices in the compute dtype (cast once, not at every step)."""
  graphdef, state = nnx.split(model)
  state = jax.tree.map(lambda w: w.astype(model.dtype) if w.ndim == 2 else w, state)
  return nnx.merge(graphdef, state)


def decode_loop(model: gpt2.GPT2, first: Array, length: int, choose: Callable, carry, xs, block: int = 64):
  """Feeds positions 0 .. length-1 with a KV cache: `first` (B,) at 0, at t > 0 the token chosen at t-1.

  choose(logits (B, V) float32, pos, carry, x) -> (token (B,) int32, carry, out) picks the token of position
  pos+1 from the model's logits at pos; x is row pos of xs (a pytree with leading axis `length`). Returns the final
  carry and the outs stacked (length, ...). Positions run in lax.scans of `block` positions each (one compiled
  loop per block, see the module docstring). Call it under jit.
  """
  cfg = model.cfg
  model = _cast_weights(model)
  table = model.wte[...].astype(model.dtype)
  b, h, hd, dt = first.shape[0], cfg.n_head, cfg.n_embd // cfg.n_head, model.dtype
  done = [(None, None)] * cfg.n_layer
  token, outs = first, []
  for start in range(0, length, block):
    size = min(block, length - start)
    empty = (jnp.zeros((b, h, hd, size), dt), jnp.zeros((b, h, size, hd), dt))
    caches = [LayerCache(k, v, *empty) for k, v in done]

    def body(state, inputs, start=start):
      token, caches, carry = state
      pos, x = inputs
      logits, caches = decode_step(model, table, token, pos, caches, pos - start)
      token, carry, out = choose(logits, pos, carry, x)
      return (token, caches, carry), out

    rows = jax.tree.map(lambda a, start=start, size=size: a[start : start + size], xs)
    (token, caches, carry), out = jax.lax.scan(body, (token, caches, carry), (jnp.arange(start, start + size), rows))
    outs.append(out)
    done = [
      (c.k_cur, c.v_cur)
      if c.k_done is None
      else (jnp.concatenate([c.k_done, c.k_cur], -1), jnp.concatenate([c.v_done, c.v_cur], -2))
      for c in caches
    ]
  return carry, jax.tree.map(lambda *a: jnp.concatenate(a), *outs)


def sample_ar(
  model: gpt2.GPT2,
  key: Array,
  batch: int,
  length: int,
  temperature: float = 1.0,
  start_id: int | None = None,
  block: int = 64,
) -> Array:
  """Plain ancestral sampling with a KV cache: (batch, length) tokens after a start token (end-of-text).

  The reference "ar" row of evaluation and the autoregressive side of benchmarks/sampling.py. block: positions
  per compiled loop (see decode_loop); it changes the speed, not the tokens.
  """
  cfg = model.cfg
  if length > cfg.n_positions:  # Positions 0 .. length-1 are fed (the start token and length-1 samples).
    raise ValueError(f"sequence length {length} exceeds the model's {cfg.n_positions} positions")
  start = cfg.eos_token_id if start_id is None else start_id
  graphdef, state = nnx.split(model)
  return _sample_ar(
    graphdef, state, key, jnp.float32(temperature), batch=batch, length=length, start=start, block=block
  )


@functools.partial(jax.jit, static_argnames=("graphdef", "batch", "length", "start", "block"))
def _sample_ar(graphdef, state, key, temperature, *, batch, length, start, block):
  def choose(logits, pos, carry, x):
    token = categorical(jax.random.fold_in(key, pos), logits, temperature)
    return token, carry, token

  first = jnp.full((batch,), start, jnp.int32)
  _, tokens = decode_loop(nnx.merge(graphdef, state), first, length, choose, (), None, block)
  return tokens.T


def ngram_repeats(hist: Array, pos: Array, cand: Array, n: int) -> Array:
  """Which candidate tokens (B, C) for position pos would repeat an n-gram of the row so far (B, C) bool.

  hist: the rows' tokens (B, L), those at pos and after unused. Candidate c repeats when the n-gram
  hist[pos-n+1 .. pos-1] + [c] already ends at some s < pos (n = 1: c occurs before pos); the incremental form
  of driftjax.drift.teacher.repeat_mask.
  """
  s = jnp.arange(hist.shape[1])
  match = jnp.broadcast_to((s < pos) & (s >= n - 1), hist.shape)
  for j in range(1, n):
    before_s = jnp.roll(hist, j, axis=1)  # before_s[:, s] = hist[:, s - j] (wrapped entries have s < j <= n - 1).
    before_pos = jax.lax.dynamic_index_in_dim(hist, jnp.maximum(pos - j, 0), axis=1)  # (B, 1)
    match = match & (before_s == before_pos)
  return jnp.any(match[:, :, None] & (hist[:, :, None] == cand[:, None, :]), axis=1)


def _inverse_cdf_pick(scores: Array, ids: Array, u: Array) -> Array:
  """Index (B,) into the candidates whose interval holds u (B,) when the candidates' probabilities softmax(scores)
  (B, C), -inf for none, are laid end to end in the order of their token ids (B, C)."""
  order = jnp.argsort(ids, axis=-1)
  p = jax.nn.softmax(jnp.take_along_axis(scores, order, -1), axis=-1)
  cum = jnp.cumsum(p, -1)
  idx = jnp.sum(cum < (u * cum[:, -1])[:, None], -1)
  idx = jnp.maximum(idx, jnp.argmax(p > 0, -1))  # u = 0 still picks a candidate with probability > 0.
  return jnp.take_along_axis(order, idx[:, None], -1)[:, 0]


def continue_samples(
  model: gpt2.GPT2,
  key: Array,
  ids: Array,
  *,
  top_k: int,
  floor: float,
  min_ratio: float = 0.0,
  policy: str = "continue",
  temperature: float = 1.0,
  repeat_ngram: int = 0,
  repeat_penalty: float = 0.0,
  repeat_window: int = 0,
  uniforms: Array | None = None,
  token_weights: Array | None = None,
  choices: int = 0,
  choice_uniforms: Array | None = None,
  choices_from: int = 0,
  block: int = 64,
) -> tuple[Array, Array] | tuple[Array, Array, Array]:
  """The LM's continuations of given token rows (B, L), one pass with a KV cache (issue 14, docs/demo.md).

  The LM reads each row after a start token (end-of-text). At position t a row keeps its own token ids[t] when
  that token is acceptable to the LM after the row's tokens so far (among the LM's top_k next tokens, with
  probability >= floor and >= min_ratio times the LM's top probability there); otherwise the LM samples the
  token there (from its top_k tokens that pass both, renormalized, at `temperature`; 0: the likeliest of them).
  policy "continue": after the first replaced position every later token is sampled (the row's prefix, then the
  LM's continuation); "repair": every acceptable token of the row is kept (each position conditioned on the
  repaired tokens before it); "ancestral": no token of the row is kept (the LM's own sample from the start token,
  among the same candidates). repeat_ngram n > 0: a token that would repeat
  an n-gram already in the new row (ngram_repeats) is neither acceptable nor a candidate (the top candidate is
  still taken when every one repeats). repeat_penalty p > 0: the LM's log-probability of each token is lowered by p
  for every time it stands among the new row's last repeat_window tokens (0: anywhere before), before any of the
  above (a repetition penalty that grows with the repeats: a word the row wrote once must beat the others by p nats
  to be kept or drawn, one it wrote four times by 4p, so loops such as ",,,," are broken where the LM endorses
  them). After a row's first end-of-text every token is end-of-text (padding, as
  in real rows). uniforms (B, L) in [0, 1): the LM's draw at position t of row b is then the inverse CDF at
  uniforms[b, t] over the candidates in token-id order (a coupling: the draws are a function of the uniforms, and a
  small change of the LM's probabilities rarely changes them); otherwise draws use `key`. token_weights (V,) in
  [0, 1]: a row's acceptable token v is kept only with probability token_weights[v] (a draw from `key` per row and
  position), and the LM's candidates are drawn with their probabilities times their weights (a token the batch
  writes more often than real text loses the share it has too much; train_step.balance_weights). choices > 1 with
  choice_uniforms (B, L) in [0, 1): at a choice point, a position where at least `choices` candidates are
  acceptable (several tokens the LM finds about equally likely: a name, a colour), the row's token is the inverse
  CDF at choice_uniforms[b, t] over those candidates in token-id order whether or not its own token was acceptable,
  so which choice a row makes there is a function of the uniforms (its generator noise) and over many rows follows
  the LM's probabilities; positions before choices_from are never choice points; every other position as above.
  Call it under jit (the training step does).

  Returns the new rows (B, L) int32 and the first replaced position of each row (B,), L where none was; with
  choices > 1 also the choice points (B, L) bool.
  """
  if policy not in ("continue", "repair", "ancestral"):
    raise ValueError(f"policy={policy!r}; expected continue, repair or ancestral")
  cfg = model.cfg
  b, length = ids.shape
  if length > cfg.n_positions:
    raise ValueError(f"sequence length {length} exceeds the model's {cfg.n_positions} positions")
  if uniforms is not None and uniforms.shape != ids.shape:
    raise ValueError(f"uniforms must be shaped like the rows {ids.shape}, got {uniforms.shape}")
  if (choices > 1) != (choice_uniforms is not None) or choices == 1 or choices < 0:
    raise ValueError(f"choices={choices} needs choice_uniforms and at least 2 candidates (0: off)")
  if choice_uniforms is not None and choice_uniforms.shape != ids.shape:
    raise ValueError(f"choice_uniforms must be shaped like the rows {ids.shape}, got {choice_uniforms.shape}")
  if repeat_penalty < 0 or repeat_window < 0 or (repeat_window and not repeat_penalty):
    raise ValueError(
      f"repeat_penalty={repeat_penalty} and repeat_window={repeat_window} must be >= 0 (a window needs a penalty)"
    )
  eos = cfg.eos_token_id
  k = min(top_k, cfg.vocab_size)
  keep_hist = repeat_ngram > 0 or repeat_penalty > 0

  def choose(logits, pos, carry, row):
    own, u, u_choice = row
    diverged, ended, hist = carry
    if repeat_penalty > 0:  # Lower each token by its count among the row's last repeat_window (0: all) new tokens.
      s = jnp.arange(length)
      recent = (s < pos) & ((s >= pos - repeat_window) if repeat_window else True)
      vocab = logits.shape[-1]
      cols = jnp.where(recent[None, :], hist, vocab)  # Out of range: dropped.
      seen = jnp.zeros(logits.shape, jnp.float32).at[jnp.arange(b)[:, None], cols].add(1.0, mode="drop")
      logits = logits - repeat_penalty * seen
    # top_k of the logits themselves: of the softmax's output (a fusion), XLA:CPU sorts the whole vocabulary.
    top_logits, top_ids = jax.lax.top_k(logits, k)
    top_p = jnp.exp(top_logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True))
    ok = (top_p >= floor) & (top_p >= min_ratio * top_p[:, :1])  # top_p is sorted: column 0 is the top.
    acceptable = jnp.any(ok & (top_ids == own[:, None]), axis=-1)
    if token_weights is not None:
      stay = jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, pos), 1), own.shape)
      acceptable = acceptable & (stay < token_weights[own])
      top_p = top_p * token_weights[top_ids]
    if repeat_ngram > 0:
      banned = ngram_repeats(hist, pos, jnp.concatenate([own[:, None], top_ids], 1), repeat_ngram)
      acceptable, ok = acceptable & ~banned[:, 0], ok & ~banned[:, 1:]
    # Sample among the acceptable candidates (the top one when none is left).
    ok = ok.at[:, 0].set(ok[:, 0] | ~jnp.any(ok, -1))
    scores = jnp.where(ok, jnp.log(jnp.maximum(top_p, 1e-30)) / max(temperature, 1e-30), -jnp.inf)
    if temperature == 0:  # Greedy: the likeliest acceptable candidate.
      pick = jnp.argmax(scores, axis=-1)
    elif u is None:
      pick = jax.random.categorical(jax.random.fold_in(key, pos), scores, axis=-1)
    else:
      pick = _inverse_cdf_pick(scores, top_ids, u)
    sampled = jnp.take_along_axis(top_ids, pick[:, None], -1)[:, 0]
    keep = {"continue": acceptable & ~diverged, "repair": acceptable, "ancestral": jnp.zeros_like(acceptable)}[policy]
    point = None  # Without choice points the loop neither computes nor returns them.
    if choices > 1:  # At a choice point the uniform picks among the acceptable candidates, the own token or not.
      point = (jnp.sum(ok, -1) >= choices) & ~ended & (pos >= choices_from)
      chosen = jnp.take_along_axis(top_ids, _inverse_cdf_pick(scores, top_ids, u_choice)[:, None], -1)[:, 0]
      sampled, keep = jnp.where(point, chosen, sampled), keep & ~point
    nxt = jnp.where(ended, eos, jnp.where(keep, own, sampled)).astype(jnp.int32)
    replaced = ~keep & ~ended
    if point is not None:  # A choice point that picks the row's own token replaced none.
      replaced = replaced & ~(point & (nxt == own))
    if keep_hist:
      hist = jax.lax.dynamic_update_index_in_dim(hist, nxt, pos, axis=1)
    return nxt, (diverged | replaced, ended | (nxt == eos), hist), (nxt, replaced, point)

  first = jnp.full((b,), eos, jnp.int32)
  hist = jnp.full((b, length), -1, jnp.int32) if keep_hist else None  # The new rows so far.
  carry = (jnp.zeros((b,), bool), jnp.zeros((b,), bool), hist)
  as_xs = lambda u: None if u is None else u.T.astype(jnp.float32)
  xs = (ids.T.astype(jnp.int32), as_xs(uniforms), as_xs(choice_uniforms))
  _, (tokens, replaced, points) = decode_loop(model, first, length, choose, carry, xs, block)
  first_replaced = jnp.where(jnp.any(replaced, 0), jnp.argmax(replaced, 0), length)
  if choices > 1:
    return tokens.T, first_replaced, points.T
  return tokens.T, first_replaced
