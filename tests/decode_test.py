"""Nearest-token decoding: exact on token embeddings, chunked == unchunked, sampling, end-of-text."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from driftjax.models import decode
from driftjax.models import generator as gen_lib

TABLE = jax.random.normal(jax.random.key(0), (1000, 16))


@pytest.mark.parametrize("metric", decode.METRICS)
def test_token_embeddings_decode_to_themselves(metric):
  ids = jax.random.randint(jax.random.key(1), (3, 20), 0, 1000)
  got, dist = decode.decode_tokens(TABLE[ids], TABLE, metric=metric, chunk=128)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(ids))
  np.testing.assert_allclose(np.asarray(dist), 0.0, atol=2e-3)


@pytest.mark.parametrize("metric", decode.METRICS)
def test_chunked_equals_unchunked(metric):
  emb = jax.random.normal(jax.random.key(2), (2, 10, 16))
  a, da = decode.decode_tokens(emb, TABLE, metric=metric, chunk=97)  # 97 does not divide 1000.
  b, db = decode.decode_tokens(emb, TABLE, metric=metric, chunk=1000)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_allclose(np.asarray(da), np.asarray(db), rtol=1e-5)
  d = jnp.linalg.norm(emb[:, :, None] - TABLE[None, None], axis=-1) if metric == "l2" else None
  if d is not None:
    np.testing.assert_array_equal(np.asarray(a), np.asarray(jnp.argmin(d, -1)))


def test_sampling_follows_softmax_and_top_k():
  # Three tokens at distances 0, 1, 2 from the query: softmax(-d / 1) = [0.665, 0.245, 0.090].
  table = jnp.array([[0.0], [1.0], [2.0]])
  emb = jnp.zeros((1, 4000, 1))
  ids, _ = decode.decode_tokens(emb, table, temperature=1.0, key=jax.random.key(3), chunk=2)
  freq = np.bincount(np.asarray(ids).ravel(), minlength=3) / ids.size
  np.testing.assert_allclose(freq, np.exp(-np.arange(3)) / np.exp(-np.arange(3)).sum(), atol=0.03)
  ids2, _ = decode.decode_tokens(emb, table, temperature=1.0, top_k=2, key=jax.random.key(4), chunk=2)
  freq2 = np.bincount(np.asarray(ids2).ravel(), minlength=3) / ids2.size
  assert freq2[2] == 0
  np.testing.assert_allclose(freq2[:2], [1 / (1 + np.exp(-1)), np.exp(-1) / (1 + np.exp(-1))], atol=0.03)


def test_text_ends_at_first_eos():
  rows = np.array([[5, 6, 9, 7, 9], [1, 2, 3, 4, 5]])
  assert decode.truncate_at_eos(rows, 9) == [[5, 6], [1, 2, 3, 4, 5]]


def test_bad_arguments():
  with pytest.raises(ValueError, match="must share D"):
    decode.decode_tokens(jnp.zeros((1, 2, 15)), TABLE)
  with pytest.raises(ValueError, match="needs a PRNG key"):
    decode.decode_tokens(jnp.zeros((1, 2, 16)), TABLE, temperature=0.5)
  with pytest.raises(ValueError, match="metric='dot'"):
    decode.decode_tokens(jnp.zeros((1, 2, 16)), TABLE, metric="dot")


def test_memory_bounded_for_default_batch():
  """64 x 256 outputs against GPT-2's 50,257 x 768 table: compiled scratch memory stays far below 3.3 GB."""
  rows, table = jax.ShapeDtypeStruct((64 * 256, 768), jnp.float32), jax.ShapeDtypeStruct((50257, 768), jnp.float32)
  chunk = max(64, min(8192, 50257, (1 << 25) // (64 * 256)))  # As decode_tokens chooses it.

  def temp_bytes(c):
    compiled = decode._decode_flat.lower(
      rows, table, jax.random.key(0), jnp.float32(1.0), metric="l2", chunk=c, top_k=0, greedy=True
    ).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  bounded = temp_bytes(chunk)
  assert bounded < 1e9, bounded
  assert bounded < temp_bytes(50257) / 4


def test_vocab_head_outputs_decode_by_their_logits():
  cfg = gen_lib.GeneratorConfig(head="vocab", vocab_size=6, out_dim=4)
  table = jax.random.normal(jax.random.key(0), (6, 4))
  logits = jax.random.normal(jax.random.key(1), (3, 7, 6))
  ids, dist = decode.decode_outputs(logits, table, cfg)
  np.testing.assert_array_equal(ids, jnp.argmax(logits, -1))
  soft = jax.nn.softmax(logits, -1) @ table
  np.testing.assert_allclose(dist, jnp.linalg.norm(soft - table[ids], axis=-1), rtol=1e-5)
  top1, _ = decode.decode_outputs(logits, table, cfg, temperature=1.0, top_k=1, key=jax.random.key(2))
  np.testing.assert_array_equal(top1, ids)  # Sampling among the top 1 is greedy.
  peaked = 50.0 * jax.nn.one_hot(ids, 6)
  _, d0 = decode.decode_outputs(peaked, table, cfg)
  assert float(d0.max()) < 1e-4
  # Sampling at a temperature follows softmax(logits / T).
  flat = jnp.broadcast_to(jnp.log(jnp.array([0.5, 0.3, 0.2, 1e-9, 1e-9, 1e-9])), (1, 4000, 6))
  draws, _ = decode.decode_outputs(flat, table, cfg, temperature=1.0, key=jax.random.key(3))
  np.testing.assert_allclose(np.bincount(np.asarray(draws).ravel(), minlength=6)[:3] / 4000, [0.5, 0.3, 0.2], atol=0.03)
