"""Cost of the drift field, and where a training step's time goes.

python benchmarks/field.py [--reps=5] [--config=configs/demo.py]
1. The field (forward + backward of drift_loss, paper settings, one group) as generated samples N, positives M,
   feature width C and the number of feature keys grow: median time, compiled scratch memory, and time divided
   by N (N + M) C (roughly constant where the expected O(N (N + M) C) cost holds).
2. One training step of --config split into its parts, each jitted and timed alone (median): generator forward
   + backward, encoder on real rows, encoder on generated rows forward + backward, the field on the features.
   The config's encoder is replaced by a random GPT-2 of the same shape (costs do not depend on the weights).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from benchmarks.common import timed  # noqa: E402
from driftjax import train  # noqa: E402
from driftjax import train_step as step_lib  # noqa: E402
from driftjax.drift import field as field_lib  # noqa: E402
from driftjax.drift import losses as losses_lib  # noqa: E402
from driftjax.models import generator as gen_lib  # noqa: E402


def field_scaling(reps: int) -> None:
  cfg = field_lib.FieldConfig()

  def loss(xs, ys):  # K keys of (1, N, C) / (1, M, C), vmapped as the training step does.
    return jnp.sum(jax.vmap(lambda x, y: field_lib.drift_loss(x, y, config=cfg)[0])(xs, ys))

  grad = jax.jit(jax.value_and_grad(loss))
  print("| N | M | C | keys | time (ms) | scratch (MB) | ns / (keys N (N+M) C) |\n|---|---|---|---|---|---|---|")
  grid = [(n, n, 256, 1) for n in (32, 64, 128, 256, 512, 1024, 2048)] + [(64, m, 256, 1) for m in (256, 1024)]
  grid += [(64, 64, c, 1) for c in (1024, 4096, 16384)] + [(64, 64, 256, k) for k in (4, 16, 64)]
  for n, m, c, k in grid:
    xs = jax.random.normal(jax.random.key(0), (k, 1, n, c))
    ys = jax.random.normal(jax.random.key(1), (k, 1, m, c))
    t = timed(grad, xs, ys, reps=reps)
    mem = grad.lower(xs, ys).compile().memory_analysis()
    scratch = getattr(mem, "temp_size_in_bytes", 0) / 1e6 if mem is not None else float("nan")
    print(
      f"| {n} | {m} | {c} | {k} | {t * 1e3:.2f} | {scratch:.1f} | {t * 1e9 / (k * n * (n + m) * c):.3f} |", flush=True
    )


def step_parts(config_path: str, reps: int) -> None:
  config = common.load_config(config_path)
  workdir = tempfile.mkdtemp()
  if config.encoder.name == "pretrained":
    common.random_pretrained_encoder(config, workdir)
  trainer = train.setup(config, workdir)
  c, enc = trainer.cfg, trainer.encoder
  state = trainer.init_state()
  real = trainer.next_batch()
  table = enc.wte[...][: c.gen.vocab_size]
  noise, style = gen_lib.sample_inputs(jax.random.key(0), c.groups * c.n_gen, c.gen)
  gen = nnx.merge(trainer.graphdef, state["params"])
  emb = gen_lib.to_embeddings(gen(noise, style), table, c.gen)
  pos_feats = step_lib.feature_dict(enc, None, real, c)
  gen_feats = step_lib.feature_dict(enc, emb, None, c)
  w = jnp.ones((c.groups, c.n_pos))

  parts = {
    "generator fwd+bwd": (
      jax.jit(
        jax.grad(lambda p: jnp.sum(gen_lib.to_embeddings(nnx.merge(trainer.graphdef, p)(noise, style), table, c.gen)))
      ),
      state["params"],
    ),
    "encoder on real rows": (jax.jit(lambda r: step_lib.feature_dict(enc, None, r, c)), real),
    "encoder on generated fwd+bwd": (
      jax.jit(jax.grad(lambda e: sum(jnp.sum(v) for v in step_lib.feature_dict(enc, e, None, c).values()))),
      emb,
    ),
    "field fwd+bwd": (
      jax.jit(jax.grad(lambda g: losses_lib.drift_losses(g, pos_feats, w, c.groups, c.field)[0])),
      gen_feats,
    ),
  }
  carry = {"state": trainer.init_state()}  # The step donates its state: thread it through the calls.

  def whole_step(batch):
    carry["state"], metrics = trainer.step_fn(carry["state"], batch, trainer.enc_state)
    return metrics

  whole = timed(whole_step, real, reps=reps)
  print(f"\n{config_path}: whole step {whole * 1e3:.1f} ms (median of {reps})")
  print("| part | time (ms) | share of the step |\n|---|---|---|")
  for name, (fn, arg) in parts.items():
    t = timed(fn, arg, reps=reps)
    print(f"| {name} | {t * 1e3:.1f} | {t / whole:.0%} |", flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument("--parts_only", action="store_true", help="skip the field scaling table")
  args = parser.parse_args()
  print(f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores")
  if not args.parts_only:
    field_scaling(args.reps)
  step_parts(args.config, args.reps)


if __name__ == "__main__":
  main()
