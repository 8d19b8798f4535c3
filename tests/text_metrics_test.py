"""Text metrics on hand-made inputs, and a tiny LM whose probabilities are known."""

import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from driftjax import text_metrics
from driftjax.data import tokenizer as tok_lib
from driftjax.models import gpt2

TINY_GPT2 = os.path.join(os.path.dirname(__file__), "testdata", "tiny_gpt2")
SMALL_VOCAB = os.path.join(os.path.dirname(__file__), "testdata", "tiny_bpe")  # testdata/make_tiny_bpe.py


def test_unigram_entropy_by_hand():
  assert text_metrics.unigram_entropy([5, 5, 5, 5]) == 0.0
  assert text_metrics.unigram_entropy([1, 2]) == pytest.approx(math.log(2))
  assert text_metrics.unigram_entropy([1, 2, 3, 4]) == pytest.approx(math.log(4))
  # p = (1/2, 1/4, 1/4): H = 1.5 log 2.
  assert text_metrics.unigram_entropy([7, 7, 8, 9]) == pytest.approx(1.5 * math.log(2))
  assert text_metrics.mean_entropy([[1, 2], [3, 3]]) == pytest.approx(math.log(2) / 2)


def test_distinct_n_by_hand():
  samples = [[1, 2, 1, 2], [1, 2, 3]]
  assert text_metrics.distinct_n(samples, 1) == pytest.approx(3 / 7)
  # Bigrams: (1,2) (2,1) (1,2) | (1,2) (2,3): unique 3 of 5.
  assert text_metrics.distinct_n(samples, 2) == pytest.approx(3 / 5)
  assert text_metrics.distinct_n(samples, 3) == pytest.approx(3 / 3)
  assert text_metrics.distinct_n([[1]], 2) == 0.0


def test_self_bleu_identical_is_one_and_disjoint_is_low():
  same = [[1, 2, 3, 4, 5, 6]] * 4
  assert text_metrics.self_bleu(same) == pytest.approx(1.0)
  disjoint = [[10 * i + j for j in range(6)] for i in range(4)]
  assert text_metrics.self_bleu(disjoint) < 0.05


def test_self_bleu_is_nltks_sentence_bleu_to_the_last_bit():
  # The golden reference: nltk's sentence_bleu of each sample against all the others (smoothing method 1), on
  # sets with repeated n-grams (a 6-token vocabulary), ties in the top counts (duplicate samples), samples shorter
  # than 4 tokens, an empty one (dropped) and hypotheses past max_samples (still references).
  from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

  rng = np.random.default_rng(0)
  sets = [[list(rng.integers(0, 6, rng.integers(1, 14))) for _ in range(n)] for n in (2, 5, 12, 30)]
  sets[2] += [sets[2][0], [], [3]]
  sets.append([[1, 2, 3], [4, 5, 6, 7, 8]])  # No unigram in common: 0.
  for samples, max_samples in zip(sets, (200, 200, 7, 200, 200)):
    words = [list(map(str, x)) for x in samples if len(x)]
    smooth = SmoothingFunction().method1
    expected = np.mean(
      [
        sentence_bleu(words[:i] + words[i + 1 :], hyp, weights=(0.25,) * 4, smoothing_function=smooth)
        for i, hyp in enumerate(words[:max_samples])
      ]
    )
    assert text_metrics.self_bleu(samples, max_samples) == expected
  assert text_metrics.self_bleu(sets[-1]) == 0.0
  assert np.isnan(text_metrics.self_bleu([[1, 2], []]))


@pytest.fixture(scope="module")
def unigram_lm():
  """A GPT-2 whose output ignores its input: ln_f scale 0 and bias b give logits b @ wte^T everywhere."""
  cfg = gpt2.GPT2Config(vocab_size=50257, n_positions=64, n_embd=8, n_layer=1, n_head=2)
  model = gpt2.GPT2(cfg, rngs=nnx.Rngs(0))
  model.ln_f.weight[...] = jnp.zeros(8)
  model.ln_f.bias[...] = jnp.ones(8)
  return model


def test_perplexity_of_a_known_lm(unigram_lm):
  tok = tok_lib.load_tokenizer("gpt2")
  logp = np.asarray(jax_log_softmax(unigram_lm.wte[...] @ unigram_lm.ln_f.bias[...]))
  texts = ["Once upon a time", "the cat sat."]
  # Scored tokens: every text token and the end-of-text after it.
  scored = [tok.encode(t) + [tok.eos_token_id] for t in texts]
  expected = math.exp(-np.mean([logp[i] for ids in scored for i in ids]))
  assert text_metrics.gen_ppl(unigram_lm, tok, texts, batch=1) == pytest.approx(expected, rel=1e-4)


def jax_log_softmax(x):
  import jax

  return jax.nn.log_softmax(x)


