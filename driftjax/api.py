"""The Python API, for people who want text rather than a command line.

    import driftjax
    gen = driftjax.load("runs/demo")          # a run folder: its config.json, newest checkpoint, tokenizer
    print(gen.sample(4, seed=0, temperature=0.0))

`load` reads the run's own DIR/config.json, its encoder's token table and tokenizer, and the EMA generator of
its newest checkpoint (or `step`). `sample` runs one generator forward pass per batch of
`config.sample.batch`; its programs are compiled on the first call and reused by later calls of the same n.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax

from driftjax import build
from driftjax import checkpoint as ckpt_lib
from driftjax import run_config
from driftjax import sample as sample_lib
from driftjax import train


@dataclasses.dataclass
class TextGenerator:
  """A trained run's EMA generator with its tokenizer, ready to sample."""
  config: Any
  step: int
  graphdef: Any
  params: Any
  gen_cfg: Any
  table: jax.Array
  tokenizer: Any

  def sample(self, n: int, seed: int = 0, temperature: float = 0.0, top_k: int = 0,
             metric: str | None = None) -> list[str]:
    """n texts, each cut at its first end-of-text. temperature 0 decodes greedily (nearest token, or the
    argmax of a vocabulary head); T > 0 samples at T, among the top_k when top_k > 0. Same seed, same texts."""
    if n <= 0:
      raise ValueError(f"n must be positive, got {n}")
    s = self.config.sample
    ids, dists = sample_lib.generate(self.graphdef, self.params, self.gen_cfg, self.table, n, s.batch,
                                     jax.random.key(seed), metric=metric or s.metric, temperature=temperature,
                                     top_k=top_k)
    return [r["text"] for r in sample_lib.records(ids, dists, self.tokenizer)]


def load(run_dir: str, step: int | None = None) -> TextGenerator:
  """The EMA generator of a run folder (written by --mode=train or --mode=demo): the newest checkpoint, or
  `step`. A folder that is not a run, or a run without checkpoints, is an error naming what is missing."""
  run_dir = os.path.abspath(run_dir)
  config = run_config.load(run_dir)
  ckpt_lib.require_checkpoints(run_dir)
  encoder, tokenizer = build.load_encoder_and_tokenizer(config, run_dir, write=False)
  spec = train.state_spec(config, encoder, tokenizer)
  params, step = sample_lib.restore_params(config, run_dir, spec, step)
  return TextGenerator(config=config, step=step, graphdef=spec.graphdef, params=params, gen_cfg=spec.cfg.gen,
                       table=encoder.wte[...][: len(tokenizer)], tokenizer=tokenizer)
