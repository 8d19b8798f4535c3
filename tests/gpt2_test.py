"""GPT-2 in Flax NNX: golden parity with transformers' PyTorch model, embeddings path, frozen gradients."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from driftjax.models import gpt2
from driftjax.models import kv_decode

TINY = os.path.join(os.path.dirname(__file__), "testdata", "tiny_gpt2")


@pytest.fixture(scope="module")
def tiny():
  return gpt2.load_gpt2(TINY)


def test_golden_hidden_states_and_logits(tiny):
  golden = np.load(os.path.join(TINY, "golden.npz"))
  n_layer = tiny.cfg.n_layer
  out = tiny(input_ids=jnp.asarray(golden["input_ids"]), hidden_layers=range(n_layer + 1), logits=True)
  assert golden["hidden_states"].shape[0] == n_layer + 1
  for i in range(n_layer + 1):
    np.testing.assert_allclose(
      np.asarray(out["hidden"][i]), golden["hidden_states"][i], atol=1e-5, rtol=1e-5, err_msg=f"hidden state {i}"
    )
  np.testing.assert_allclose(np.asarray(out["logits"]), golden["logits"], atol=1e-5, rtol=1e-5)


def test_ids_and_embeds_give_same_hidden_states(tiny):
  ids = jax.random.randint(jax.random.key(0), (2, 12), 0, tiny.cfg.vocab_size)
  by_ids = tiny(input_ids=ids, hidden_layers=(1, 2, 3))["hidden"]
  by_emb = tiny(inputs_embeds=tiny.embed(ids), hidden_layers=(1, 2, 3))["hidden"]
  chex.assert_trees_all_close(by_ids, by_emb, atol=1e-5)


def test_gradients_reach_embeds_not_frozen_weights(tiny):
  graphdef, state = nnx.split(tiny)
  emb = tiny.embed(jnp.arange(8)[None])

  def loss(state, emb):
    # The training step holds the encoder's state as a plain argument under stop_gradient.
    model = nnx.merge(graphdef, jax.lax.stop_gradient(state))
    return jnp.sum(model(inputs_embeds=emb, hidden_layers=(3,))["hidden"][3] ** 2)

  g_state, g_emb = jax.grad(loss, argnums=(0, 1))(state, emb)
  assert float(jnp.abs(g_emb).max()) > 0
  assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(g_state))


def test_sequence_longer_than_positions_is_an_error(tiny):
  with pytest.raises(ValueError, match="sequence length 33 exceeds the encoder's 32 positions"):
    tiny(input_ids=jnp.zeros((1, 33), jnp.int32), hidden_layers=(1,))


def test_layer_out_of_range_is_an_error(tiny):
  with pytest.raises(ValueError, match=r"hidden layers \[4\] out of range \[0, 3\]"):
    tiny(input_ids=jnp.zeros((1, 4), jnp.int32), hidden_layers=(4,))


def test_only_needed_blocks_run(tiny):
  ids = jnp.zeros((1, 4), jnp.int32)
  out = tiny(input_ids=ids, hidden_layers=(0, 1))
  assert sorted(out["hidden"]) == [0, 1] and "logits" not in out


def test_save_and_reload_round_trip(tiny, tmp_path):
  gpt2.save_gpt2(tiny, str(tmp_path / "copy"))
  again = gpt2.load_gpt2(str(tmp_path / "copy"))
  ids = jnp.arange(10)[None]
  chex.assert_trees_all_close(
    tiny(input_ids=ids, logits=True)["logits"], again(input_ids=ids, logits=True)["logits"], atol=1e-6
  )


def test_bfloat16_compute_is_close(tiny):
  bf = gpt2.load_gpt2(TINY, dtype=jnp.bfloat16)
  ids = jnp.arange(16)[None]
  h32 = tiny(input_ids=ids, hidden_layers=(3,))["hidden"][3]
  h16 = bf(input_ids=ids, hidden_layers=(3,))["hidden"][3]
  assert h16.dtype == jnp.bfloat16
  assert float(jnp.abs(h16.astype(jnp.float32) - h32).max() / jnp.abs(h32).max()) < 0.05
  stored = gpt2.load_gpt2(TINY, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)  # A frozen encoder's storage.
  assert {p.dtype for p in jax.tree.leaves(nnx.state(stored, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}
  h16_stored = stored(input_ids=ids, hidden_layers=(3,))["hidden"][3].astype(jnp.float32)
  assert float(jnp.abs(h16_stored - h32).max() / jnp.abs(h32).max()) < 0.05  # Norms' weights rounded too.


def test_missing_folder_and_missing_tensor_are_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a folder with config.json"):
    gpt2.load_gpt2(str(tmp_path / "absent"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no config.json in"):
    gpt2.load_gpt2(str(tmp_path / "empty"))
  from safetensors.numpy import load_file, save_file

  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "config.json").write_text(open(os.path.join(TINY, "config.json")).read())
  tensors = load_file(os.path.join(TINY, "model.safetensors"))
  tensors.pop("transformer.h.1.mlp.c_fc.weight")
  save_file(tensors, str(bad / "model.safetensors"))
  with pytest.raises(ValueError, match="lacks tensor 'h.1.mlp.c_fc.weight'"):
    gpt2.load_gpt2(str(bad))


def test_unknown_hub_name_offline_is_a_clear_error(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(OSError, match="could not fetch GPT-2 weights 'no-such-org/no-such-gpt2'"):
    gpt2.load_gpt2("no-such-org/no-such-gpt2")


def test_ar_sampling_matches_full_forward(tiny):
  """The KV-cached sampler's tokens, re-scored by a plain forward, are the greedy argmax at temperature ~0."""
  tokens = kv_decode.sample_ar(tiny, jax.random.key(0), batch=2, length=10, temperature=1e-4)
  chex.assert_shape(tokens, (2, 10))
  seq = jnp.concatenate([jnp.full((2, 1), tiny.cfg.eos_token_id), tokens], axis=1)
  logits = tiny(input_ids=seq, logits=True)["logits"]
  np.testing.assert_array_equal(np.asarray(jnp.argmax(logits[:, :-1], -1)), np.asarray(tokens))
  hot = kv_decode.sample_ar(tiny, jax.random.key(1), batch=2, length=10, temperature=1.0)
  assert not np.array_equal(np.asarray(hot), np.asarray(tokens))
  assert kv_decode.sample_ar(tiny, jax.random.key(0), batch=1, length=32).shape == (1, 32)  # All positions.
  with pytest.raises(ValueError, match="sequence length 33 exceeds the model's 32 positions"):
    kv_decode.sample_ar(tiny, jax.random.key(0), batch=1, length=33)


