"""Ablations of the demo's choices (docs/demo.md): which field, features and output head move text toward data.

python benchmarks/demo_ablations.py --workdir=runs/demo [--kind=particles|generator] [--steps=N] [--only="a;b"]
Needs DIR/encoder from a demo run (--mode=pretrain_encoder or --mode=demo with configs/demo.py).

- particles: no generator. 32 free sequences of logits are optimized directly (Adam, lr 0.1) with the drift loss
  against fresh real stories each step: what the objective itself can reach, in seconds per variant.
- generator: the demo's generator trained for --steps steps with each variant.
Each row: gen-PPL under the demo's LM, grammatical_rate, distinct-2 over the set, and the share of samples
agreeing on the token at each position (mean over positions; real stories: see the `data` row).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import demo as demo_config  # noqa: E402
from driftjax import text_metrics  # noqa: E402
from driftjax import build  # noqa: E402
from driftjax import sampler as sampler_lib  # noqa: E402
from driftjax import train  # noqa: E402
from driftjax import train_step as step_lib  # noqa: E402
from driftjax.drift import losses as losses_lib  # noqa: E402
from driftjax.data import synthetic  # noqa: E402
from driftjax.models import decode  # noqa: E402
from driftjax.models import generator as gen_lib  # noqa: E402

ALL_POOLS = ("pos", "mean", "std", "win4_mean", "win16_mean")
# name -> config overrides on top of configs/demo.py.
VARIANTS = {
  "demo (flat kernel, straight-through)": {},
  "flat, soft expected embedding": {"model.vocab_mode": "soft"},
  "flat, embedding head (paper's output)": {"model.head": "embedding"},
  "per-position + global poolings": {"drift.poolings": ALL_POOLS},
  "per-position only": {"drift.poolings": ("pos",)},
  "per-position, soft": {"drift.poolings": ("pos",), "model.vocab_mode": "soft"},
  "flat + per-position + global": {"drift.poolings": ("flat",) + ALL_POOLS},
  "flat, T=(0.02,)": {"drift.temperatures": (0.02,)},
  "flat, T=(0.2,)": {"drift.temperatures": (0.2,)},
  "flat, T=(0.05, 0.2, 0.5)": {"drift.temperatures": (0.05, 0.2, 0.5)},
  "flat, port softmax double_floor": {"drift.softmax": "double_floor"},
  "flat, port softmax cols": {"drift.softmax": "cols"},
  "flat, no drift normalization": {"drift.drift_norm": "none"},
  "flat, temperatures in feature units": {"drift.temperature_units": "feature"},
  "flat, raw embeddings only": {"drift.layers": ()},
  "flat, last layer only, no raw": {"drift.layers": (2,), "drift.raw": False},
  "flat, 128 positives": {"data.n_pos": 128},
  "flat, queue 64": {"data.queue_size": 64},
}


def set_path(config, path: str, value) -> None:
  node = config
  for part in path.split(".")[:-1]:
    node = node[part]
  node[path.split(".")[-1]] = value


def scores(ids: np.ndarray, trainer) -> dict[str, float]:
  rows = decode.truncate_at_eos(ids, trainer.tokenizer.eos_token_id)
  texts = [trainer.tokenizer.decode(r) for r in rows]
  agree = np.mean([np.bincount(ids[:, p]).max() / len(ids) for p in range(ids.shape[1])])
  return {
    "gen_ppl": text_metrics.gen_ppl(trainer.encoder, trainer.tokenizer, texts),
    "grammatical_rate": float(np.mean([synthetic.grammatical_rate(t) for t in texts])),
    "distinct_2": text_metrics.distinct_n(rows, 2),
    "agree": float(agree),
  }


def run_particles(trainer, steps: int, n: int = 32, lr: float = 0.1) -> np.ndarray:
  cfg, enc = trainer.cfg, trainer.encoder
  table = enc.wte[...][: len(trainer.tokenizer)]
  width = table.shape[0] if cfg.gen.head == "vocab" else table.shape[1]
  x = jax.random.normal(jax.random.key(0), (n, cfg.gen.seq_len, width))
  if cfg.gen.head == "embedding":  # Start at random tokens' embeddings.
    x = table[jax.random.randint(jax.random.key(0), x.shape[:2], 0, table.shape[0])]
  tx = optax.adam(lr)
  opt = tx.init(x)

  @jax.jit
  def step(x, opt, real):
    pos = jax.lax.stop_gradient(step_lib.feature_dict(enc, None, real, cfg))

    def loss_fn(x):
      emb = gen_lib.to_embeddings(x, table, cfg.gen)
      return losses_lib.drift_losses(
        step_lib.feature_dict(enc, emb, None, cfg), pos, jnp.ones((1, cfg.n_pos)), cfg.groups, cfg.field
      )[0]

    grads = jax.grad(loss_fn)(x)
    updates, opt = tx.update(grads, opt)
    return optax.apply_updates(x, updates), opt

  for _ in range(steps):
    x, opt = step(x, opt, trainer.next_batch())
  return np.asarray(decode.decode_outputs(x, table, cfg.gen)[0])


def run_generator(trainer, steps: int, n: int = 64) -> np.ndarray:
  state = trainer.init_state()
  for _ in range(steps):
    state, _ = trainer.step_fn(state, trainer.next_batch(), trainer.enc_state)
  gen = sampler_lib.Sampler(
    graphdef=trainer.graphdef,
    params=state["ema"],
    gen_cfg=trainer.cfg.gen,
    table=trainer.encoder.wte[...][: len(trainer.tokenizer)],
    tokenizer=trainer.tokenizer,
    batch=n,
  )
  return gen.generate(n, jax.random.key(1))[0]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True, help="a demo workdir holding encoder/")
  parser.add_argument("--kind", default="particles", choices=("particles", "generator"))
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--only", default="", help="variant names separated by ; (default: all)")
  args = parser.parse_args()
  names = [n for n in VARIANTS if not args.only or n in args.only.split(";")]
  print(f"{args.kind}, {args.steps} steps, {jax.devices()[0].device_kind}")
  print("| variant | gen_ppl | grammatical_rate | distinct_2 | agree | seconds |\n|---|---|---|---|---|---|")
  first = None
  for name in names:
    config = demo_config.get_config()
    for path, value in VARIANTS[name].items():
      set_path(config, path, value)
    config.train.eval_every = 0
    trainer = train.setup(config, args.workdir)
    if first is None:  # The data row: held-out stories, the same way.
      first = trainer
      r = scores(build.corpus(config).heldout_rows(trainer.tokenizer, 64), trainer)
      print(
        f"| data (held-out stories) | {r['gen_ppl']:.3g} | {r['grammatical_rate']:.3f} | "
        f"{r['distinct_2']:.3f} | {r['agree']:.3f} | |",
        flush=True,
      )
    t0 = time.time()
    ids = (run_particles if args.kind == "particles" else run_generator)(trainer, args.steps)
    r = scores(ids, trainer)
    print(
      f"| {name} | {r['gen_ppl']:.3g} | {r['grammatical_rate']:.3f} | {r['distinct_2']:.3f} | "
      f"{r['agree']:.3f} | {time.time() - t0:.0f} |",
      flush=True,
    )


if __name__ == "__main__":
  main()
