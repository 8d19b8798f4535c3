"""--mode=describe: sizes and an estimate of training FLOPs per step, without allocating any model."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
from flax import nnx

from driftjax import build
from driftjax.models import generator as gen_lib
from driftjax.models import gpt2

# Architectures of the public GPT-2 checkpoints (Radford et al. 2019), so that describe needs no hub.
KNOWN_GPT2 = {
    "gpt2": dict(n_layer=12, n_embd=768, n_head=12),
    "gpt2-medium": dict(n_layer=24, n_embd=1024, n_head=16),
    "gpt2-large": dict(n_layer=36, n_embd=1280, n_head=20),
    "gpt2-xl": dict(n_layer=48, n_embd=1600, n_head=25),
}


def encoder_config(name: str) -> gpt2.GPT2Config:
  """The encoder's architecture from a local folder's config.json or the table of public checkpoints."""
  if os.path.isdir(name):
    return gpt2.load_config(name)
  base = name.removeprefix("openai-community/")
  if base in KNOWN_GPT2:
    return gpt2.GPT2Config(**KNOWN_GPT2[base])
  raise ValueError(f"describe: unknown encoder {name!r}; pass a local folder or one of {sorted(KNOWN_GPT2)}")


def count_params(make) -> int:
  abstract = nnx.eval_shape(make)
  return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def feature_subgroups(poolings, seq_len: int) -> dict[str, int]:
  """Sub-groups per sample of each pooling (positions, windows, or 1)."""
  sizes = {"pos": seq_len, "win4_mean": seq_len // 4, "win4_std": seq_len // 4,
           "win16_mean": seq_len // 16, "win16_std": seq_len // 16}
  return {p: sizes.get(p, 1) for p in poolings}


def train_flops(config, gen_cfg, enc_cfg, gen_params, enc_params) -> dict[str, float]:
  """Matmul FLOPs of one training step (2 per multiply-add), by part.

  Generator: forward + backward = 3x forward. Encoder on generated text: forward + backward to the inputs
  only (no weight gradients) = 2x forward. Encoder on real text: forward. Field (no gradient): distances
  and one weighted sum per temperature, over N x (N + M) pairs of every sub-group of every feature key.
  """
  d = config.data
  length = gen_cfg.seq_len
  n_gen, n_pos = d.groups * d.n_gen, d.groups * d.n_pos
  depth = max(config.drift.layers, default=0)
  enc_block = 12 * enc_cfg.n_embd ** 2 + 2 * enc_cfg.n_embd * (enc_cfg.inner - 4 * enc_cfg.n_embd)
  enc_fwd_token = 2 * depth * enc_block + 4 * depth * length * enc_cfg.n_embd  # Weights + attention.
  gen_matmul = gen_params - gen_cfg.seq_len * gen_cfg.width - gen_cfg.style_codebook * gen_cfg.width
  gen_fwd_token = 2 * gen_matmul + 4 * gen_cfg.depth * length * gen_cfg.width
  n_keys = len(config.drift.layers) + int(config.drift.raw)
  subgroups = feature_subgroups(config.drift.poolings, length)
  n_temps = len(config.drift.temperatures)
  field = 0.0
  for pool, p in subgroups.items():
    width = enc_cfg.n_embd * (2 if pool == "mean_std_concat" else 32 if pool == "flat32" else 1)
    field += d.groups * p * d.n_gen * (d.n_gen + d.n_pos) * width * 2 * (1 + n_temps)
  parts = {
      "generator": 3.0 * gen_fwd_token * n_gen * length,
      "encoder_generated": 2.0 * enc_fwd_token * n_gen * length,
      "encoder_real": 1.0 * enc_fwd_token * n_pos * length,
      "field": float(field * n_keys),
  }
  parts["total"] = sum(parts.values())
  return parts


def describe(config: ml_collections.ConfigDict) -> dict:
  enc_cfg = encoder_config(config.encoder.name)
  gen_cfg = build.generator_config(config, enc_cfg.n_embd, enc_cfg.vocab_size)
  if gen_cfg.seq_len > enc_cfg.n_positions:
    raise ValueError(f"model.seq_len={gen_cfg.seq_len} exceeds the encoder's {enc_cfg.n_positions} positions")
  gen_params = count_params(lambda: gen_lib.Generator(gen_cfg, rngs=nnx.Rngs(0)))
  enc_params = count_params(lambda: gpt2.GPT2(enc_cfg, rngs=nnx.Rngs(0)))
  flops = train_flops(config, gen_cfg, enc_cfg, gen_params, enc_params)
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
      "feature_keys": len(config.drift.layers) + int(config.drift.raw),
      "poolings": list(config.drift.poolings),
      "train_flops_per_step": flops["total"],
      "train_flops_by_part": {k: v for k, v in flops.items() if k != "total"},
  }


def run(config: ml_collections.ConfigDict) -> None:
  print(json.dumps(describe(config), indent=2))