def test_evaluator_rows_mask_up_to_first_eos():
  tok = tok_lib.load_tokenizer("gpt2")
  ids, mask = text_metrics.evaluator_rows(["a b", "a b c d"], tok, max_len=64)
  eos = tok.eos_token_id
  assert ids[0, 0] == eos and ids[0, 1:3].tolist() == tok.encode("a b") and ids[0, 3] == eos
  assert mask[0].tolist() == [0, 1, 1, 1, 0, 0]  # Text tokens and the first end-of-text; nothing after.
  assert mask[1].sum() == len(tok.encode("a b c d")) + 1


def test_real_text_scores_lower_than_shuffled(tmp_path):
  """A tiny LM trained briefly on stories finds real text likelier than the same tokens shuffled (the test
  BPE's 512 tokens: with GPT-2's 50,257 the LM's training took most of this test's 40 s)."""
  from driftjax import pretrain

  tok = tok_lib.load_tokenizer(SMALL_VOCAB)
  stories = [
    "Once upon a time, there was a little girl named Lily. She liked to play in the park.",
    "Once upon a time, there was a little boy named Tom. He liked to play with his dog.",
    "One day, the girl saw a big red ball. She was very happy and played with it all day.",
  ] * 8
  model = pretrain.train_lm(
    stories, tok, n_layer=1, n_embd=32, n_head=2, seq_len=32, steps=150, batch=8, lr=3e-3, seed=0
  )
  real = stories[:3]
  rng = np.random.default_rng(0)
  shuffled = [tok.decode(rng.permutation(tok.encode(t)).tolist()) for t in real]
  assert text_metrics.gen_ppl(model, tok, real) < 0.5 * text_metrics.gen_ppl(model, tok, shuffled)


def test_mauve_batched_features_equal_per_text_unpadded_features():
  """Sorted, right-padded, jitted batches give each row the feature of its own unpadded forward pass."""
  model = gpt2.load_gpt2(TINY_GPT2)  # 3 layers, 32 positions, vocabulary 512.
  rng = np.random.default_rng(0)
  # Few distinct lengths, as each unpadded reference compiles once per length; sorted, they fill batches padded
  # to 8 and 32 (twice, the last with 3 empty rows).
  lengths = [32, 5, 1, 17, 9, 2, 16, 5, 9]
  rows = [rng.integers(0, 512, size=n).tolist() for n in lengths]
  batched = text_metrics.mauve_features(model, rows, batch=4)
  graphdef, state = nnx.split(model)
  n_layer = model.cfg.n_layer
  alone = jax.jit(lambda ids: nnx.merge(graphdef, state)(input_ids=ids, hidden_layers=(n_layer,))["hidden"][n_layer])
  for row, feat in zip(rows, batched):
    np.testing.assert_allclose(feat, np.asarray(alone(jnp.asarray([row]))[0, -1]), atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match="a row of 33 tokens exceeds the evaluator's 32 positions"):
    text_metrics.mauve_features(model, [[1] * 33])


def test_mauve_token_rows_tokenize_as_mauve_text():
  """No end-of-text prefix, empty texts dropped, the first max_tokens tokens kept."""
  tok = tok_lib.load_tokenizer("gpt2")
  long = "Once upon a time there was a cat who liked to sit in the sun all day long."
  rows = text_metrics.mauve_token_rows(["Hello world", "", long], tok, max_tokens=8)
  assert rows == [tok.encode("Hello world"), tok.encode(long)[:8]]
  assert rows[0][0] != tok.eos_token_id and len(tok.encode(long)) > 8


def test_mauve_of_a_set_against_itself_is_one_and_against_another_is_lower():
  """mauve-text's compute_mauve on tiny GPT-2 features: random token rows against themselves, against a fresh
  draw of the same kind, and against rows of one repeated token (a clearly different, collapsed set)."""
  model = gpt2.load_gpt2(TINY_GPT2)
  rng = np.random.default_rng(0)

  def random_rows(n=40):
    return text_metrics.mauve_features(
      model, [rng.integers(0, 512, size=rng.integers(4, 16)).tolist() for _ in range(n)]
    )

  p, p_again = random_rows(), random_rows()
  collapsed = text_metrics.mauve_features(model, [[7] * int(rng.integers(4, 16)) for _ in range(40)])
  same = text_metrics.mauve_from_features(p, p, seed=1)  # 40 + 40 features: 4 buckets.
  fresh = text_metrics.mauve_from_features(p, p_again, seed=1)
  other = text_metrics.mauve_from_features(p, collapsed, seed=1)
  assert same == pytest.approx(1.0, abs=1e-6)
  assert fresh > 0.8 and other < 0.1, (fresh, other)  # Here 0.94 and 0.007.
  assert text_metrics.mauve_from_features(p, collapsed, seed=1) == other  # The seed fixes k-means: it repeats.


def test_mauve_without_the_package_says_how_to_get_it(monkeypatch):
  monkeypatch.setitem(sys.modules, "mauve", None)  # `import mauve` now raises ImportError.
  with pytest.raises(ImportError, match=r"pip install -e '\.\[eval\]' \(or set --config\.eval\.mauve=False\)"):
    text_metrics.require_mauve()
