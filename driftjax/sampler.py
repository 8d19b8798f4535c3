"""Sampling a generator: one forward pass per batch, then decoding; shared by --mode=sample, evaluation, the
demo, training's quick evaluations and the Python API (driftjax.load).

`load` restores a run's EMA generator alone (DIR/config.json's model, the newest checkpoint or a given step):
no optimizer is built and nothing but the EMA parameters is read.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from driftjax import build
from driftjax import checkpoint as ckpt_lib
from driftjax import run_config
from driftjax import train_state
from driftjax.models import decode
from driftjax.models import generator as gen_lib
from driftjax.models import gpt2
from driftjax.models import layout


@functools.lru_cache(maxsize=8)
def _forward(graphdef, enc_graphdef):
  """The jitted generator forward of a graphdef, compiled once per graphdef (and input shape). The encoder is an
  argument (not a constant folded into the program); only a generator with draft_blocks reads it. A generator
  with a slotted layout gives its text's logits (the fillers dropped)."""

  def forward(p, enc_state, noise, style):
    gen, encoder = nnx.merge(graphdef, p), nnx.merge(enc_graphdef, enc_state)
    out = gen(noise, style, gpt2.draft_reader(encoder, gen.cfg.vocab_size))
    if gen.cfg.layout_multiple:  # The text: the layout's non-filler tokens.
      out = layout.collapse_logits(out, gen.cfg.filler, gen.cfg.seq_len, encoder.cfg.eos_token_id)
    return out

  return jax.jit(forward)


def records(ids: np.ndarray, dists: np.ndarray, tokenizer) -> list[dict[str, Any]]:
  """{"text", "token_ids" (up to the first end-of-text), "nn_dist"} per sample."""
  rows = decode.truncate_at_eos(ids, tokenizer.eos_token_id)
  texts = [tokenizer.decode(r) for r in rows]
  # nn_dist: mean distance to the chosen tokens over the sample's own positions (up to end-of-text).
  return [
    {"text": t, "token_ids": r, "nn_dist": float(d[: max(len(r), 1)].mean())} for t, r, d in zip(texts, rows, dists)
  ]


@dataclasses.dataclass
class Sampler:
  """A generator's parameters with what decoding needs: the token table and the tokenizer."""

  graphdef: Any
  params: Any
  gen_cfg: gen_lib.GeneratorConfig
  table: jax.Array  # (V, D): the tokens decoding chooses among.
  tokenizer: Any
  encoder: Any  # The frozen LM: a generator with draft_blocks reads its draft with it; its end-of-text pads a layout's.
  batch: int  # Rows per forward pass.
  metric: str = "l2"  # Nearest-token distance of the embedding head.
  step: int | None = None  # The checkpoint's step, when restored from one.

  def __post_init__(self):  # The encoder as the jitted forward's argument, split once.
    self._enc_graphdef, self._enc_state = nnx.split(self.encoder)

  def generate(
    self, n: int, key: jax.Array, temperature: float = 0.0, top_k: int = 0, metric: str | None = None
  ) -> tuple[np.ndarray, np.ndarray]:
    """(token ids (n, L), nearest-token distances (n, L)). Every pass has min(batch, n) rows (a last, partial
    batch is drawn whole and cut), so repeated calls of the same n reuse one compiled program."""
    if n <= 0:
      raise ValueError(f"need n > 0 samples, got {n}")
    forward = _forward(self.graphdef, self._enc_graphdef)
    batch = min(self.batch, n)
    ids, dists = [], []
    for i in range(0, n, batch):
      k_in, k_dec = jax.random.split(jax.random.fold_in(key, i))
      noise, style = gen_lib.sample_inputs(k_in, batch, self.gen_cfg)
      tok, dist = decode.decode_outputs(
        forward(self.params, self._enc_state, noise, style),
        self.table,
        self.gen_cfg,
        metric=metric or self.metric,
        temperature=temperature,
        top_k=top_k,
        key=k_dec,
      )
      ids.append(np.asarray(tok))
      dists.append(np.asarray(dist))
    return np.concatenate(ids)[:n], np.concatenate(dists)[:n]

  def records(self, n: int, key: jax.Array, **decoding) -> list[dict[str, Any]]:
    return records(*self.generate(n, key, **decoding), self.tokenizer)

  def sample(
    self, n: int, seed: int = 0, temperature: float = 0.0, top_k: int = 0, metric: str | None = None
  ) -> list[str]:
    """n texts, each cut at its first end-of-text. temperature 0 decodes greedily (nearest token, or the argmax
    of a vocabulary head); T > 0 samples at T, among the top_k when top_k > 0. Same seed, same texts."""
    return [
      r["text"] for r in self.records(n, jax.random.key(seed), temperature=temperature, top_k=top_k, metric=metric)
    ]


def from_params(
  config: ml_collections.ConfigDict,
  graphdef,
  params,
  gen_cfg,
  encoder,
  tokenizer,
  step: int | None = None,
  batch: int | None = None,
) -> Sampler:
  """A Sampler of given generator parameters (training's state, a fresh init); batch: config.sample's."""
  return Sampler(
    graphdef=graphdef,
    params=params,
    gen_cfg=gen_cfg,
    table=encoder.wte[...][: len(tokenizer)],
    tokenizer=tokenizer,
    encoder=encoder,
    batch=batch or config.sample.batch,
    metric=config.sample.metric,
    step=step,
  )


def load(
  config: ml_collections.ConfigDict, workdir: str, step: int | None = None, encoder=None, tokenizer=None
) -> Sampler:
  """The EMA generator of DIR's newest checkpoint (or `step`); errors name what is missing. Reads only."""
  ckpt_lib.require_checkpoints(workdir)  # restore() checks too; here it fails before the encoder is loaded.
  if encoder is None:
    encoder, tokenizer = build.load_encoder_and_tokenizer(config, workdir, write=False)
  spec = train_state.generator_spec(config, encoder, tokenizer)
  train_state.check_model(workdir, spec.cfg, write=False)
  restored, step = ckpt_lib.restore(workdir, {"ema": spec.abstract_params}, step)
  return from_params(config, spec.graphdef, restored["ema"], spec.cfg.gen, encoder, tokenizer, step)


def load_run(run_dir: str, step: int | None = None) -> Sampler:
  """driftjax.load: a run folder's own config (DIR/config.json) and its EMA generator."""
  run_dir = os.path.abspath(run_dir)
  return load(run_config.load(run_dir), run_dir, step)
