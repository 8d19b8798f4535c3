"""The slotted layout (driftjax/models/layout.py): sentences laid out on a grid with a filler token between them,
and the text read back by dropping the fillers."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from driftjax.data import tokenizer as tok_lib
from driftjax.models import generator as gen_lib
from driftjax.models import layout

F = 10  # The filler: one past the 10-token vocabulary.
ENDS = jnp.zeros((F + 1,), bool).at[1].set(True)  # Token 1 ends a sentence.


def test_each_sentence_starts_at_the_next_multiple():
  ids = jnp.array([[5, 6, 1, 7, 1, 8, 9, 9, 1, 0], [5, 1, 6, 6, 6, 1, 0, 0, 0, 0]])
  got = layout.slot(ids, ENDS, 4, 12, F)
  # Row 0: sentences of 3, 2 and 4 tokens start at 0, 4 and 8; the end-of-text (0) at 12 falls off the layout.
  np.testing.assert_array_equal(got[0], [5, 6, 1, F, 7, 1, F, F, 8, 9, 9, 1])
  # Row 1: the padding after the last sentence stays in a run, as in the text.
  np.testing.assert_array_equal(got[1], [5, 1, F, F, 6, 6, 6, 1, 0, 0, 0, 0])
  # A multiple at least the longest sentence puts sentence k at k * multiple, whatever the lengths before it.
  wide = layout.slot(ids, ENDS, 5, 20, F)
  np.testing.assert_array_equal(wide[0, [0, 5, 10]], [5, 7, 8])
  np.testing.assert_array_equal(wide[1, [0, 5]], [5, 6])


def _logits_of(ids, v=F + 1):
  """Logits (N, P, V + 1) whose argmax is ids, with distinct values to follow through the gather."""
  noise = jax.random.uniform(jax.random.key(0), (*ids.shape, v))
  return noise + 5.0 * jax.nn.one_hot(ids, v)


def test_collapse_reads_the_text_back_and_pads_short_rows_with_end_of_text():
  ids = jnp.array([[5, 6, 1, 7, 1, 8, 9, 2], [5, 1, 6, 6, 6, 1, 0, 0]])
  laid = layout.slot(ids, ENDS, 4, 14, F)
  index, valid = layout.collapse_index(laid, F, 8)
  np.testing.assert_array_equal(jnp.take_along_axis(laid, index, 1)[valid], ids[valid])
  np.testing.assert_array_equal(valid, True)  # Both rows keep 8 tokens.
  logits = _logits_of(laid)
  text = layout.collapse_logits(logits, F, 8, eos=0)
  chex.assert_shape(text, (2, 8, F))  # The filler's logit is gone.
  np.testing.assert_array_equal(jnp.argmax(text, -1), ids)
  chex.assert_trees_all_close(text[0, 3], logits[0, 4, :F])  # Token 7 sat at position 4 of the layout.
  # A row with fewer tokens than the text's length: end-of-text, certain, after its last token.
  short = layout.collapse_logits(_logits_of(jnp.array([[5, 1, F, F, 6, F]])), F, 4, eos=0)
  np.testing.assert_array_equal(jnp.argmax(short, -1), [[5, 1, 6, 0]])
  # Gradients reach the kept positions only.
  grad = jax.grad(lambda lg: jnp.sum(layout.collapse_logits(lg, F, 8, eos=0)))(logits)
  kept = np.asarray(laid != F)
  assert np.all(np.asarray(grad[..., :F])[kept] == 1) and np.all(np.asarray(grad)[~kept] == 0)


def test_generator_writes_the_layout_with_a_filler_output():
  cfg = gen_lib.GeneratorConfig(
    seq_len=8,
    width=32,
    depth=1,
    heads=4,
    noise_dim=8,
    out_dim=16,
    style_tokens=2,
    style_codebook=4,
    head="vocab",
    vocab_size=F,
    vocab_mode="straight_through",
    layout_multiple=4,
    layout_positions=12,
  )
  model = gen_lib.Generator(cfg, rngs=nnx.Rngs(0))
  noise, style = gen_lib.sample_inputs(jax.random.key(1), 2, cfg)
  chex.assert_shape((noise, model(noise, style)), ((2, 12, 8), (2, 12, F + 1)))
  assert cfg.filler == F and gen_lib.GeneratorConfig().filler is None
  for bad in ({"layout_positions": 6}, {"head": "embedding"}, {"draft_blocks": 1}, {"layout_multiple": -1}):
    with pytest.raises(ValueError, match="layout_multiple"):
      gen_lib.Generator(gen_lib.GeneratorConfig(**{**cfg.__dict__, **bad}), rngs=nnx.Rngs(0))


def test_sentence_end_tokens_of_gpt2():
  tok = tok_lib.load_tokenizer("gpt2")
  ends = tok_lib.sentence_end_ids(tok)
  assert {tok.encode(".")[0], tok.encode("!")[0], tok.encode("?")[0]} <= set(ends)
  assert tok.encode(" cat")[0] not in ends and tok.encode(",")[0] not in ends
