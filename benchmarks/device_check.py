"""One prepared measurement for a lent GPU: matmul peak, the default config's train step with and without
remat, one-step vs autoregressive sampling. Run by benchmarks/device_check.sh (which installs the carried
wheels first); here, on CPU with tiny shapes, `python benchmarks/device_check.py --dry_run` proves the code path.

Each part runs in its own subprocess, in this order, each with a time cap inside one overall deadline
(--deadline_s): a part that fails or runs out of time prints its error and leaves the others; its peak memory
is its own process's.
  peak      bf16 matmul 8192^3 (--matmul_n), median of 20 after a warm-up: the MFU denominator.
  attention cuDNN's fused attention (driftjax/models/attention.py picks it on GPU in bf16) against XLA's at the
            generator's shapes: relative difference of outputs and gradients, forward + backward time.
  train     configs/default.py: the 130M DiT generator and a random GPT-2-small-shaped encoder (written to a
            temporary folder, benchmarks/train_step.py's measure_config), model.dtype = encoder.dtype = bfloat16,
            batch 1x(64+64), seq 256, data.source=synthetic (3,000 stories, holdout 0: data content does not
            change step cost). remat off, then (after sampling) remat on (model.remat and encoder.remat).
  sampling  benchmarks/sampling.py's measure: generator forward + nearest-token decode vs KV-cached
            kv_decode.sample_ar of GPT-2 small, 256 tokens, bfloat16, batch 1 and 64, median of 5.

What it printed last on the lent H200 of 2026-11-30 ('-' stands where a part failed; docs/benchmarks.md):

    == device check: NVIDIA H200 (jax 0.11.2, flax 0.12.12) ==
    bf16 matmul peak (8192^3, median of 20): 640.2 TFLOP/s
    train step, default config, bf16, batch 1x(64+64+q0), seq 256:
    remat | step_s | gen_tokens_per_s | xla_tflop_per_step | tflop_per_s | mfu | mfu_model | peak_device_gib | ...
    off | 0.0808 | 202804 | 14.15 | 175.2 | 27.4% | 27.4% | 14.19 | ...
    on | 0.0952 | 172101 | 18.82 | 197.7 | 30.9% | 23.2% | 4.80 | ...
    attention, bf16 [64, 256, 12, 64], fwd+bwd (the models use: cudnn): ...
    sampling, bf16, 256 tokens (median s per batch):
    batch | one_step_s | autoregressive_s | speedup
    1 | 0.0024 | 0.1813 | 76.4x
    64 | 0.0227 | 0.1794 | 7.9x
    failed parts: none
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import train_step as train_bench  # noqa: E402

# (part, time cap in seconds): sampling before remat-on, so that the costlier last part is the one a tight
# deadline cuts.
PARTS = (("peak", 60), ("attention", 60), ("train_off", 170), ("sampling", 120), ("train_on", 170))


def shrink(config) -> None:
  """Tiny shapes for --dry_run on CPU: the same code path in seconds."""
  m = config.model
  m.seq_len, m.width, m.depth, m.heads, m.noise_dim = 32, 64, 2, 4, 32
  m.style_tokens, m.style_codebook = 8, 16
  if config.encoder.get("random"):
    config.encoder.random.update(n_layer=2, n_embd=32, n_head=4, n_positions=64)
  config.drift.layers = (1, 2)
  config.data.n_gen = config.data.n_pos = 4
  config.data.synthetic_docs = 200


def train_config(remat: bool, dry_run: bool):
  """configs/default.py at its real batch, bf16, a random encoder of GPT-2 small's shape, synthetic data."""
  config = train_bench.config_for("default", default_batch=64, remat=remat)
  config.model.dtype = config.encoder.dtype = "bfloat16"
  config.data.source = "synthetic"  # Offline; the data's content does not change the step's cost.
  config.data.synthetic_docs = 3000
  config.data.holdout = 0
  if dry_run:
    shrink(config)
  return config


