"""Text-quality metrics of a sample set, as the field reports them for unconditional text generators.

- gen_ppl: generative perplexity under an evaluator LM, pooled over all tokens up to and including the first
  end-of-text (as MDLM and Duo compute it): each text is re-tokenized with the evaluator's tokenizer, prefixed
  with end-of-text, and every token after that prefix up to the first end-of-text is scored.
- entropy: mean over samples of the unigram entropy (nats) of each sample's own tokens.
- distinct_n: unique n-grams / all n-grams over the whole sample set.
- self_bleu: mean BLEU-4 of each sample against all the others (nltk, smoothing method 1, as in Texygen).
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
  """Unique n-grams over all n-grams of the sample set (0 when there are none)."""
  grams = [tuple(s[i:i + n]) for s in samples for i in range(len(s) - n + 1)]
  return len(set(grams)) / len(grams) if grams else 0.0


def self_bleu(samples: Sequence[Sequence], max_samples: int = 200) -> float:
  """Mean BLEU-4 of each of the first max_samples samples against every other sample of the set."""
  from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
  samples = [list(map(str, s)) for s in samples if len(s)]
  if len(samples) < 2:
    return float("nan")
  smooth = SmoothingFunction().method1
  scores = []
  for i, hyp in enumerate(samples[:max_samples]):
    refs = samples[:i] + samples[i + 1:]
    scores.append(sentence_bleu(refs, hyp, weights=(0.25,) * 4, smoothing_function=smooth))
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


def evaluator_rows(texts: Sequence[str], tokenizer, max_len: int,
                   ended: Sequence[bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
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
    ids[i, 1:1 + len(e)] = e
    mask[i, 1:1 + len(e) + int(ended[i])] = 1.0  # The text's tokens and, if it ended, its end-of-text.
  return ids, mask


def gen_ppl(evaluator: gpt2.GPT2, tokenizer, texts: Sequence[str], batch: int = 16,
            ended: Sequence[bool] | None = None) -> float:
  """Pooled generative perplexity of texts under the evaluator (see evaluator_rows for `ended`)."""
  if not texts:
    raise ValueError("gen_ppl needs at least one text")
  graphdef, state = nnx.split(evaluator)
  ids, mask = evaluator_rows(texts, tokenizer, evaluator.cfg.n_positions, ended)
  total, count = 0.0, 0.0
  for i in range(0, len(texts), batch):
    nll, n = _token_nll(graphdef, state, jnp.asarray(ids[i:i + batch]), jnp.asarray(mask[i:i + batch]))
    total, count = total + float(nll), count + float(n)
  return math.exp(total / count)


def text_metrics(token_lists: Sequence[Sequence[int]], texts: Sequence[str], evaluator, eval_tokenizer,
                 bleu_samples: int = 200, seq_len: int | None = None) -> dict[str, float]:
  """Every metric of one sample set: token_lists are the samples' own tokens (up to end-of-text).

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
      "mean_tokens": float(np.mean([len(t) for t in token_lists])) if token_lists else 0.0,
  }


def mauve_score(evaluator: gpt2.GPT2, tokenizer, texts_p, texts_q) -> float | None:
  """MAUVE on the evaluator's final-position features, when the mauve-text package is installed."""
  try:
    import mauve
  except ImportError:
    return None
  graphdef, state = nnx.split(evaluator)

  def feats(texts):
    ids, mask = evaluator_rows(texts, tokenizer, evaluator.cfg.n_positions)
    last = mask.sum(1).astype(int)  # Index of each text's first end-of-text.
    out = nnx.merge(graphdef, state)(input_ids=jnp.asarray(ids), hidden_layers=(evaluator.cfg.n_layer,))
    h = np.asarray(out["hidden"][evaluator.cfg.n_layer])
    return h[np.arange(len(texts)), last]

  return float(mauve.compute_mauve(p_features=feats(texts_p), q_features=feats(texts_q), verbose=False).mauve)
