"""--mode=pretrain_encoder: a small GPT-2 LM trained with the next-token loss, saved in the Hugging Face layout.

The result (DIR/<pretrain.out_dir>: config.json + model.safetensors, plus vocab.json + merges.txt when a
byte-level BPE tokenizer is trained on the corpus) serves as the frozen encoder and as the evaluator, offline.
train_lm is also used by tests that need an LM that knows some text.
"""

from __future__ import annotations

import os
import shutil
from typing import Sequence

from absl import logging
import ml_collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from driftjax import build
from driftjax import hosts
from driftjax.data import pipeline
from driftjax.data import tokenizer as tok_lib
from driftjax.models import gpt2


def lm_loss(model: gpt2.GPT2, ids: jax.Array, weights: jax.Array) -> jax.Array:
  """Next-token cross-entropy of rows (B, L), averaged over the targets ids[:, 1:] where weights (B, L-1)."""
  logits = model(input_ids=ids[:, :-1], logits=True)["logits"]
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:])
  return jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def document_rows(texts: Sequence[str], tokenizer, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Rows [eos] + story + [eos] (+ eos padding) of seq_len + 2 tokens, one story each, and target weights.

  Every row starts at a story's beginning, as text after an end-of-text does in GPT-2's own data, so the
  model learns how stories open; the targets past a story's end-of-text (padding) weigh nothing.
  """
  eos = tokenizer.eos_token_id
  body = pipeline.tokenize_documents(texts, tokenizer, seq_len + 1, pack=False, stats=pipeline.CorpusStats())
  rows = np.concatenate([np.full((len(body), 1), eos, np.int32), body], axis=1)
  first_eos = np.argmax(body == eos, axis=1)  # Every body row holds at least its closing end-of-text.
  weights = (np.arange(body.shape[1])[None] <= first_eos[:, None]).astype(np.float32)
  return rows, weights


def train_lm(
  texts: Sequence[str],
  tokenizer,
  *,
  n_layer: int,
  n_embd: int,
  n_head: int,
  seq_len: int,
  steps: int,
  batch: int,
  lr: float,
  seed: int = 0,
  log_every: int = 0,
  losses: list | None = None,
) -> gpt2.GPT2:
  """Trains a GPT-2 of the given size on texts (one story per row, see document_rows).

  `losses`, when given, receives the training loss of every step.
  """
  rows, weights = document_rows(texts, tokenizer, seq_len)
  cfg = gpt2.GPT2Config(
    vocab_size=len(tokenizer),
    n_positions=seq_len + 1,
    n_embd=n_embd,
    n_layer=n_layer,
    n_head=n_head,
    eos_token_id=tokenizer.eos_token_id,
  )
  model = gpt2.GPT2(cfg, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model)
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, max(1, steps // 20), steps, lr * 0.1), weight_decay=0.01)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, ids, w):
    loss, grads = jax.value_and_grad(lambda p: lm_loss(nnx.merge(graphdef, p), ids, w))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.default_rng(seed)
  for i in range(steps):
    idx = rng.integers(0, len(rows), batch)
    params, opt_state, loss = step(params, opt_state, jnp.asarray(rows[idx]), jnp.asarray(weights[idx]))
    if losses is not None:
      losses.append(float(loss))
    if log_every and (i + 1) % log_every == 0:
      print(f"pretrain step {i + 1}/{steps} loss {float(loss):.4f}", flush=True)
  return nnx.merge(graphdef, params)


def train_bpe(docs: Sequence[str], vocab_size: int, out_dir: str):
  """A byte-level BPE tokenizer of vocab_size (end-of-text included) trained on docs, saved as
  vocab.json + merges.txt in out_dir and loaded back through the project's loader."""
  from tokenizers import ByteLevelBPETokenizer

  bpe = ByteLevelBPETokenizer()
  bpe.train_from_iterator(list(docs), vocab_size=vocab_size, min_frequency=2, special_tokens=[pipeline.EOT])
  os.makedirs(out_dir, exist_ok=True)
  bpe.save_model(out_dir)
  return tok_lib.load_tokenizer(out_dir)


def _train_and_save(docs, tokenizer, out: str, size: dict, p, seed: int, tokenizer_dir: str | None) -> None:
  """Trains an LM of `size` (n_layer, n_embd, n_head, steps) on docs and writes it to `out` (via out.partial,
  renamed when complete: a killed run leaves no half model); tokenizer_dir's vocab.json and merges.txt go
  with it, so that the folder loads as model and tokenizer together."""
  staging = out + ".partial"
  if tokenizer_dir and tokenizer_dir != staging:
    os.makedirs(staging, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
      shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(staging, name))
  losses = []
  model = train_lm(
    docs, tokenizer, seq_len=p.seq_len, batch=p.batch, lr=p.lr, seed=seed, log_every=p.log_every, losses=losses, **size
  )
  gpt2.save_gpt2(model, staging)
  if os.path.exists(out):
    raise FileExistsError(f"{out} exists without model.safetensors; move it away first")
  os.replace(staging, out)
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  logging.info(
    "LM of %d parameters saved to %s (loss %.3f -> %.3f over %d steps)",
    n_params,
    out,
    losses[0],
    losses[-1],
    len(losses),
  )


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Trains and saves the encoder LM unless DIR/<pretrain.out_dir> already holds one, and likewise the
  evaluation LM (pretrain.evaluator.enabled) in DIR/<pretrain.evaluator.out_dir>; returns the encoder's folder.

  On several hosts process 0 trains and writes them (on its own devices) while the others wait for it.
  """
  p = config.pretrain
  if not p.bpe_vocab_size and config.encoder.tokenizer == build.PRETRAINED:
    raise ValueError("encoder.tokenizer='pretrained' needs pretrain.bpe_vocab_size > 0 (the BPE trained here)")
  if p.evaluator.enabled and p.evaluator.seed == config.seed:
    raise ValueError(
      f"pretrain.evaluator.seed={p.evaluator.seed} equals the encoder's seed: an independent LM needs another"
    )
  out = os.path.join(workdir, p.out_dir)
  hosts.first_writes("pretrained_lms", lambda: _pretrain(config, workdir))
  return out


def _pretrain(config: ml_collections.ConfigDict, workdir: str) -> None:
  p = config.pretrain
  out = os.path.join(workdir, p.out_dir)
  eval_out = os.path.join(workdir, p.evaluator.out_dir)
  need_encoder = not os.path.exists(os.path.join(out, "model.safetensors"))
  need_evaluator = p.evaluator.enabled and not os.path.exists(os.path.join(eval_out, "model.safetensors"))
  if not need_encoder:
    logging.info("pretrained encoder found in %s: reused", out)
  if not (need_encoder or need_evaluator):
    return
  docs = build.corpus(config).documents("train")  # The held-out stories (the data reference) stay unseen.
  docs = [docs[i] for i in range(min(len(docs), p.docs))] if p.docs else list(docs)
  size = dict(n_layer=p.n_layer, n_embd=p.n_embd, n_head=p.n_head, steps=p.steps)
  if need_encoder:
    staging = out + ".partial"
    tokenizer = (
      train_bpe(docs, p.bpe_vocab_size, staging)
      if p.bpe_vocab_size
      else tok_lib.load_tokenizer(config.encoder.tokenizer)
    )
    _train_and_save(docs, tokenizer, out, size, p, config.seed, tokenizer_dir=None)
  if need_evaluator:
    # The encoder's tokenizer (so that both LMs read the same tokens), another seed, its own size.
    tok_dir = out if p.bpe_vocab_size else None
    tokenizer = tok_lib.load_tokenizer(tok_dir or config.encoder.tokenizer)
    e = p.evaluator
    eval_size = dict(n_layer=e.n_layer, n_embd=e.n_embd, n_head=e.n_head, steps=e.steps)
    _train_and_save(docs, tokenizer, eval_out, eval_size, p, e.seed, tokenizer_dir=tok_dir)
