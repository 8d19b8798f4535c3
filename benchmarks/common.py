"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from flax import nnx


def load_config(path: str):
  """get_config() of a config file given by its path (as --config= takes it)."""
  import importlib.util

  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path} does not exist")
  spec = importlib.util.spec_from_file_location("benchmark_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def timed(fn, *args, reps: int) -> float:
  """Median wall time of fn(*args) over `reps` calls, after one warm-up call (compilation)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def random_pretrained_encoder(config, workdir: str) -> None:
  """For configs with encoder.name="pretrained": a random LM of the pretrained one's shape and a BPE trained on
  2,000 grammar stories, in DIR/<pretrain.out_dir> (step costs do not depend on the weights)."""
  from driftjax import pretrain
  from driftjax.data import synthetic
  from driftjax.models import gpt2

  p = config.pretrain
  out = os.path.join(workdir, p.out_dir)
  tok = pretrain.train_bpe(synthetic.generate_stories(2000, 0), p.bpe_vocab_size, out)
  cfg = gpt2.GPT2Config(
    vocab_size=len(tok),
    n_positions=p.seq_len + 1,
    n_embd=p.n_embd,
    n_layer=p.n_layer,
    n_head=p.n_head,
    eos_token_id=tok.eos_token_id,
  )
  gpt2.save_gpt2(gpt2.GPT2(cfg, rngs=nnx.Rngs(0)), out)