def sampling_config(dry_run: bool):
  config = train_bench.common.load_config(os.path.join(ROOT, "configs", "default.py"))
  config.model.dtype = "bfloat16"
  if dry_run:
    shrink(config)
  return config


def attention_check(dry_run: bool) -> dict:
  """cuDNN's fused attention against XLA's at the default generator's shapes (bf16, B=64, L=256, 12 heads of
  64): the relative difference of outputs and gradients, and forward + backward time of each. On a device
  without cuDNN only the XLA row is measured."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from benchmarks import common
  from driftjax.models import attention

  shape = (4, 32, 4, 16) if dry_run else (64, 256, 12, 64)
  ks = jax.random.split(jax.random.key(0), 4)
  q, k, v, g = (jax.random.normal(key, shape, jnp.bfloat16) for key in ks)
  impls = ["xla"] + (["cudnn"] if attention.implementation(jnp.bfloat16, shape[-1]) == "cudnn" else [])
  out = {"shape": list(shape), "auto": attention.implementation(jnp.bfloat16, shape[-1])}
  for causal in (False, True):
    ref = None
    for impl in impls:

      def loss(q, k, v, impl=impl):
        o = jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=impl)
        return jnp.sum(o.astype(jnp.float32) * g.astype(jnp.float32)), o

      f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))
      (_, o), grads = f(q, k, v)
      vals = [np.asarray(x, np.float32) for x in (o, *grads)]
      row = {"fwd_bwd_ms": 1e3 * common.timed(f, q, k, v, reps=20)}
      if ref is None:
        ref = vals
      else:
        row["max_rel_diff_vs_xla"] = float(max(np.linalg.norm(a - b) / np.linalg.norm(b) for a, b in zip(vals, ref)))
      out[f"{'causal' if causal else 'bidirectional'}/{impl}"] = row
  return out


def run_part(part: str, args) -> dict:
  """In the child process: one part's figures."""
  if part == "peak":
    n = 256 if args.dry_run else args.matmul_n
    return {"peak_flops": train_bench.matmul_peak("bfloat16", n=n, reps=20), "n": n}
  if part == "attention":
    return attention_check(args.dry_run)
  if part.startswith("train_"):
    return train_bench.measure_config(train_config(part == "train_on", args.dry_run), steps=args.steps)
  if part == "sampling":
    from benchmarks import sampling

    config = sampling_config(args.dry_run)
    batches = (1, 4) if args.dry_run else (1, 64)
    return {
      "length": config.model.seq_len,
      "batches": {str(b): r for b, r in sampling.measure(config, batches, reps=5).items()},
    }
  raise ValueError(f"unknown part {part!r}")


def fmt(x, spec: str) -> str:
  return "-" if x is None else format(x, spec)


