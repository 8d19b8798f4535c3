"""Nearest-token decoding of generated embeddings, in vocabulary chunks so that memory stays bounded.

For (B, L, D) outputs and a (V, D) embedding table, the full distance matrix would be B * L * V floats
(64 x 256 x 50,257 = 3.3 GB); here only B * L * chunk of them exist at a time. Modes:
- greedy: the nearest token by L2 or cosine distance;
- sampling from softmax(-distance / T) by the Gumbel-max trick, exact over the whole vocabulary;
- top-k sampling: a running top-k over the chunks, then sampling among those k.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from driftjax.models import generator as gen_lib

Array = jax.Array
METRICS = ("l2", "cosine")


def _distances(x: Array, table: Array, table_sq: Array, metric: str) -> Array:
  """(N, D) x (C, D) -> (N, C) L2 distances or cosine distances (1 - cos)."""
  dots = x @ table.T
  if metric == "l2":
    d2 = jnp.sum(x * x, -1, keepdims=True) + table_sq[None] - 2 * dots
    return jnp.sqrt(jnp.maximum(d2, 0.0))
  x_norm = jnp.sqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), 1e-24))
  return 1.0 - dots / (x_norm * jnp.sqrt(jnp.maximum(table_sq, 1e-24))[None])


@functools.partial(jax.jit, static_argnames=("metric", "chunk", "top_k", "greedy"))
def _decode_flat(x, table, key, temperature, *, metric, chunk, top_k, greedy):
  n, d = x.shape
  vocab = table.shape[0]
  n_chunks = -(-vocab // chunk)
  pad = n_chunks * chunk - vocab
  table_p = jnp.pad(table, ((0, pad), (0, 0)))
  valid = jnp.arange(n_chunks * chunk) < vocab
  table_c = table_p.reshape(n_chunks, chunk, d)
  valid_c = valid.reshape(n_chunks, chunk)
  k = max(top_k, 1)

  def body(carry, inputs):
    best_val, best_idx, best_dist = carry
    i, tab, ok = inputs
    dist = _distances(x, tab, jnp.sum(tab * tab, -1), metric)  # (N, chunk)
    if greedy:
      score = -dist
    elif top_k:
      score = -dist / temperature
    else:  # Gumbel-max over the full vocabulary samples exactly from softmax(-dist / T).
      gumbel = jax.random.gumbel(jax.random.fold_in(key, i), dist.shape)
      score = -dist / temperature + gumbel
    score = jnp.where(ok[None], score, -jnp.inf)
    idx = i * chunk + jnp.arange(chunk)
    vals = jnp.concatenate([best_val, score], -1)
    idxs = jnp.concatenate([best_idx, jnp.broadcast_to(idx, score.shape)], -1)
    dists = jnp.concatenate([best_dist, dist], -1)
    top_vals, pos = jax.lax.top_k(vals, k)
    return (top_vals, jnp.take_along_axis(idxs, pos, -1), jnp.take_along_axis(dists, pos, -1)), None

  init = (jnp.full((n, k), -jnp.inf), jnp.zeros((n, k), jnp.int32), jnp.zeros((n, k)))
  (vals, idxs, dists), _ = jax.lax.scan(body, init, (jnp.arange(n_chunks), table_c, valid_c))
  if top_k and not greedy:
    choice = jax.random.categorical(key, vals, axis=-1)
    return jnp.take_along_axis(idxs, choice[:, None], -1)[:, 0], jnp.take_along_axis(dists, choice[:, None], -1)[:, 0]
  return idxs[:, 0], dists[:, 0]


def decode_tokens(
  emb: Array,
  table: Array,
  *,
  metric: str = "l2",
  temperature: float = 0.0,
  top_k: int = 0,
  key: Array | None = None,
  chunk: int = 8192,
  max_elements: int = 1 << 25,
) -> tuple[Array, Array]:
  """Token ids (B, L) for embeddings (B, L, D) against a table (V, D), and each chosen token's distance.

  temperature 0 decodes greedily (nearest token); T > 0 samples from softmax(-distance / T), over the top_k
  nearest tokens when top_k > 0, else over the whole vocabulary. The vocabulary is scanned in chunks of at
  most `chunk` tokens and at most `max_elements` distances (B * L * chunk) at a time.
  """
  if metric not in METRICS:
    raise ValueError(f"metric={metric!r}; expected one of {METRICS}")
  if emb.ndim != 3 or table.ndim != 2 or emb.shape[-1] != table.shape[-1]:
    raise ValueError(f"embeddings (B, L, D) and table (V, D) must share D; got {emb.shape} and {table.shape}")
  if temperature < 0 or top_k < 0:
    raise ValueError(f"temperature and top_k must be >= 0, got {temperature} and {top_k}")
  greedy = temperature == 0
  if not greedy and key is None:
    raise ValueError("sampling (temperature > 0) needs a PRNG key")
  b, length, d = emb.shape
  chunk = max(64, min(chunk, table.shape[0], max_elements // (b * length)))
  ids, dist = _decode_flat(
    emb.reshape(b * length, d).astype(jnp.float32),
    table.astype(jnp.float32),
    key if key is not None else jax.random.key(0),
    jnp.float32(max(temperature, 1e-6)),
    metric=metric,
    chunk=chunk,
    top_k=0 if greedy else top_k,
    greedy=greedy,
  )
  return ids.reshape(b, length), dist.reshape(b, length)


@functools.partial(jax.jit, static_argnames=("top_k", "greedy"))
def _decode_logits(logits, key, temperature, *, top_k, greedy):
  if greedy:
    return jnp.argmax(logits, -1)
  scaled = logits / temperature
  if top_k:
    kth = jax.lax.top_k(scaled, top_k)[0][..., -1:]
    scaled = jnp.where(scaled >= kth, scaled, -jnp.inf)
  return jax.random.categorical(key, scaled, axis=-1)


def decode_outputs(
  out: Array,
  table: Array,
  gen_cfg: gen_lib.GeneratorConfig,
  *,
  metric: str = "l2",
  temperature: float = 0.0,
  top_k: int = 0,
  key: Array | None = None,
) -> tuple[Array, Array]:
  """Token ids (B, L) of a generator's outputs, and the L2 distance of each fed embedding to its token's.

  head="embedding": decode_tokens (nearest token by `metric`). head="vocab": the argmax of the logits
  (temperature 0) or a sample of softmax(logits / T), among the top_k when top_k > 0; the distance is then
  the one between the expected embedding and the chosen token's (0 when the distribution is one-hot).
  """
  if gen_cfg.head == "embedding":
    return decode_tokens(out, table, metric=metric, temperature=temperature, top_k=top_k, key=key)
  if temperature < 0 or top_k < 0:
    raise ValueError(f"temperature and top_k must be >= 0, got {temperature} and {top_k}")
  if temperature > 0 and key is None:
    raise ValueError("sampling (temperature > 0) needs a PRNG key")
  ids = _decode_logits(
    out,
    key if key is not None else jax.random.key(0),
    jnp.float32(max(temperature, 1e-6)),
    top_k=min(top_k, out.shape[-1]),
    greedy=temperature == 0,
  )
  soft = jax.nn.softmax(out, axis=-1) @ table
  dist = jnp.sqrt(jnp.sum(jnp.square(soft - jnp.take(table, ids, axis=0)), -1))
  return ids, dist


def truncate_at_eos(ids: np.ndarray, eos_id: int) -> list[list[int]]:
  """Each row's tokens up to (not including) its first end-of-text token."""
  out = []
  for row in np.asarray(ids):
    hits = np.flatnonzero(row == eos_id)
    out.append(row[: hits[0]].tolist() if hits.size else row.tolist())
  return out
