"""--mode=sample: one forward pass of the EMA generator per batch, nearest-token decoding, a JSONL of samples.

Writes DIR/samples/step_<step>.jsonl (one {"text", "token_ids", "nn_dist"} per sample, token_ids up to the
first end-of-text) and prints a few. The checkpoint is DIR's latest, or config.sample.step.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from driftjax import build
from driftjax import checkpoint as ckpt_lib
from driftjax import files
from driftjax import train
from driftjax.models import decode
from driftjax.models import generator as gen_lib


def restore_params(config: ml_collections.ConfigDict, workdir: str, spec: train.StateSpec,
                   step: int | None = None, use_ema: bool = True):
  """(params, step) of a checkpoint in DIR/checkpoints: the latest, or `step`. Errors say what is missing."""
  directory = ckpt_lib.require_checkpoints(workdir)
  ckpt_lib.check_model(workdir, train.model_signature(spec.cfg), write=False)
  mngr = ckpt_lib.make_manager(workdir, read_only=True)
  steps = mngr.all_steps()
  if not steps:
    raise FileNotFoundError(f"no checkpoints in {directory}: train first (--mode=train)")
  if step is None or step < 0:
    step = max(steps)
  elif step not in steps:
    raise FileNotFoundError(f"no checkpoint for step {step} in {directory} (have {sorted(steps)})")
  try:
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(spec.abstract())))
  except Exception as e:
    raise ValueError(f"checkpoint step {step} in {directory} could not be read for this config "
                     f"({type(e).__name__}: {e})") from e
  state = restored["state"]
  return (state["ema"] if use_ema else state["params"]), step


@functools.lru_cache(maxsize=8)
def _forward(graphdef):
  """The jitted generator forward of a graphdef, compiled once per graphdef (and input shape)."""
  return jax.jit(lambda p, noise, style: nnx.merge(graphdef, p)(noise, style))


def generate(graphdef, params, gen_cfg: gen_lib.GeneratorConfig, table: jax.Array, n: int, batch: int,
             key: jax.Array, *, metric: str = "l2", temperature: float = 0.0, top_k: int = 0):
  """(token ids (n, L), nearest-token distances (n, L)): one generator forward pass per batch.

  Every pass has min(batch, n) rows (a last, partial batch is drawn whole and cut), so repeated calls with the
  same n and batch reuse one compiled program.
  """
  if n <= 0 or batch <= 0:
    raise ValueError(f"need n > 0 samples and batch > 0, got n={n}, batch={batch}")
  forward = _forward(graphdef)
  batch = min(batch, n)
  ids, dists = [], []
  for i in range(0, n, batch):
    k_in, k_dec = jax.random.split(jax.random.fold_in(key, i))
    noise, style = gen_lib.sample_inputs(k_in, batch, gen_cfg)
    tok, dist = decode.decode_outputs(forward(params, noise, style), table, gen_cfg, metric=metric,
                                      temperature=temperature, top_k=top_k, key=k_dec)
    ids.append(np.asarray(tok))
    dists.append(np.asarray(dist))
  return np.concatenate(ids)[:n], np.concatenate(dists)[:n]


def records(ids: np.ndarray, dists: np.ndarray, tokenizer) -> list[dict[str, Any]]:
  eos = tokenizer.eos_token_id
  rows = decode.truncate_at_eos(ids, eos)
  texts = [tokenizer.decode(r) for r in rows]
  # nn_dist: mean distance to the chosen tokens over the sample's own positions (up to end-of-text).
  return [{"text": t, "token_ids": r, "nn_dist": float(d[: max(len(r), 1)].mean())}
          for t, r, d in zip(texts, rows, dists)]


def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes DIR/samples/step_<step>.jsonl and returns its path."""
  s = config.sample
  ckpt_lib.require_checkpoints(workdir)
  encoder, tokenizer = build.load_encoder_and_tokenizer(config, workdir, write=False)
  spec = train.state_spec(config, encoder, tokenizer)
  params, step = restore_params(config, workdir, spec, s.step)
  table = encoder.wte[...][: len(tokenizer)]
  ids, dists = generate(spec.graphdef, params, spec.cfg.gen, table, s.n_samples, s.batch,
                        jax.random.key(s.seed), metric=s.metric, temperature=s.temperature, top_k=s.top_k)
  rows = records(ids, dists, tokenizer)
  path = os.path.join(workdir, "samples", f"step_{step}.jsonl")
  files.atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))
  logging.info("wrote %d samples of step %d to %s", len(rows), step, path)
  for r in rows[: s.print_samples]:
    print(json.dumps(r["text"]))
  return path
