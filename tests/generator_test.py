"""The DiT generator: shapes, adaLN-Zero identity, gradient flow, RoPE relativity, output bias."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from driftjax.models import generator as gen

CFG = gen.GeneratorConfig(
  seq_len=16, width=32, depth=2, heads=4, noise_dim=8, out_dim=24, style_tokens=4, style_codebook=8
)


def make(cfg=CFG, mean=None):
  return gen.Generator(cfg, rngs=nnx.Rngs(0), mean_embedding=mean)


def test_shapes_and_dtype():
  model = make()
  noise, style = gen.sample_inputs(jax.random.key(1), 3, CFG)
  chex.assert_shape((noise, style), ((3, 16, 8), (3, 4)))
  out = model(noise, style)
  chex.assert_shape(out, (3, 16, 24))
  assert out.dtype == jnp.float32
  bf = make(gen.GeneratorConfig(**{**CFG.__dict__, "dtype": "bfloat16"}))
  out_bf = bf(noise, style)
  assert out_bf.dtype == jnp.float32  # Output cast back; params stay float32.
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf, nnx.Param)))


def test_blocks_are_identity_at_init():
  model = make()
  x = jax.random.normal(jax.random.key(2), (2, 16, 32))
  style = model.style(jax.random.randint(jax.random.key(3), (2, 4), 0, 8))
  for block in model.blocks:
    chex.assert_trees_all_close(block(x, style), x)


def test_output_bias_is_mean_embedding():
  mean = jax.random.normal(jax.random.key(4), (24,))
  chex.assert_trees_all_close(make(mean=mean).out.bias[...], mean)
  with pytest.raises(ValueError, match=r"mean_embedding must be \(24,\), got \(23,\)"):
    make(mean=jnp.zeros(23))


def test_different_noise_gives_different_outputs():
  model = make()
  a = model(*gen.sample_inputs(jax.random.key(5), 2, CFG))
  b = model(*gen.sample_inputs(jax.random.key(6), 2, CFG))
  assert float(jnp.abs(a - b).mean()) > 1e-3
  assert float(jnp.abs(a[0] - a[1]).mean()) > 1e-3


def test_sample_noise_scope_reads_only_position_zeros_draw():
  model = make(gen.GeneratorConfig(**{**CFG.__dict__, "noise_scope": "sample"}))
  noise, style = gen.sample_inputs(jax.random.key(5), 2, CFG)
  out = model(noise, style)
  # Other draws at positions 1.. change nothing; another draw at position 0 changes every position.
  chex.assert_trees_all_close(model(noise.at[:, 1:].set(jax.random.normal(jax.random.key(7), (2, 15, 8))), style), out)
  moved = model(noise.at[:, 0].add(1.0), style)
  assert float(jnp.min(jnp.abs(moved - out).mean(-1))) > 1e-4
  # The per-position scope reads every draw.
  assert float(jnp.abs(make()(noise.at[:, 5].add(1.0), style) - make()(noise, style))[:, 5].mean()) > 1e-4
  with pytest.raises(ValueError, match="noise_scope='token'"):
    make(gen.GeneratorConfig(**{**CFG.__dict__, "noise_scope": "token"}))


def test_gradient_reaches_every_parameter_after_one_step():
  model = make()
  graphdef, params = nnx.split(model, nnx.Param)
  noise, style = gen.sample_inputs(jax.random.key(7), 4, CFG)
  target = jax.random.normal(jax.random.key(8), (4, 16, 24))

  def loss(p):
    return jnp.mean((nnx.merge(graphdef, p)(noise, style) - target) ** 2)

  flat = lambda tree: {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(tree)}
  grad = jax.jit(jax.grad(loss))
  grads0 = flat(grad(params))
  blocked = [k for k, g in grads0.items() if float(jnp.abs(g).max()) == 0]
  assert blocked, "zero-initialized adaLN gates should block some gradients at step 0"
  tx = optax.adam(1e-2)
  updates, _ = tx.update(grad(params), tx.init(params), params)
  params = optax.apply_updates(params, updates)
  grads1 = flat(grad(params))
  dead = [k for k, g in grads1.items() if float(jnp.abs(g).max()) == 0]
  assert not dead, f"no gradient after one step: {dead}"


def test_rope_scores_depend_only_on_relative_position():
  model = make()
  attn = model.blocks[0].attn
  row = jax.random.normal(jax.random.key(9), (32,))
  x = jnp.broadcast_to(row, (1, 16, 32))  # Same content everywhere: only positions differ.
  q, k, _ = attn.qkv_heads(x)
  scores = np.asarray(jnp.einsum("bqhd,bkhd->bhqk", q, k))[0]
  for offset in (-3, 0, 5):
    diag = np.array([scores[:, i, i + offset] for i in range(max(0, -offset), 16 - max(0, offset))])
    np.testing.assert_allclose(diag, np.broadcast_to(diag[0], diag.shape), atol=1e-4)
  assert np.abs(scores[:, 0, 1] - scores[:, 0, 5]).max() > 1e-3  # ... yet they do depend on it.


def test_bad_noise_shape_and_heads_are_errors():
  with pytest.raises(ValueError, match=r"noise must be \(B, 16, 8\), got \(2, 15, 8\)"):
    make()(jnp.zeros((2, 15, 8)), jnp.zeros((2, 4), jnp.int32))
  with pytest.raises(ValueError, match="must split into 5 heads"):
    make(gen.GeneratorConfig(**{**CFG.__dict__, "heads": 5}))


VOCAB_CFG = gen.GeneratorConfig(**{**CFG.__dict__, "head": "vocab", "vocab_size": 10})


def test_vocab_head_outputs_logits_and_feeds_expected_embeddings():
  model = make(VOCAB_CFG)
  noise, style = gen.sample_inputs(jax.random.key(1), 2, VOCAB_CFG)
  logits = model(noise, style)
  chex.assert_shape(logits, (2, 16, 10))
  table = jax.random.normal(jax.random.key(2), (10, 24))
  soft = gen.to_embeddings(logits, table, VOCAB_CFG)
  chex.assert_trees_all_close(soft, jnp.einsum("blv,vd->bld", jax.nn.softmax(logits, -1), table), atol=1e-5)
  # Expected embeddings lie in the convex hull of the table: a peaked distribution gives its token.
  peaked = jnp.zeros((1, 1, 10)).at[0, 0, 3].set(100.0)
  chex.assert_trees_all_close(gen.to_embeddings(peaked, table, VOCAB_CFG)[0, 0], table[3], atol=1e-5)


def test_straight_through_feeds_tokens_and_passes_the_soft_gradient():
  st = gen.GeneratorConfig(**{**VOCAB_CFG.__dict__, "vocab_mode": "straight_through"})
  logits = jax.random.normal(jax.random.key(3), (2, 5, 10))
  table = jax.random.normal(jax.random.key(4), (10, 24))
  chex.assert_trees_all_close(gen.to_embeddings(logits, table, st), table[jnp.argmax(logits, -1)], atol=1e-6)
  target = jax.random.normal(jax.random.key(5), (2, 5, 24))
  grad = lambda cfg: jax.grad(lambda l: jnp.sum(gen.to_embeddings(l, table, cfg) * target))(logits)
  chex.assert_trees_all_close(grad(st), grad(VOCAB_CFG), atol=1e-6)
  assert float(jnp.abs(grad(st)).max()) > 0


def test_linear_straight_through_feeds_tokens_and_scores_every_token_by_its_swap():
  lin = gen.GeneratorConfig(**{**VOCAB_CFG.__dict__, "vocab_mode": "straight_through_linear"})
  st = gen.GeneratorConfig(**{**VOCAB_CFG.__dict__, "vocab_mode": "straight_through"})
  logits = 3.0 * jax.random.normal(jax.random.key(3), (2, 5, 10))
  table = jax.random.normal(jax.random.key(4), (10, 24))
  chex.assert_trees_all_close(gen.to_embeddings(logits, table, lin), table[jnp.argmax(logits, -1)], atol=1e-6)
  target = jax.random.normal(jax.random.key(5), (2, 5, 24))  # g: the loss's gradient at each position's embedding.
  grad = lambda cfg: jax.grad(lambda l: jnp.sum(gen.to_embeddings(l, table, cfg) * target))(logits)
  p = jax.nn.softmax(logits, -1)
  # d loss / d logit v = (e_v - E_p[e]) . g, whatever v's probability.
  expected = jnp.einsum("vd,bld->blv", table, target) - jnp.einsum("blv,vd,bld->bl", p, table, target)[..., None]
  chex.assert_trees_all_close(grad(lin), expected, atol=1e-4)
  # The soft gradient is the same scaled by p_v: it is near 0 for unlikely tokens, the linear one is not.
  chex.assert_trees_all_close(grad(st), p * expected, atol=1e-4)
  unlikely = p < 1e-3
  assert bool(unlikely.any())
  assert float(jnp.abs(jnp.where(unlikely, grad(st), 0)).max()) < 1e-2
  assert float(jnp.abs(jnp.where(unlikely, grad(lin), 0)).max()) > 1.0


def test_linear_top_k_centring_and_st_temperature_shape_only_the_gradient():
  logits = 3.0 * jax.random.normal(jax.random.key(3), (2, 5, 10))
  table = jax.random.normal(jax.random.key(4), (10, 24))
  target = jax.random.normal(jax.random.key(5), (2, 5, 24))
  cfg = lambda **kw: gen.GeneratorConfig(**{**VOCAB_CFG.__dict__, **kw})
  grad = lambda c: jax.grad(lambda l: jnp.sum(gen.to_embeddings(l, table, c) * target))(logits)
  top3 = cfg(vocab_mode="straight_through_linear", linear_top_k=3)
  hot = cfg(vocab_mode="straight_through", st_temperature=2.0)
  centred = cfg(vocab_mode="straight_through_linear", linear_center="batch")
  per_sample = cfg(vocab_mode="straight_through_linear", linear_center="sample")
  per_position = cfg(vocab_mode="straight_through_linear", linear_center="vocab")
  for c in (top3, hot, centred, per_sample, per_position):
    chex.assert_trees_all_close(gen.to_embeddings(logits, table, c), table[jnp.argmax(logits, -1)], atol=1e-6)
  # Top-k: the linear gradient on the head's 3 likeliest tokens, 0 elsewhere.
  in_top = logits >= jax.lax.top_k(logits, 3)[0][..., -1:]
  full = grad(cfg(vocab_mode="straight_through_linear"))
  chex.assert_trees_all_close(grad(top3), jnp.where(in_top, full, 0.0), atol=1e-5)
  # Centred: each token's gradient minus its mean over the samples and positions.
  chex.assert_trees_all_close(grad(centred), full - jnp.mean(full, axis=(0, 1), keepdims=True), atol=1e-5)
  # Per sample: minus its mean over that sample's positions (each sample's tokens then sum to 0 over positions).
  chex.assert_trees_all_close(grad(per_sample), full - jnp.mean(full, axis=1, keepdims=True), atol=1e-5)
  chex.assert_trees_all_close(jnp.sum(grad(per_sample), axis=1), jnp.zeros((2, 10)), atol=1e-5)
  # Over the vocabulary: (e_v - mean_u e_u) . g, which sums to 0 over the tokens as a softmax's gradient does.
  mean_e = jnp.einsum("vd,bld->bl", table, target)[..., None] / 10
  chex.assert_trees_all_close(grad(per_position), jnp.einsum("vd,bld->blv", table, target) - mean_e, atol=1e-4)
  assert float(jnp.abs(jnp.sum(full, -1)).max()) > 1e-2 > float(jnp.abs(jnp.sum(grad(per_position), -1)).max())
  assert float(jnp.abs(jnp.mean(full, axis=(0, 1))).max()) > 1e-2  # So the centring changes something.
  # A floor under the soft gradient's p_v: the soft gradient plus 0.1 of the linear one.
  mixed = cfg(vocab_mode="straight_through", linear_mix=0.1)
  chex.assert_trees_all_close(gen.to_embeddings(logits, table, mixed), table[jnp.argmax(logits, -1)], atol=1e-5)
  chex.assert_trees_all_close(grad(mixed), grad(cfg(vocab_mode="straight_through")) + 0.1 * full, atol=1e-5)
  # A warmer backward softmax: the soft gradient of logits / 2.
  soft2 = jax.grad(lambda l: jnp.sum((jax.nn.softmax(l / 2.0, -1) @ table) * target))(logits)
  chex.assert_trees_all_close(grad(hot), soft2, atol=1e-5)


@pytest.mark.parametrize(
  "settings, match",
  [
    ({"vocab_mode": "soft", "st_temperature": 2.0}, "apply to head='vocab', vocab_mode='straight_through'"),
    ({"vocab_mode": "straight_through_linear", "linear_mix": 0.1}, "apply to head='vocab'"),
    ({"vocab_mode": "straight_through", "linear_top_k": 8}, "apply to vocab_mode='straight_through_linear'"),
    ({"vocab_mode": "soft", "linear_center": "batch"}, "apply to vocab_mode='straight_through_linear'"),
    ({"vocab_mode": "straight_through_linear", "linear_center": "all"}, "expected '' or one of"),
    ({"vocab_mode": "straight_through", "st_temperature": 0.0}, "must be > 0"),
  ],
)
def test_head_gradient_settings_outside_their_mode_are_errors(settings, match):
  with pytest.raises(ValueError, match=match):
    make(gen.GeneratorConfig(**{**VOCAB_CFG.__dict__, **settings}))


def test_bad_head_settings_are_errors():
  with pytest.raises(ValueError, match="model.head='logits'"):
    make(gen.GeneratorConfig(**{**CFG.__dict__, "head": "logits"}))
  with pytest.raises(ValueError, match="head='vocab' needs vocab_size > 0"):
    make(gen.GeneratorConfig(**{**CFG.__dict__, "head": "vocab"}))


def einsum_attention(attn: gen.Attention, x):
  """The attention as written before jax.nn.dot_product_attention: the reference the library must match."""
  q, k, v = attn.qkv_heads(x)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(attn.head_dim)
  probs = jax.nn.softmax(logits, axis=-1).astype(x.dtype)
  return attn.out(jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(x.shape))


def test_attention_equals_einsum_reference():
  model = make()
  x = 3 * jax.random.normal(jax.random.key(10), (2, 16, 32))  # Large enough for peaked attention rows.
  for block in model.blocks:
    chex.assert_trees_all_close(jax.jit(block.attn.__call__)(x), einsum_attention(block.attn, x), atol=1e-5, rtol=1e-5)


def test_remat_gives_same_outputs_and_gradients():
  plain, remat = make(), make(gen.GeneratorConfig(**{**CFG.__dict__, "remat": True}))
  graphdef_p, params = nnx.split(plain, nnx.Param)
  graphdef_r, params_r = nnx.split(remat, nnx.Param)
  chex.assert_trees_all_equal(params, params_r)  # Same seed, same parameters: remat adds none.
  # Non-zero adaLN weights, so that every block's insides shape the output and its gradient.
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(11), p.shape), params)
  noise, style = gen.sample_inputs(jax.random.key(12), 2, CFG)
  target = jax.random.normal(jax.random.key(13), (2, 16, 24))

  def loss(graphdef):
    return jax.jit(jax.value_and_grad(lambda p: jnp.mean((nnx.merge(graphdef, p)(noise, style) - target) ** 2)))

  value_p, grads_p = loss(graphdef_p)(params)
  value_r, grads_r = loss(graphdef_r)(params)
  np.testing.assert_allclose(value_r, value_p, rtol=1e-6)
  # float32 rounding only (XLA fuses the recomputed forward differently): 1e-5 of the largest gradient.
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads_p))
  chex.assert_trees_all_close(grads_r, grads_p, rtol=1e-5, atol=1e-5 * scale)


def test_attention_implementation_choice():
  from driftjax.models import attention

  assert attention.implementation(jnp.bfloat16, 64, backend="gpu") == "cudnn"
  assert attention.implementation(jnp.float16, 128, backend="cuda") == "cudnn"
  assert attention.implementation(jnp.float32, 64, backend="gpu") == "xla"  # cuDNN's kernel takes bf16/fp16.
  assert attention.implementation(jnp.bfloat16, 60, backend="gpu") == "xla"  # Head width not a multiple of 8.
  assert attention.implementation(jnp.bfloat16, 256, backend="gpu") == "xla"
  assert attention.implementation(jnp.bfloat16, 64, backend="cpu") == "xla"
  assert attention.implementation(jnp.bfloat16, 64, backend="tpu") == "xla"


DRAFT_CFG = gen.GeneratorConfig(**{**VOCAB_CFG.__dict__, "vocab_mode": "straight_through", "draft_blocks": 1})


def _reader(seen):
  """A hand-made reader: records the ids it reads; hidden states 1, log-probabilities -(token index)."""

  def read(ids):
    seen.append(ids)
    log_probs = -jnp.broadcast_to(jnp.arange(10.0), (*ids.shape, 10))
    return jnp.ones((*ids.shape, DRAFT_CFG.out_dim)), log_probs

  return read


def test_draft_reader_reads_the_drafts_argmax_and_starts_as_the_identity():
  model, seen = make(DRAFT_CFG), []
  noise, style = gen.sample_inputs(jax.random.key(1), 2, DRAFT_CFG)
  draft, final = model.drafts(noise, style, _reader(seen))
  np.testing.assert_array_equal(seen[0], jnp.argmax(draft, -1))
  chex.assert_trees_all_equal(final, draft)  # Zero projection, identity blocks, zero gate.
  # The gate adds its multiple of the reader's log-probabilities to the final logits, nothing else changes.
  model.draft_gate[...] = jnp.asarray(0.5)
  chex.assert_trees_all_close(model(noise, style, _reader([])), draft - 0.5 * jnp.arange(10.0), atol=1e-6)
  # The projection and the gate get gradients at init (the new block opens through its adaLN gates later).
  params = nnx.state(model, nnx.Param)
  loss = lambda p: jnp.sum(jnp.square(nnx.merge(nnx.graphdef(model), p)(noise, style, _reader([]))[..., 3]))
  grads = jax.grad(loss)(params)
  assert float(jnp.abs(grads["draft_in"]["kernel"][...]).max()) > 0
  assert float(jnp.abs(grads["draft_gate"][...])) > 0


def test_draft_settings_are_checked():
  model = make(DRAFT_CFG)
  noise, style = gen.sample_inputs(jax.random.key(1), 2, DRAFT_CFG)
  with pytest.raises(ValueError, match="needs a reader"):
    model(noise, style)
  with pytest.raises(ValueError, match="only with head='vocab'"):
    make(gen.GeneratorConfig(**{**CFG.__dict__, "draft_blocks": 1}))
  # Without draft blocks the reader is never called.
  plain = make(gen.GeneratorConfig(**{**DRAFT_CFG.__dict__, "draft_blocks": 0}))
  seen = []
  draft, final = plain.drafts(noise, style, _reader(seen))
  assert not seen and draft is final
