"""Builds the pieces a mode needs from a config: the corpus, tokenizer, frozen encoder and generator settings."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from driftjax import hosts
from driftjax.data import corpus as corpus_lib
from driftjax.data import tokenizer as tok_lib
from driftjax.models import generator as gen_lib
from driftjax.models import gpt2


PRETRAINED = "pretrained"  # encoder.name / encoder.tokenizer: the output of --mode=pretrain_encoder in DIR.


def corpus(config: ml_collections.ConfigDict) -> corpus_lib.Corpus:
  """The run's corpus: every mode splits it the same way (data.holdout documents are never trained on)."""
  d = config.data
  return corpus_lib.Corpus(
    source=d.source,
    seq_len=config.model.seq_len,
    seed=config.seed,
    holdout=d.holdout,
    synthetic_docs=d.get("synthetic_docs", 0),
    pack=d.pack,
    train_split=d.split,
    heldout_split=config.eval.data_split,
  )


def generator_config(config: ml_collections.ConfigDict, out_dim: int, vocab_size: int) -> gen_lib.GeneratorConfig:
  """out_dim: the encoder's embedding width; vocab_size: the tokenizer's (the vocab head's choices)."""
  m = config.model
  return gen_lib.GeneratorConfig(
    seq_len=m.seq_len,
    width=m.width,
    depth=m.depth,
    heads=m.heads,
    mlp_ratio=m.mlp_ratio,
    noise_dim=m.noise_dim,
    noise_scope=m.get("noise_scope", "position"),
    out_dim=out_dim,
    style_tokens=m.style_tokens,
    style_codebook=m.style_codebook,
    pos_init_scale=m.pos_init_scale,
    dtype=m.dtype,
    head=m.head,
    vocab_size=vocab_size,
    vocab_mode=m.vocab_mode,
    linear_top_k=m.get("linear_top_k", 0),
    linear_center=m.get("linear_center", ""),
    st_temperature=m.get("st_temperature", 1.0),
    linear_mix=m.get("linear_mix", 0.0),
    remat=m.remat,
    draft_blocks=m.get("draft_blocks", 0),
    layout_multiple=m.get("layout_multiple", 0),
    layout_positions=m.get("layout_positions", 0),
  )


def encoder_path(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The encoder's hub name or folder: a random encoder (smoke tests) lives in DIR/random_gpt2, one written by
  --mode=pretrain_encoder (encoder.name="pretrained") in DIR/<pretrain.out_dir>."""
  if config.encoder.random.enabled:
    return os.path.join(workdir, "random_gpt2")
  if config.encoder.name == PRETRAINED:
    return os.path.join(workdir, config.pretrain.out_dir)
  return config.encoder.name


def tokenizer_path(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The tokenizer's name or folder; encoder.tokenizer="pretrained": the BPE that pretrain_encoder trained."""
  if config.encoder.tokenizer == PRETRAINED:
    return os.path.join(workdir, config.pretrain.out_dir)
  return config.encoder.tokenizer


def write_random_encoder(config: ml_collections.ConfigDict, path: str, vocab_size: int, eos_id: int) -> None:
  """A random GPT-2 in the Hugging Face layout, written once (tiny configs that need no real weights)."""
  if os.path.exists(os.path.join(path, "model.safetensors")):
    return
  r = config.encoder.random
  cfg = gpt2.GPT2Config(
    vocab_size=vocab_size,
    n_positions=r.n_positions,
    n_embd=r.n_embd,
    n_layer=r.n_layer,
    n_head=r.n_head,
    eos_token_id=eos_id,
  )
  gpt2.save_gpt2(gpt2.GPT2(cfg, rngs=nnx.Rngs(r.seed)), path)


def load_encoder_and_tokenizer(config: ml_collections.ConfigDict, workdir: str, write: bool = True):
  """The frozen encoder and the tokenizer. `write`: a random encoder (encoder.random) is written to DIR when
  absent (training); without it (sampling, evaluation, the API: reading a finished run) it must be there."""
  path = encoder_path(config, workdir)
  random = config.encoder.random.enabled
  if (config.encoder.name == PRETRAINED or (random and not write)) and not os.path.exists(
    os.path.join(path, "model.safetensors")
  ):
    how = (
      "run --mode=pretrain_encoder (or --mode=demo) with this --workdir first"
      if not random
      else "train in this --workdir first (training writes the random encoder)"
    )
    raise FileNotFoundError(f"the encoder of {workdir} is missing: {path} holds no model.safetensors; {how}")
  tokenizer = tok_lib.load_tokenizer(tokenizer_path(config, workdir))
  if random and write:  # Process 0 writes it; the other hosts wait for it before reading it.
    hosts.first_writes(
      "random_encoder", lambda: write_random_encoder(config, path, len(tokenizer), tokenizer.eos_token_id)
    )
  dtype = jnp.dtype(config.encoder.dtype)  # The encoder is frozen: its weights are kept in the compute dtype.
  encoder = gpt2.load_gpt2(path, dtype=dtype, remat=config.encoder.remat, param_dtype=dtype)
  if encoder.cfg.vocab_size < len(tokenizer):
    raise ValueError(
      f"encoder {path!r} has {encoder.cfg.vocab_size} token embeddings but tokenizer "
      f"{tokenizer_path(config, workdir)!r} has {len(tokenizer)} tokens"
    )
  if config.model.seq_len > encoder.cfg.n_positions:
    raise ValueError(f"model.seq_len={config.model.seq_len} exceeds the encoder's {encoder.cfg.n_positions} positions")
  bad = [i for i in config.drift.layers if not 0 <= i <= encoder.cfg.n_layer]
  if bad:
    raise ValueError(f"drift.layers {bad} out of range for an encoder of {encoder.cfg.n_layer} layers")
  return encoder, tokenizer


def mean_token_embedding(encoder: gpt2.GPT2, vocab_size: int) -> jax.Array:
  """Mean of the token embeddings the tokenizer can produce: the generator's output bias at init."""
  return jnp.mean(encoder.wte[...][:vocab_size], axis=0)


def evaluator_path(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The evaluator's hub name or folder; "pretrained": the LM that pretrain_encoder trains for evaluation."""
  if config.eval.evaluator == PRETRAINED:
    return os.path.join(workdir, config.pretrain.evaluator.out_dir)
  return config.eval.evaluator


def load_evaluator(config: ml_collections.ConfigDict, workdir: str, encoder, tokenizer):
  """(evaluator LM, its tokenizer, its name): config.eval.evaluator (hub name, folder, or "pretrained"), or
  the encoder itself when it is empty."""
  e = config.eval
  if not e.evaluator:
    return encoder, tokenizer, encoder_path(config, workdir)
  path = evaluator_path(config, workdir)
  if e.evaluator == PRETRAINED and not os.path.exists(os.path.join(path, "model.safetensors")):
    raise FileNotFoundError(
      f"eval.evaluator='pretrained' but {path} holds no model.safetensors: run --mode=pretrain_encoder (or "
      "--mode=demo) with pretrain.evaluator.enabled=True in this --workdir first"
    )
  evaluator = gpt2.load_gpt2(path)
  eval_tok = tok_lib.load_tokenizer(e.evaluator_tokenizer or path)
  if evaluator.cfg.vocab_size < len(eval_tok):
    raise ValueError(
      f"evaluator {e.evaluator!r} has {evaluator.cfg.vocab_size} token embeddings but its "
      f"tokenizer has {len(eval_tok)} tokens: they do not belong together"
    )
  return evaluator, eval_tok, path