def einsum_block(block, x):
  """A block's forward as written before jax.nn.dot_product_attention: the reference the library must match."""
  b, length, d = x.shape
  hd = d // block.n_head
  q, k, v = (t.reshape(b, length, block.n_head, hd) for t in jnp.split(block.c_attn(block.ln_1(x)), 3, -1))
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(hd)
  logits = jnp.where(jnp.tril(jnp.ones((length, length), bool)), logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(x.dtype)
  x = x + block.attn_proj(jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, length, d))
  return x + block.mlp_proj(jax.nn.gelu(block.c_fc(block.ln_2(x)), approximate=True))


def test_causal_attention_equals_einsum_reference(tiny):
  x = jax.random.normal(jax.random.key(2), (2, 20, tiny.cfg.n_embd))
  for block in tiny.h:
    chex.assert_trees_all_close(jax.jit(block.__call__)(x), einsum_block(block, x), atol=1e-5, rtol=1e-5)


def test_cached_steps_equal_full_forward(tiny):
  """Each position's cached step equals the full forward, across cache blocks; slots not yet written (garbage
  here) are not attended to."""
  block, length, size = tiny.h[0], 12, 5
  h, hd = tiny.cfg.n_head, tiny.cfg.n_embd // tiny.cfg.n_head
  xs = jax.random.normal(jax.random.key(3), (2, length, tiny.cfg.n_embd))
  full = block(xs)
  step = jax.jit(kv_decode._block_step)
  k_done = v_done = None
  for start in range(0, length, size):
    n = min(size, length - start)
    garbage = 100 * jax.random.normal(jax.random.key(start), (2, 2, h, n, hd))
    cache = kv_decode.LayerCache(k_done, v_done, jnp.swapaxes(garbage[0], 2, 3), garbage[1])
    for pos in range(start, start + n):
      out, cache = step(block, xs[:, pos : pos + 1], cache, jnp.int32(pos - start))
      chex.assert_trees_all_close(out, full[:, pos : pos + 1], atol=1e-5, rtol=1e-5)
    k_done = cache.k_cur if k_done is None else jnp.concatenate([k_done, cache.k_cur], -1)
    v_done = cache.v_cur if v_done is None else jnp.concatenate([v_done, cache.v_cur], -2)


