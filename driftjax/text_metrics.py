"""Text-quality metrics of a sample set, as the field reports them for unconditional text generators.

- gen_ppl: generative perplexity under an evaluator LM, pooled over all tokens up to and including the first
  end-of-text (as MDLM and Duo compute it): each text is re-tokenized with the evaluator's tokenizer, prefixed
  with end-of-text, and every token after that prefix up to the first end-of-text is scored.
- entropy: mean over samples of the unigram entropy (nats) of each sample's own tokens.
- distinct_n: unique n-grams / all n-grams over the whole sample set, n-grams of tokens.
- self_bleu: mean BLEU-4 of each sample against all the others (nltk's sentence_bleu with smoothing method 1, as
  in Texygen, computed here in linear time), with tokens as BLEU's words.
  These three count token ids, not words: the (BPE) tokens of the tokenizer that produced the samples (the
  generator's, which the encoder LM's `ar` samples share), so their values move with the tokenizer
  and compare across runs only at the same one. Texygen's self-BLEU splits words instead.
- mauve: MAUVE (mauve-text's compute_mauve, eval.mauve) of the samples against the data reference, on features
  made as mauve-text makes them (mauve/compute_mauve.py get_features_from_input, mauve/utils.py
  featurize_tokens_from_model): each non-empty text tokenized by the evaluator's tokenizer with nothing
  prepended, cut to its first 1,024 tokens (max_text_length; fewer if the evaluator has fewer positions), and
  the hidden state after the final layer norm at its last token. Published MAUVE numbers use gpt2-large
  features (compute_mauve's default featurizer); here the features come from the run's evaluator
  (eval.evaluator; the encoder when it is ""), so a number compares with the literature only when the
  evaluator is gpt2-large.
"""

from __future__ import annotations

import collections
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from driftjax.models import gpt2


def unigram_entropy(tokens: Sequence[int]) -> float:
  """Entropy in nats of the empirical token distribution of one sample (0 for an empty one)."""
  if not len(tokens):
    return 0.0
  counts = np.array(list(collections.Counter(tokens).values()), np.float64)
  p = counts / counts.sum()
  return float(-(p * np.log(p)).sum())


def mean_entropy(samples: Sequence[Sequence[int]]) -> float:
  return float(np.mean([unigram_entropy(s) for s in samples])) if samples else 0.0


def distinct_n(samples: Sequence[Sequence[int]], n: int) -> float:
  """Unique n-grams of token ids over all n-grams of the sample set (0 when there are none)."""
  grams = [tuple(s[i : i + n]) for s in samples for i in range(len(s) - n + 1)]
  return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(samples: Sequence[Sequence], max_samples: int = 200) -> float:
  """Mean BLEU-4 of each of the first max_samples samples against every other sample of the set, each sample a
  sequence of token ids (BLEU's words are tokens here): nltk's sentence_bleu with smoothing method 1, as Texygen
  computes it, to the last bit (tests/text_metrics_test.py), without nltk's cost. nltk counts every reference's
  n-grams again for each hypothesis (O(N^2) counts: under cProfile, 76 s of the demo's 99 s --mode=eval); here
  each sample's n-grams are counted once, and a hypothesis's clipped count of an n-gram is its count capped by the
  largest count among the other samples (the top count, or the second one where the hypothesis holds the top)."""
  samples = [tuple(int(t) for t in s) for s in samples if len(s)]
  if len(samples) < 2:
    return float("nan")
  lengths = np.array([len(s) for s in samples])
  orders = []  # Per n: each sample's n-gram counts, and per n-gram (top count, its sample, second count).
  for n in range(1, 5):
    counts = [collections.Counter(zip(*(s[i:] for i in range(n)))) for s in samples]
    top: dict[tuple, tuple[int, int, int]] = {}
    for j, c in enumerate(counts):
      for gram, k in c.items():
        first, holder, second = top.get(gram, (0, -1, 0))
        top[gram] = (k, j, first) if k > first else (first, holder, max(second, k))
    orders.append((counts, top))
  scores = []
  for i in range(min(max_samples, len(samples))):
    numerators, denominators = [], []
    for counts, top in orders:
      clipped = 0
      for gram, k in counts[i].items():
        first, holder, second = top[gram]
        clipped += min(k, second if holder == i else first)
      numerators.append(clipped)
      denominators.append(max(1, sum(counts[i].values())))
    if numerators[0] == 0:  # No unigram in common: nltk's 0.
      scores.append(0.0)
      continue
    hyp_len, others = lengths[i], np.delete(lengths, i)
    gap = np.abs(others - hyp_len)
    ref_len = int(others[gap == gap.min()].min())  # The closest other length, the shorter on a tie.
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    # Smoothing method 1: a zero count becomes 0.1 (epsilon).
    p = [(num + 0.1) / den if num == 0 else num / den for num, den in zip(numerators, denominators)]
    scores.append(bp * math.exp(math.fsum(0.25 * math.log(x) for x in p)))
  return float(np.mean(scores))


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _token_nll(graphdef, state, ids, mask):
  """Sum of -log p(ids[t] | ids[:t]) over positions where mask, and the count."""
  model = nnx.merge(graphdef, state)
  logits = model(input_ids=ids[:, :-1], logits=True)["logits"]
  logp = jax.nn.log_softmax(logits, -1)
  nll = -jnp.take_along_axis(logp, ids[:, 1:, None], -1)[..., 0]
  m = mask[:, 1:]
  return jnp.sum(nll * m), jnp.sum(m)


