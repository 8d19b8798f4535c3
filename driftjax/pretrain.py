"""A small GPT-2 language model trained with the next-token loss: an offline encoder and evaluator.

train_lm is the core of --mode=pretrain_encoder (and of tests that need an LM that knows some text).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from driftjax.data import pipeline
from driftjax.models import gpt2


def lm_loss(model: gpt2.GPT2, ids: jax.Array) -> jax.Array:
  """Mean next-token cross-entropy of rows (B, L)."""
  logits = model(input_ids=ids[:, :-1], logits=True)["logits"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()


def train_lm(texts: Sequence[str], tokenizer, *, n_layer: int, n_embd: int, n_head: int, seq_len: int,
             steps: int, batch: int, lr: float, seed: int = 0, log_every: int = 0) -> gpt2.GPT2:
  """Trains a GPT-2 of the given size on texts (packed rows, each story ended with end-of-text)."""
  rows = pipeline.tokenize_documents(texts, tokenizer, seq_len + 1, pack=True, stats=pipeline.CorpusStats())
  # Rows start with end-of-text as GPT-2's own text does, so that sampling from it can start there too.
  rows = np.concatenate([np.full((len(rows), 1), tokenizer.eos_token_id, np.int32), rows[:, :-1]], axis=1)
  cfg = gpt2.GPT2Config(vocab_size=len(tokenizer), n_positions=max(seq_len + 1, 64), n_embd=n_embd,
                        n_layer=n_layer, n_head=n_head, eos_token_id=tokenizer.eos_token_id)
  model = gpt2.GPT2(cfg, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model)
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), steps, lr * 0.1),
                   weight_decay=0.01)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, ids):
    loss, grads = jax.value_and_grad(lambda p: lm_loss(nnx.merge(graphdef, p), ids))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  for i in range(steps):
    ids = jnp.asarray(rows[rng.integers(0, len(rows), batch)])
    params, opt_state, loss = step(params, opt_state, ids)
    if log_every and (i + 1) % log_every == 0:
      print(f"pretrain step {i + 1}/{steps} loss {float(loss):.4f}", flush=True)
  return nnx.merge(graphdef, params)