def test_ar_tokens_do_not_depend_on_cache_blocks(tiny):
  one = kv_decode.sample_ar(tiny, jax.random.key(5), batch=3, length=20, block=64)
  for block in (1, 7):
    np.testing.assert_array_equal(np.asarray(kv_decode.sample_ar(tiny, jax.random.key(5), 3, 20, block=block)), one)


def test_categorical_matches_softmax_frequencies():
  """Inverse-CDF draws over 700 entries (chunks of 64, the last one partial) follow softmax(logits / T); entries
  of probability zero are never drawn."""
  logits = 3.0 * jax.random.normal(jax.random.key(0), (700,))
  logits = logits.at[::5].set(-jnp.inf)
  n, temperature = 100_000, 1.5
  draws = jax.jit(kv_decode.categorical, static_argnames="chunk")(
    jax.random.key(1), jnp.broadcast_to(logits, (n, 700)), jnp.float32(temperature), chunk=64
  )
  freq = np.bincount(np.asarray(draws), minlength=700) / n
  p = np.asarray(jax.nn.softmax(logits / temperature))
  assert freq[::5].sum() == 0
  # Each frequency within 5 standard errors of its probability, and Pearson's chi-square (560 - 1 degrees of
  # freedom: mean 559, standard deviation 33) within 6 standard deviations.
  np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / n) + 1e-9)
  live = p > 0
  chi2 = n * np.sum((freq[live] - p[live]) ** 2 / p[live])
  assert chi2 < 559 + 6 * 33, chi2
  # Greedy at a tiny temperature: the argmax, even when it sits in the last, partial chunk.
  hot = jnp.zeros((4, 700)).at[:, 699].set(1.0)
  np.testing.assert_array_equal(np.asarray(kv_decode.categorical(jax.random.key(2), hot, jnp.float32(1e-4))), 699)


def test_remat_gives_same_features_and_gradients(tiny):
  remat = gpt2.load_gpt2(TINY, remat=True)
  emb = tiny.embed(jnp.arange(24).reshape(2, 12))

  def grad_fn(model):
    graphdef, state = nnx.split(model)
    return jax.jit(
      jax.value_and_grad(
        lambda e: jnp.sum(nnx.merge(graphdef, state)(inputs_embeds=e, hidden_layers=(1, 3))["hidden"][3] ** 2)
      )
    )

  value, grads = grad_fn(tiny)(emb)
  value_r, grads_r = grad_fn(remat)(emb)
  np.testing.assert_allclose(value_r, value, rtol=1e-6)
  # float32 rounding only (XLA fuses the recomputed forward differently): 1e-5 of the largest gradient.
  chex.assert_trees_all_close(grads_r, grads, rtol=1e-5, atol=1e-5 * float(jnp.abs(grads).max()))


def test_next_token_states_read_each_position_after_the_ones_before(tiny):
  rows = jax.random.randint(jax.random.key(0), (2, 6), 0, tiny.cfg.vocab_size)
  hidden, log_probs = gpt2.next_token_states(tiny, rows, 50)
  chex.assert_shape((hidden, log_probs), ((2, 6, tiny.cfg.n_embd), (2, 6, 50)))
  np.testing.assert_allclose(np.exp(np.asarray(log_probs)).sum(-1), 1.0, atol=1e-5)
  # Position t's are the LM's after the start token and rows[:, :t].
  start = jnp.full((2, 1), tiny.cfg.eos_token_id, jnp.int32)
  out = tiny(input_ids=jnp.concatenate([start, rows[:, :3]], 1), hidden_layers=(tiny.cfg.n_layer,), logits=True)
  chex.assert_trees_all_close(hidden[:, :4], out["hidden"][tiny.cfg.n_layer], atol=1e-5)
  chex.assert_trees_all_close(log_probs[:, :4], jax.nn.log_softmax(out["logits"][..., :50]), atol=1e-5)
  # So a change at position 4 moves positions 5 on, never 0 to 4.
  moved = gpt2.next_token_states(tiny, rows.at[:, 4].set((rows[:, 4] + 1) % 50), 50)[1]
  chex.assert_trees_all_close(moved[:, :5], log_probs[:, :5], atol=1e-6)
  assert float(jnp.abs(moved[:, 5] - log_probs[:, 5]).max()) > 1e-4