def report(results: dict, errors: dict, matmul_n: int) -> None:
  import flax
  import jax

  print(f"\n== device check: {jax.devices()[0].device_kind} (jax {jax.__version__}, flax {flax.__version__}) ==")
  peak = results.get("peak", {}).get("peak_flops")
  print(
    f"bf16 matmul peak ({results.get('peak', {}).get('n', matmul_n)}^3, median of 20): "
    f"{fmt(peak and peak / 1e12, '.1f')} TFLOP/s"
  )
  off = results.get("train_off")
  batch = next((r["batch"] for r in (off, results.get("train_on")) if r), "?")
  seq = next((r["seq_len"] for r in (off, results.get("train_on")) if r), "?")
  print(f"train step, default config, bf16, batch {batch}, seq {seq}:")
  print(
    "remat | step_s | gen_tokens_per_s | xla_tflop_per_step | tflop_per_s | mfu | mfu_model | peak_device_gib"
    " | peak_rss_gib | compile_s | cudnn_attention_calls"
  )
  for name in ("off", "on"):
    r = results.get(f"train_{name}")
    if not r:
      print(f"{name} | failed")
      continue
    mfu = r["flops_per_s"] / peak if peak else None
    mfu_model = off["xla_flops"] / r["step_s"] / peak if peak and off else None
    print(
      f"{name} | {r['step_s']:.4f} | {r['gen_tokens_per_s']:.0f} | {r['xla_flops'] / 1e12:.2f} | "
      f"{r['flops_per_s'] / 1e12:.1f} | {fmt(mfu, '.1%')} | {fmt(mfu_model, '.1%')} | "
      f"{r['peak_device_gib']:.2f} | {r['peak_rss_gib']:.2f} | {r['compile_s']:.1f} | "
      f"{r['fused_attention_calls']}"
    )
  print(
    "(mfu: XLA's FLOPs of the compiled step, recomputation included, over step time and the matmul peak;"
    "\n mfu_model: the remat-off step's FLOPs over this row's step time, i.e. useful work only)"
  )
  att = results.get("attention", {})
  print(f"attention, bf16 {att.get('shape', '?')}, fwd+bwd (the models use: {att.get('auto', '?')}):")
  print("mask | implementation | ms | rel. diff of outputs and gradients vs xla")
  for name, r in att.items():
    if "/" in name:
      print(
        f"{name.split('/')[0]} | {name.split('/')[1]} | {r['fwd_bwd_ms']:.3f} | "
        f"{fmt(r.get('max_rel_diff_vs_xla'), '.2e')}"
      )
  sampling = results.get("sampling", {})
  print(f"sampling, bf16, {sampling.get('length', '?')} tokens (median s per batch):")
  print("batch | one_step_s | autoregressive_s | speedup")
  for b, r in sampling.get("batches", {}).items():
    print(f"{b} | {r['one_step_s']:.4f} | {r['ar_s']:.4f} | {r['ratio']:.1f}x")
  print("failed parts: " + (", ".join(f"{p} ({e})" for p, e in errors.items()) or "none"))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--dry_run", action="store_true", help="tiny shapes, for a CPU check of the code path")
  parser.add_argument("--steps", type=int, default=5, help="timed train steps per config, after one warm-up")
  parser.add_argument("--matmul_n", type=int, default=8192)
  parser.add_argument("--deadline_s", type=float, default=420, help="for all parts together")
  parser.add_argument("--part", default="", help="internal: run one part in this process")
  args = parser.parse_args()
  if args.part:
    print("RESULT" + json.dumps(run_part(args.part, args)))
    return
  start = time.time()
  results, errors = {}, {}
  for part, cap in PARTS:
    cap *= 3 if args.dry_run else 1  # Compiling on 2 shared CPU cores is slower than a GPU machine's 16.
    left = args.deadline_s - (time.time() - start)
    if left < 20:
      errors[part] = "skipped: deadline"
      continue
    cmd = [sys.executable, __file__, f"--part={part}", f"--steps={args.steps}", f"--matmul_n={args.matmul_n}"]
    cmd += ["--dry_run"] if args.dry_run else []
    t = time.time()
    print(f"-- {part} (cap {min(cap, left):.0f} s)", flush=True)
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=min(cap, left))
    except subprocess.TimeoutExpired as e:
      errors[part] = f"timed out after {min(cap, left):.0f} s"
      print(
        (e.stderr or b"")[-3000:].decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")[-3000:]
      )
      continue
    print(f"   {time.time() - t:.1f} s, exit {proc.returncode}", flush=True)
    if proc.returncode or "RESULT" not in proc.stdout:
      errors[part] = f"exit {proc.returncode}"
      print(proc.stdout[-2000:] + proc.stderr[-4000:])
      continue
    print("\n".join(line for line in proc.stdout.splitlines() if not line.startswith("RESULT")))
    results[part] = json.loads(proc.stdout.split("RESULT")[-1])
  report(results, errors, args.matmul_n)


if __name__ == "__main__":
  main()
