"""One-step generation vs KV-cached autoregressive sampling, same size and length, each against its own bound.

    .venv/bin/python benchmarks/sampling.py [--config=configs/default.py] [--reps=3] [--batches=1,8,64]

One step: the config's generator (default: the seed's 130M DiT) maps noise to 256 embeddings in one forward
pass, then nearest-token decoding over GPT-2's 50,257-token table. Autoregressive: a GPT-2 of the same size
(GPT-2 small, 124M) samples 256 tokens one at a time with a KV cache (driftjax.models.kv_decode.sample_ar).
Both use random weights (speed does not depend on them) and compute in model.dtype.

Bounds, measured in the same run: the matmul peak (a 4096^3 matmul, as benchmarks/train_step.py) and the
memory bandwidth (the faster of a sum over a 1 GiB array and a vector-matrix product over it, under jit). A
sampler's floor is the larger of FLOPs / peak and bytes / bandwidth; each row prints both fractions.
- Autoregressive, per token: the FLOPs are 2 per weight-row product and batch row plus 4 * D per attended
  position, layer and row; the bytes are every weight once (the logits table included) plus each row's filled
  cache (keys and values of the positions so far, all layers). At batch 1 the bytes bound it, at 64 the FLOPs.
- One step: XLA's count of the generator forward plus 2 * B * L * V * D for the decoding's distances.

Where one-step stops winning: it does not save FLOPs. At batch 64 the generator and decoding do about 4.3 TFLOP,
the KV-cached decoder about 4.1 (ar_cost), so the throughput ratio at large batches is the ratio of the two
paths' matmul efficiencies. On an idle 2-core CPU (2026-11-30): 9.3x at batch 1 (the decoder rereads its
weights for every token: bandwidth-bound, at 69% of the measured bandwidth), 3.1x at 8 (the decoder's 8-row
matmuls at 26% of peak), 1.5x at 64 (one-step at 84% of peak, the decoder at 54%); a decoder at one-step's
efficiency would be about as fast at 64 (in a run on a loaded machine it was: 0.71x). One-step's lasting edge
is latency: one pass instead of 256 dependent ones.
measure() is shared with benchmarks/device_check.py.
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
from benchmarks import train_step as train_bench  # noqa: E402
from driftjax import build  # noqa: E402
from driftjax.models import decode  # noqa: E402
from driftjax.models import generator as gen_lib  # noqa: E402
from driftjax.models import gpt2  # noqa: E402
from driftjax.models import kv_decode  # noqa: E402


def memory_bandwidth(gib: float = 1.0, reps: int = 5) -> float:
  """Bytes/s streamed from memory: the faster of a sum and a vector-matrix product over a gib-GiB float32 array."""
  n = int(gib * (1 << 28))
  x = jnp.ones((n // 4096, 4096), jnp.float32)
  v = jnp.ones((x.shape[0],), jnp.float32)
  sum_s = common.timed(jax.jit(jnp.sum), x, reps=reps)
  vecmat_s = common.timed(jax.jit(lambda v, x: v @ x), v, x, reps=reps)
  return x.nbytes / min(sum_s, vecmat_s)


def ar_cost(cfg: gpt2.GPT2Config, batch: int, length: int, itemsize: int) -> tuple[float, float]:
  """(FLOPs, bytes) of sampling `length` tokens at `batch` with the KV cache: per token every weight is read once
  and each row reads its filled cache (positions 0..t of all layers' keys and values)."""
  d, inner = cfg.n_embd, cfg.inner
  matmul = cfg.n_layer * (3 * d * d + d * d + 2 * d * inner) + cfg.vocab_size * d  # Weights in products.
  weights = matmul + cfg.n_layer * (4 * d + 3 * d + d + inner + d) + 2 * d  # Plus biases and norms.
  attended = batch * sum(t + 1 for t in range(length))  # Cache positions read, over all rows and steps.
  flops = 2 * matmul * batch * length + 4 * d * cfg.n_layer * attended
  nbytes = itemsize * (weights * length + 2 * d * cfg.n_layer * attended)
  return float(flops), float(nbytes)


def measure(config, batches, reps: int, log=print) -> dict[int, dict[str, float]]:
  """{batch: {"one_step_s", "ar_s", "ratio", and the fractions of each path's bound}}: median seconds per batch
  of each way at the config's size. Both models compute in config.model.dtype (shared with
  benchmarks/device_check.py)."""
  dtype = jnp.dtype(config.model.dtype)
  lm_cfg = gpt2.GPT2Config(n_layer=config.model.depth, n_embd=config.model.width, n_head=config.model.heads)
  lm = gpt2.GPT2(lm_cfg, rngs=nnx.Rngs(0), dtype=dtype)
  gen_cfg = build.generator_config(config, lm_cfg.n_embd, lm_cfg.vocab_size)
  gen = gen_lib.Generator(gen_cfg, rngs=nnx.Rngs(1))
  graphdef, params = nnx.split(gen)
  forward = jax.jit(lambda p, noise, style: nnx.merge(graphdef, p)(noise, style))
  table = lm.wte[...]
  length = gen_cfg.seq_len
  peak = train_bench.matmul_peak(dtype.name)
  bandwidth = memory_bandwidth()
  n_gen = sum(x.size for x in jax.tree.leaves(params))
  n_lm = sum(x.size for x in jax.tree.leaves(nnx.state(lm, nnx.Param)))
  log(
    f"device {jax.devices()[0].device_kind}; length {length}; {dtype.name}; generator {n_gen / 1e6:.1f}M params, "
    f"autoregressive GPT-2 {n_lm / 1e6:.1f}M params; median of {reps}; matmul peak {peak / 1e9:.1f} GFLOP/s, "
    f"memory bandwidth {bandwidth / 1e9:.1f} GB/s"
  )
  out = {}
  for batch in batches:
    noise, style = gen_lib.sample_inputs(jax.random.key(2), batch, gen_cfg)
    gen_flops = forward.lower(params, noise, style).compile().cost_analysis()["flops"]
    one_flops = gen_flops + 2.0 * batch * length * lm_cfg.vocab_size * lm_cfg.n_embd

    def one_step():
      return decode.decode_outputs(forward(params, noise, style), table, gen_cfg)[0]

    def autoregressive():
      return kv_decode.sample_ar(lm, jax.random.key(3), batch, length)

    t_one = common.timed(one_step, reps=reps)
    t_ar = common.timed(autoregressive, reps=reps)
    ar_flops, ar_bytes = ar_cost(lm_cfg, batch, length, dtype.itemsize)
    row = {
      "one_step_s": t_one,
      "ar_s": t_ar,
      "ratio": t_ar / t_one,
      "one_step_flop_frac": one_flops / peak / t_one,
      "ar_flop_frac": ar_flops / peak / t_ar,
      "ar_bytes_frac": ar_bytes / bandwidth / t_ar,
      "one_step_tflop": one_flops / 1e12,
      "ar_tflop": ar_flops / 1e12,
      "ar_gb": ar_bytes / 1e9,
    }
    row["ar_bound_frac"] = max(row["ar_flop_frac"], row["ar_bytes_frac"])
    log(
      f"batch {batch:3d}  one-step {t_one:8.3f} s ({batch * length / t_one:8.1f} tok/s, {row['one_step_tflop']:.3f} "
      f"TFLOP, {100 * row['one_step_flop_frac']:4.0f}% of peak) | autoregressive {t_ar:8.3f} s "
      f"({batch * length / t_ar:8.1f} tok/s, {row['ar_tflop']:.3f} TFLOP = {100 * row['ar_flop_frac']:4.0f}% of peak, "
      f"{row['ar_gb']:.1f} GB = {100 * row['ar_bytes_frac']:4.0f}% of bandwidth) | ratio {row['ratio']:.2f}x"
    )
    out[batch] = row
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default=os.path.join(ROOT, "configs", "default.py"))
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--batches", default="1,8,64")
  args = parser.parse_args()
  results = measure(common.load_config(args.config), [int(b) for b in args.batches.split(",")], args.reps)
  print("batch | one_step_s | ar_s | ratio | one_step_of_peak | ar_of_peak | ar_of_bandwidth")
  for b, r in results.items():
    print(
      f"{b} | {r['one_step_s']:.3f} | {r['ar_s']:.3f} | {r['ratio']:.2f}x | {100 * r['one_step_flop_frac']:.0f}% | "
      f"{100 * r['ar_flop_frac']:.0f}% | {100 * r['ar_bytes_frac']:.0f}%"
    )


if __name__ == "__main__":
  main()
