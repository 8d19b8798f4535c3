"""One-step generation vs KV-cached autoregressive sampling, at the same size and length, batch 1 and 64.

    .venv/bin/python benchmarks/sampling.py [--config=configs/default.py] [--reps=3]

One step: the generator of the config (default: the seed's 130M DiT) maps noise to 256 embeddings in one
forward pass, then nearest-token decoding over GPT-2's 50,257-token table. Autoregressive: a GPT-2 of the same
size (GPT-2 small, 124M) samples 256 tokens one at a time with a KV cache (driftjax.models.gpt2.sample_ar).
Both use random weights (speed does not depend on them) and compute in model.dtype. Prints samples/s and
tokens/s, the ratio last.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import common  # noqa: E402
from driftjax import build  # noqa: E402
from driftjax.models import decode  # noqa: E402
from driftjax.models import generator as gen_lib  # noqa: E402
from driftjax.models import gpt2  # noqa: E402


def measure(config, batches, reps: int, log=print) -> dict[int, dict[str, float]]:
  """{batch: {"one_step_s", "ar_s", "ratio"}}: median seconds per batch of each way at the config's size.

  Both models compute in config.model.dtype (shared with benchmarks/device_check.py).
  """
  lm_cfg = gpt2.GPT2Config(n_layer=config.model.depth, n_embd=config.model.width, n_head=config.model.heads)
  lm = gpt2.GPT2(lm_cfg, rngs=nnx.Rngs(0), dtype=jnp.dtype(config.model.dtype))
  gen_cfg = build.generator_config(config, lm_cfg.n_embd, lm_cfg.vocab_size)
  gen = gen_lib.Generator(gen_cfg, rngs=nnx.Rngs(1))
  graphdef, params = nnx.split(gen)
  forward = jax.jit(lambda p, noise, style: nnx.merge(graphdef, p)(noise, style))
  table = lm.wte[...]
  length = gen_cfg.seq_len
  n_gen = sum(x.size for x in jax.tree.leaves(params))
  n_lm = sum(x.size for x in jax.tree.leaves(nnx.state(lm, nnx.Param)))
  log(
    f"device {jax.devices()[0].device_kind}; length {length}; {config.model.dtype}; generator "
    f"{n_gen / 1e6:.1f}M params, autoregressive GPT-2 {n_lm / 1e6:.1f}M params; median of {reps}"
  )
  out = {}
  for batch in batches:
    noise, style = gen_lib.sample_inputs(jax.random.key(2), batch, gen_cfg)

    def one_step():
      return decode.decode_outputs(forward(params, noise, style), table, gen_cfg)[0]

    def autoregressive():
      return gpt2.sample_ar(lm, jax.random.key(3), batch, length)

    t_one = common.timed(one_step, reps=reps)
    t_ar = common.timed(autoregressive, reps=reps)
    for name, t in (("one-step", t_one), ("autoregressive", t_ar)):
      log(f"batch {batch:3d} {name:>15}: {t:8.3f} s  {batch / t:9.2f} samples/s  {batch * length / t:10.1f} tokens/s")
    out[batch] = {"one_step_s": t_one, "ar_s": t_ar, "ratio": t_ar / t_one}
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default=os.path.join(ROOT, "configs", "default.py"))
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--batches", default="1,64")
  args = parser.parse_args()
  results = measure(common.load_config(args.config), [int(b) for b in args.batches.split(",")], args.reps)
  print(
    "speed-up of one-step over autoregressive sampling: "
    + ", ".join(f"batch {b}: {r['ratio']:.1f}x" for b, r in results.items())
  )


if __name__ == "__main__":
  main()
