"""--mode=sample: the EMA generator of a run, one forward pass per batch, decoded, written as JSON lines.

Writes DIR/samples/step_<step>.jsonl (one {"text", "token_ids", "nn_dist"} per sample, token_ids up to the
first end-of-text) and prints a few. The checkpoint is DIR's newest, or config.sample.step.
"""

from __future__ import annotations

import json
import os

from absl import logging
import jax
import ml_collections

from driftjax import files
from driftjax import hosts
from driftjax import sampler as sampler_lib


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes DIR/samples/step_<step>.jsonl and returns its path."""
  s = config.sample
  gen = sampler_lib.load(config, workdir, s.step)
  rows = gen.records(s.n_samples, jax.random.key(s.seed), temperature=s.temperature, top_k=s.top_k)
  path = os.path.join(workdir, "samples", f"step_{gen.step}.jsonl")
  hosts.first_writes("samples", lambda: files.atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows)))
  logging.info("wrote %d samples of step %d to %s", len(rows), gen.step, path)
  for r in rows[: s.print_samples]:
    print(json.dumps(r["text"]))
  return path