def evaluator_rows(
  texts: Sequence[str], tokenizer, max_len: int, ended: Sequence[bool] | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """[eos] + tokens + [eos], padded with eos to a common length (<= max_len), and the mask of scored tokens.

  The end-of-text after a text is scored only where the sample itself ended there (`ended`, default all):
  a sample cut at the sequence length never produced one.
  """
  eos = tokenizer.eos_token_id
  ended = [True] * len(texts) if ended is None else list(ended)
  encoded = [tokenizer.encode(t)[: max_len - 2] for t in texts]
  length = max(len(e) for e in encoded) + 2
  ids = np.full((len(texts), length), eos, np.int32)
  mask = np.zeros((len(texts), length), np.float32)
  for i, e in enumerate(encoded):
    ids[i, 1 : 1 + len(e)] = e
    mask[i, 1 : 1 + len(e) + int(ended[i])] = 1.0  # The text's tokens and, if it ended, its end-of-text.
  return ids, mask


def gen_ppl(
  evaluator: gpt2.GPT2, tokenizer, texts: Sequence[str], batch: int = 16, ended: Sequence[bool] | None = None
) -> float:
  """Pooled generative perplexity of texts under the evaluator (see evaluator_rows for `ended`)."""
  if not texts:
    raise ValueError("gen_ppl needs at least one text")
  graphdef, state = nnx.split(evaluator)
  ids, mask = evaluator_rows(texts, tokenizer, evaluator.cfg.n_positions, ended)
  total, count = 0.0, 0.0
  for i in range(0, len(texts), batch):
    nll, n = _token_nll(graphdef, state, jnp.asarray(ids[i : i + batch]), jnp.asarray(mask[i : i + batch]))
    total, count = total + float(nll), count + float(n)
  return math.exp(total / count)


def text_metrics(
  token_lists: Sequence[Sequence[int]],
  texts: Sequence[str],
  evaluator,
  eval_tokenizer,
  bleu_samples: int = 200,
  seq_len: int | None = None,
) -> dict[str, float]:
  """Every metric of one sample set: token_lists are the samples' own tokens (up to end-of-text), which entropy,
  distinct_n and self_bleu count; gen_ppl re-tokenizes texts for the evaluator.

  With seq_len, a sample shorter than it ended with end-of-text, which gen_ppl then scores too.
  """
  ended = None if seq_len is None else [len(t) < seq_len for t in token_lists]
  return {
    "gen_ppl": gen_ppl(evaluator, eval_tokenizer, texts, ended=ended),
    "entropy": mean_entropy(token_lists),
    "distinct_1": distinct_n(token_lists, 1),
    "distinct_2": distinct_n(token_lists, 2),
    "distinct_3": distinct_n(token_lists, 3),
    "self_bleu": self_bleu(token_lists, bleu_samples),
    "n_samples": len(texts),
    "distinct_samples": len(set(map(tuple, token_lists))) / len(token_lists) if token_lists else 0.0,
    "mean_tokens": float(np.mean([len(t) for t in token_lists])) if token_lists else 0.0,
  }


MAUVE_MAX_TOKENS = 1024  # compute_mauve's max_text_length default.
MAUVE_SEED = 25  # compute_mauve's default seed (k-means initialization).


def require_mauve():
  """The mauve module, or an ImportError that says how to get it or turn MAUVE off."""
  try:
    import mauve
  except ImportError as e:
    raise ImportError(
      "eval.mauve=True needs the mauve-text package: pip install -e '.[eval]' (or set --config.eval.mauve=False)"
    ) from e
  return mauve


def mauve_token_rows(texts: Sequence[str], tokenizer, max_tokens: int) -> list[list[int]]:
  """Texts tokenized as mauve-text's compute_mauve(p_text=...) does: empty strings dropped, no end-of-text or
  other prefix added, the first max_tokens tokens kept (tokenizer.encode with truncation)."""
  rows = [tokenizer.encode(t, truncation=True, max_length=max_tokens) for t in texts if len(t) > 0]
  if not rows:
    raise ValueError(f"MAUVE needs at least one non-empty text, got {len(texts)} empty ones")
  if any(not r for r in rows):
    raise ValueError("a non-empty text tokenized to no tokens: it has no last token to take a feature from")
  return rows


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _last_token_features(graphdef, state, ids, last):
  """(B, D) hidden states after the final layer norm at positions `last` (B,) of ids (B, L)."""
  model = nnx.merge(graphdef, state)
  n_layer = model.cfg.n_layer
  # Full float32 matmuls, as mauve-text's PyTorch featurizer does by default; XLA may use TF32 on recent GPUs.
  with jax.default_matmul_precision("highest"):
    hidden = model(input_ids=ids, hidden_layers=(n_layer,))["hidden"][n_layer]
  return hidden[jnp.arange(ids.shape[0]), last]


def mauve_features(evaluator: gpt2.GPT2, rows: Sequence[Sequence[int]], batch: int = 16) -> np.ndarray:
  """(N, D) features of token rows as mauve-text takes them: the last layer's hidden state (after the final
  layer norm, transformers' hidden_states[-1]) at each row's own last token.

  Rows are sorted by length and right-padded per batch to a power-of-two length (at most n_positions), so a
  handful of shapes compile; padding sits after each row's last token, where causal attention cannot see it.
  """
  if not rows:
    raise ValueError("mauve_features needs at least one row")
  n_pos = evaluator.cfg.n_positions
  if max(len(r) for r in rows) > n_pos:
    raise ValueError(f"a row of {max(len(r) for r in rows)} tokens exceeds the evaluator's {n_pos} positions")
  graphdef, state = nnx.split(evaluator)
  order = np.argsort([len(r) for r in rows], kind="stable")
  out = np.zeros((len(rows), evaluator.cfg.n_embd), np.float32)
  for i in range(0, len(rows), batch):
    idx = order[i : i + batch]
    longest = max(len(rows[j]) for j in idx)
    length = min(n_pos, 1 << (longest - 1).bit_length())
    ids = np.zeros((batch, length), np.int32)  # A short last batch is filled with empty rows: no new shape.
    last = np.zeros((batch,), np.int32)
    for k, j in enumerate(idx):
      ids[k, : len(rows[j])] = rows[j]
      last[k] = len(rows[j]) - 1
    feats = _last_token_features(graphdef, state, jnp.asarray(ids), jnp.asarray(last))
    out[idx] = np.asarray(feats)[: len(idx)]
  return out


def mauve_from_features(p_features: np.ndarray, q_features: np.ndarray, seed: int = MAUVE_SEED) -> float:
  """mauve-text's compute_mauve on given features, with its other defaults (num_buckets='auto': n / 10)."""
  mauve = require_mauve()
  return float(mauve.compute_mauve(p_features=p_features, q_features=q_features, seed=seed, verbose=False).mauve)


def mauve_score(
  evaluator: gpt2.GPT2, tokenizer, texts_p: Sequence[str], texts_q: Sequence[str], seed: int = MAUVE_SEED
) -> float:
  """MAUVE of two text sets on the evaluator's features, tokenized and featurized as mauve-text does."""
  require_mauve()  # Before featurizing: a missing package should not cost a forward pass first.
  max_tokens = min(MAUVE_MAX_TOKENS, evaluator.cfg.n_positions)
  p = mauve_features(evaluator, mauve_token_rows(texts_p, tokenizer, max_tokens))
  q = mauve_features(evaluator, mauve_token_rows(texts_q, tokenizer, max_tokens))
  return mauve_from_features(p, q, seed)
