"""--mode=describe: sizes and an estimate of training FLOPs per step, without allocating any model."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from driftjax import build
from driftjax import train_state
from driftjax import train_step as step_lib
from driftjax.models import generator as gen_lib
from driftjax.models import gpt2

# Architectures of the public GPT-2 checkpoints (Radford et al. 2019), so that describe needs no hub.
KNOWN_GPT2 = {
  "gpt2": dict(n_layer=12, n_embd=768, n_head=12),
  "gpt2-medium": dict(n_layer=24, n_embd=1024, n_head=16),
  "gpt2-large": dict(n_layer=36, n_embd=1280, n_head=20),
  "gpt2-xl": dict(n_layer=48, n_embd=1600, n_head=25),
}


def encoder_config(config: ml_collections.ConfigDict, workdir: str | None = None) -> gpt2.GPT2Config:
  """The encoder's architecture without its weights: a random encoder's settings, the pretrained one's folder
  (or, before pretraining, config.pretrain's shape), a local folder's config.json, or a public checkpoint."""
  e, vocab = config.encoder, gpt2.GPT2Config().vocab_size
  if e.random.enabled:
    r = e.random
    return gpt2.GPT2Config(
      vocab_size=vocab, n_positions=r.n_positions, n_embd=r.n_embd, n_layer=r.n_layer, n_head=r.n_head
    )
  if e.name == build.PRETRAINED:
    folder = build.encoder_path(config, workdir) if workdir else ""
    if folder and os.path.isdir(folder):
      return gpt2.load_config(folder)
    p = config.pretrain
    return gpt2.GPT2Config(
      vocab_size=p.bpe_vocab_size or vocab,
      n_positions=p.seq_len + 1,
      n_embd=p.n_embd,
      n_layer=p.n_layer,
      n_head=p.n_head,
    )
  if os.path.isdir(e.name):
    return gpt2.load_config(e.name)
  base = e.name.removeprefix("openai-community/")
  if base in KNOWN_GPT2:
    return gpt2.GPT2Config(**KNOWN_GPT2[base])
  raise ValueError(f"describe: unknown encoder {e.name!r}; pass a local folder or one of {sorted(KNOWN_GPT2)}")


def count_params(make) -> int:
  abstract = nnx.eval_shape(make)
  return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def feature_shapes(config: ml_collections.ConfigDict, enc_cfg: gpt2.GPT2Config) -> dict[str, tuple[int, ...]]:
  """{key: (P, C)} of one sample's drift features, from jax.eval_shape of the step's own feature function."""
  cfg = train_state.step_config(config, enc_cfg.n_embd, enc_cfg.vocab_size)
  graphdef, state = nnx.split(nnx.eval_shape(lambda: gpt2.GPT2(enc_cfg, rngs=nnx.Rngs(0))))
  ids = jax.ShapeDtypeStruct((1, config.model.seq_len), jnp.int32)
  shapes = jax.eval_shape(lambda st, x: step_lib.feature_dict(nnx.merge(graphdef, st), None, x, cfg), state, ids)
  return {k: tuple(v.shape[1:]) for k, v in shapes.items()}


def field_flops(config: ml_collections.ConfigDict, shapes: dict[str, tuple[int, ...]]) -> float:
  """Matmul FLOPs of the fields over all keys: distances of width C and one weighted sum per temperature. Data
  positives: N x (N + M) per group and pooled index (M = fresh real rows + the queue's); continuation positives:
  each sample against its own M continuations and its group's N samples ("own" kernel), or N x (N + N M)
  ("batch"). The teacher loss's per-position kernel over the LM's candidates is not counted."""
  d, dr = config.data, config.drift
  sources = dr.positives.split("+")
  pairs = 0  # Distances per group, pooled index and channel.
  if "data" in sources:
    pairs += d.n_gen * (d.n_gen + d.n_pos + d.queue_size)
  if "continuation" in sources:
    m = dr.continuation_samples
    pairs += d.n_gen * (m + d.n_gen) if dr.continuation_kernel == "own" else d.n_gen * (d.n_gen + d.n_gen * m)
  n_temps = len(dr.temperatures)
  return float(sum(d.groups * p * pairs * c * 2 * (1 + n_temps) for p, c in shapes.values()))


def train_flops(config, gen_cfg, enc_cfg, gen_params, shapes) -> dict[str, float]:
  """Matmul FLOPs of one training step (2 per multiply-add), by part.

  Generator: forward + backward = 3x forward. Encoder on generated text (its feature layers): forward + backward
  to the inputs only (no weight gradients) = 2x forward. Encoder on real text (data positives only: fresh rows
  and the queue's, re-encoded every step): forward. The whole LM with its output head: once over the samples for
  the teacher's candidates (teacher positives, "resample" continuations), and over every continuation row for
  the LM's continuations (a KV-cached pass reads each token once), whose features the encoder then takes.
  Field (no gradient): field_flops. Not counted: the cross-entropies and the pooled bag (no matmuls).
  """
  d, dr = config.data, config.drift
  sources = dr.positives.split("+")
  length = gen_cfg.seq_len
  n_gen = d.groups * d.n_gen
  n_real = d.groups * (d.n_pos + d.queue_size) if "data" in sources else 0
  depth = max(dr.layers, default=0)
  enc_block = 12 * enc_cfg.n_embd**2 + 2 * enc_cfg.n_embd * (enc_cfg.inner - 4 * enc_cfg.n_embd)
  enc_fwd_token = 2 * depth * enc_block + 4 * depth * length * enc_cfg.n_embd  # Weights + attention.
  lm_fwd_token = (
    2 * enc_cfg.n_layer * enc_block
    + 4 * enc_cfg.n_layer * length * enc_cfg.n_embd
    + 2 * enc_cfg.n_embd * enc_cfg.vocab_size
  )
  positions = gen_cfg.positions  # The generator's: seq_len, or its slotted layout's.
  gen_matmul = gen_params - positions * gen_cfg.width - gen_cfg.style_codebook * gen_cfg.width
  gen_fwd_token = 2 * gen_matmul + 4 * gen_cfg.depth * positions * gen_cfg.width
  continuing = "continuation" in sources
  candidates = "teacher" in sources or (continuing and dr.continuation_policy == "resample")
  cont_rows = n_gen * train_state.step_config(config, enc_cfg.n_embd, enc_cfg.vocab_size).continuation_rows
  cont_rows = cont_rows if continuing else 0
  lm_passes = cont_rows * (dr.continuation_policy != "resample") + cont_rows * (
    dr.continuation_ce_target == "likeliest"
  )
  parts = {
    "generator": 3.0 * gen_fwd_token * n_gen * positions,
    "encoder_generated": 2.0 * enc_fwd_token * n_gen * length,
    "encoder_real": 1.0 * enc_fwd_token * n_real * length,
    "lm_candidates": 1.0 * lm_fwd_token * n_gen * length * candidates,
    "lm_continuations": 1.0 * lm_fwd_token * lm_passes * length,
    "encoder_continuations": 1.0 * enc_fwd_token * cont_rows * length,
    "field": field_flops(config, shapes),
  }
  parts["total"] = sum(parts.values())
  return parts


def describe(config: ml_collections.ConfigDict, workdir: str | None = None) -> dict:
  enc_cfg = encoder_config(config, workdir)
  gen_cfg = build.generator_config(config, enc_cfg.n_embd, enc_cfg.vocab_size)
  if gen_cfg.seq_len > enc_cfg.n_positions:
    raise ValueError(f"model.seq_len={gen_cfg.seq_len} exceeds the encoder's {enc_cfg.n_positions} positions")
  gen_params = count_params(lambda: gen_lib.Generator(gen_cfg, rngs=nnx.Rngs(0)))
  enc_params = count_params(lambda: gpt2.GPT2(enc_cfg, rngs=nnx.Rngs(0)))
  shapes = feature_shapes(config, enc_cfg)
  flops = train_flops(config, gen_cfg, enc_cfg, gen_params, shapes)
  d = config.data
  return {
    "generator_params": gen_params,
    "encoder_params": enc_params,
    "encoder": config.encoder.name,
    "encoder_layers": enc_cfg.n_layer,
    "seq_len": gen_cfg.seq_len,
    "groups": d.groups,
    "n_gen": d.n_gen,
    "n_pos": d.n_pos,
    "global_batch": d.groups * (d.n_gen + d.n_pos),
    "feature_keys": len(shapes),
    "feature_shapes": {k: list(v) for k, v in shapes.items()},
    "poolings": list(config.drift.poolings),
    "train_flops_per_step": flops["total"],
    "train_flops_by_part": {k: v for k, v in flops.items() if k != "total"},
  }


def run(config: ml_collections.ConfigDict, workdir: str | None = None) -> None:
  """Prints sizes and FLOPs; writes nothing (workdir: where a pretrained encoder would be)."""
  print(json.dumps(describe(config, workdir), indent=2))
