"""Train-step speed, FLOP/s, MFU and peak memory for the smoke, demo and default configs, in one run.

    .venv/bin/python benchmarks/train_step.py [--configs=smoke,default] [--steps=5] [--default_batch=8] [--runs=3]
        [--remat=off|on|both]

Each config runs in its own subprocess (so that its peak resident memory is its own), with a random GPT-2 of
the config's architecture as the encoder (no weights needed; the compute is the same). The default config runs
at a reduced batch (groups=1, n_gen=n_pos=--default_batch) so that it fits this CPU. Achieved FLOP/s come from
XLA's cost analysis of the compiled step; the peak is a large float32 (and bfloat16) matmul measured in the same
run. Each config is measured in --runs separate processes (the peaks --runs times too); the table holds the
median over runs of each figure (a run's step time is itself the median of --steps steps) and the range of the
step times. --remat=on sets model.remat and encoder.remat (both: one row each way). Prints the table, then the
default config's MFU last. measure_config() is shared with benchmarks/device_check.py.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import common  # noqa: E402


def matmul_peak(dtype_name: str, n: int = 4096, reps: int = 5) -> float:
  import jax
  import jax.numpy as jnp

  dtype = jnp.dtype(dtype_name)
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n**3 / sorted(times)[len(times) // 2]


def config_for(name: str, default_batch: int, remat: bool = False):
  config = common.load_config(os.path.join(ROOT, "configs", f"{name}.py"))
  config.model.remat = config.encoder.remat = remat
  if name == "default":
    config.encoder.random.enabled = True  # configs/default.py's random encoder has GPT-2 small's shape.
    config.data.source = "tinystories_sample"
    config.data.groups = 1
    config.data.n_gen = default_batch
    config.data.n_pos = default_batch
  config.train.async_checkpoints = False
  return config


def measure(name: str, steps: int, default_batch: int, remat: bool) -> dict:
  """Runs in the child process: the measure_config of config `name`."""
  return {"config": name, **measure_config(config_for(name, default_batch, remat), steps)}


def measure_config(config, steps: int) -> dict:
  """Compile the train step, time `steps` steps after one warm-up, read the cost analysis and peak memory.

  Call it in a fresh process per config: the peaks (resident memory, device memory where the device reports
  it) are the process's own since it started.
  """
  import jax
  import numpy as np
  from driftjax import train

  with tempfile.TemporaryDirectory() as workdir:
    if config.encoder.name == "pretrained":
      common.random_pretrained_encoder(config, workdir)
    trainer = train.setup(config, workdir)
    state = trainer.init_state()
    batch = trainer.next_batch()
    t0 = time.perf_counter()
    compiled = trainer.step_fn.lower(state, batch, trainer.enc_state).compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0))
    fused_attention = compiled.as_text().count("cudnn$fmha")  # cuDNN attention calls (XLA counts no FLOPs there).
    state, metrics = compiled(state, batch, trainer.enc_state)  # Warm-up.
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
      batch = trainer.next_batch()
      t = time.perf_counter()
      state, metrics = compiled(state, batch, trainer.enc_state)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t)
    step_s = float(np.median(times))
    c = trainer.cfg
    tokens = c.groups * c.n_gen * config.model.seq_len
    stats = jax.devices()[0].memory_stats() or {}  # None on CPU.
    return {
      "remat": "on" if config.model.remat else "off",
      "batch": f"{c.groups}x({c.n_gen}+{c.n_pos}+q{c.queue_size})",
      "seq_len": config.model.seq_len,
      "step_s": step_s,
      "steps_per_s": 1 / step_s,
      "gen_tokens_per_s": tokens / step_s,
      "xla_flops": flops,
      "flops_per_s": flops / step_s,
      "compile_s": compile_s,
      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
      "peak_device_gib": stats.get("peak_bytes_in_use", float("nan")) / 2**30,
      "fused_attention_calls": fused_attention,
    }


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--configs", default="smoke,demo,default")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--default_batch", type=int, default=8)
  parser.add_argument("--runs", type=int, default=3, help="processes per config; figures are their medians")
  parser.add_argument("--remat", default="off", choices=("off", "on", "both"))
  parser.add_argument("--child", default="")
  args = parser.parse_args()
  if args.child:
    print("RESULT" + json.dumps(measure(args.child, args.steps, args.default_batch, args.remat == "on")))
    return
  import jax
  import numpy as np

  peaks32 = [matmul_peak("float32") for _ in range(args.runs)]
  peaks16 = [matmul_peak("bfloat16") for _ in range(args.runs)]
  peak32, peak16 = float(np.median(peaks32)), float(np.median(peaks16))
  print(
    f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; matmul peak (median of {args.runs}) "
    f"float32 {peak32 / 1e9:.1f} GFLOP/s (range {min(peaks32) / 1e9:.1f}-{max(peaks32) / 1e9:.1f}), "
    f"bfloat16 {peak16 / 1e9:.1f} GFLOP/s (range {min(peaks16) / 1e9:.1f}-{max(peaks16) / 1e9:.1f})"
  )
  rows = []
  remats = ("off", "on") if args.remat == "both" else (args.remat,)
  for name, remat in ((n, r) for n in args.configs.split(",") for r in remats):
    if not os.path.exists(os.path.join(ROOT, "configs", f"{name}.py")):
      print(f"skip {name}: no configs/{name}.py")
      continue
    runs = []
    for _ in range(args.runs):
      proc = subprocess.run(
        [
          sys.executable,
          __file__,
          f"--child={name}",
          f"--steps={args.steps}",
          f"--default_batch={args.default_batch}",
          f"--remat={remat}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
      )
      if proc.returncode:
        print(f"{name} (remat {remat}) failed:\n{proc.stderr[-2000:]}")
        break
      runs.append(json.loads(proc.stdout.split("RESULT")[-1]))
    if len(runs) < args.runs:
      continue
    row = {k: (float(np.median([r[k] for r in runs])) if isinstance(v, float) else v) for k, v in runs[0].items()}
    row["mfu_f32"] = row["flops_per_s"] / peak32
    row["step_s_range"] = f"{min(r['step_s'] for r in runs):.4g}-{max(r['step_s'] for r in runs):.4g}"
    rows.append(row)
  header = (
    "config",
    "remat",
    "batch",
    "seq_len",
    "step_s",
    "step_s_range",
    "steps_per_s",
    "gen_tokens_per_s",
    "flops_per_s",
    "mfu_f32",
    "compile_s",
    "peak_rss_gib",
  )
  print(" | ".join(header))
  for r in rows:
    print(" | ".join(f"{r[h]:.4g}" if isinstance(r[h], float) else str(r[h]) for h in header))
  for r in rows:
    if r["config"] == "default":
      print(f"default config (remat {r['remat']}) MFU (float32 matmul peak): {r['mfu_f32']:.1%}")


if __name__ == "__main__":
  main()
