"""Train-step speed, FLOP/s, MFU and peak memory for the smoke, demo and default configs, in one run.

    .venv/bin/python benchmarks/train_step.py [--configs=smoke,default] [--steps=5] [--default_batch=8] [--runs=3]
        [--remat=off|on|both] [--chunk=0] [--seq_lens=256,512,1024] [--dtypes=float32,bfloat16]

Each config runs in its own subprocess (so that its peak resident memory is its own), with a random GPT-2 of
the config's architecture as the encoder (no weights needed; the compute is the same). The default config runs
at a reduced batch (groups=1, n_gen=n_pos=--default_batch) so that it fits this CPU. Achieved FLOP/s come from
XLA's cost analysis of the compiled step; the peaks are a large float32 matmul and a bfloat16 one accumulated in
float32, measured in the same run (mfu_f32, mfu_bf16). Each config is measured in --runs separate processes (the peaks
--runs times too); the table holds the median over runs of each figure (a run's step time is itself the median of
--steps steps) and the range of the step times. --remat=on sets model.remat and encoder.remat (both: one row each way);
--chunk=N sets train.chunk (the step in chunks of N rows: the default config at 64 + 64 needs it on a 24 GiB machine);
--seq_lens runs each config at these model.seq_len (generator and encoder sizes fixed); --dtypes at these compute dtypes
(model.dtype and encoder.dtype; bfloat16 products accumulate in float32, driftjax/models/matmul.py). A row's config
column names the variant (default, default-float32, default-remat, default-chunk8, ...); column 3 is step_s (the
side-by-side script with the earlier port reads it from the last "default |" row). field_s is the field alone (forward +
backward of every key's drift loss, on random features of the step's shapes, jitted and timed after the steps),
field_share its share of step_s.
MFU counts XLA's FLOPs of the step without chunking (compiled, not run: XLA counts a loop's body once, so the
chunked step's own count is not its work). Prints the table, then the default config's MFU last.
measure_config() is shared with benchmarks/device_check.py.
"""

import argparse
import dataclasses
import functools
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
  # Accumulated in float32, as driftjax.models.matmul's products are (on this CPU, bfloat16 products with a
  # bfloat16 result run at the float32 rate or below; these run at about twice it).
  f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  f(a, b).block_until_ready()
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * n**3 / sorted(times)[len(times) // 2]


def config_for(name: str, default_batch: int, remat: bool = False, chunk: int = 0, seq_len: int = 0, dtype: str = ""):
  config = common.load_config(os.path.join(ROOT, "configs", f"{name}.py"))
  config.model.remat = config.encoder.remat = remat
  if dtype:
    config.model.dtype = config.encoder.dtype = dtype
  config.train.chunk = chunk
  if seq_len:
    config.model.seq_len = seq_len
  if name == "default":
    config.encoder.random.enabled = True  # configs/default.py's random encoder has GPT-2 small's shape.
    config.data.source = "tinystories_sample"
    config.data.groups = 1
    config.data.n_gen = default_batch
    config.data.n_pos = default_batch
  config.train.async_checkpoints = False
  return config


def measure(name: str, steps: int, default_batch: int, remat: bool, chunk: int, seq_len: int, dtype: str) -> dict:
  """Runs in the child process: the measure_config of config `name`, labelled with its variant."""
  label = name + (f"-{dtype}" if dtype else "") + ("-remat" if remat else "") + (f"-chunk{chunk}" if chunk else "")
  config = config_for(name, default_batch, remat, chunk, seq_len, dtype)
  return {"config": label, **measure_config(config, steps, field=True)}


def unchunked_flops(trainer, state, batch) -> float:
  """XLA's FLOPs of the trainer's step with train.chunk off (compiled only; it need not fit in memory to run)."""
  import jax
  from flax import nnx

  from driftjax import train_step as step_lib

  spec = trainer.spec
  step = functools.partial(
    step_lib.train_step,
    graphdef=spec.graphdef,
    enc_graphdef=nnx.split(trainer.encoder)[0],
    cfg=dataclasses.replace(spec.cfg, chunk=0),
    tx=spec.tx,
    schedule=spec.schedule,
  )
  cost = jax.jit(step).lower(state, batch, trainer.enc_state).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost).get("flops", 0.0))


def field_seconds(trainer, batch, reps: int = 3) -> float:
  """Median time of the field alone (forward + backward of drift_losses) on random features of the step's shapes."""
  import jax
  import jax.numpy as jnp

  from driftjax import train_step as step_lib
  from driftjax.drift import losses as losses_lib

  c, enc = trainer.cfg, trainer.encoder
  length = batch.shape[1]

  def features(rows, seed):
    shapes = jax.eval_shape(lambda: step_lib.feature_dict(enc, None, jnp.zeros((rows, length), jnp.int32), c))
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    return {k: jax.random.normal(key, s.shape, s.dtype) for key, (k, s) in zip(keys, shapes.items())}

  gen, pos = features(c.groups * c.n_gen, 0), features(c.groups * c.positives, 1)
  w = jnp.ones((c.groups, c.positives))
  fn = jax.jit(jax.value_and_grad(lambda g: losses_lib.drift_losses(g, pos, w, c.groups, c.field)[0]))
  return common.timed(fn, gen, reps=reps)


def measure_config(config, steps: int, field: bool = False) -> dict:
  """Compile the train step, time `steps` steps after one warm-up, read the cost analysis and peak memory;
  with `field`, also time the field alone on the step's feature shapes (field_seconds).

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
    compiled = trainer.compile_step(state, batch)  # What the train loop runs.
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", 0.0))
    fused_attention = compiled.as_text().count("cudnn$fmha")  # cuDNN attention calls (XLA counts no FLOPs there).
    temp_gib = getattr(compiled.memory_analysis(), "temp_size_in_bytes", float("nan")) / 2**30
    if trainer.cfg.chunk:
      flops = unchunked_flops(trainer, state, batch)
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
    field_s = field_seconds(trainer, batch) if field else float("nan")
    c = trainer.cfg
    tokens = c.groups * c.n_gen * config.model.seq_len
    stats = jax.devices()[0].memory_stats() or {}  # None on CPU.
    return {
      "batch": f"{c.groups}x({c.n_gen}+{c.n_pos}+q{c.queue_size})",
      "seq_len": config.model.seq_len,
      "step_s": step_s,
      "steps_per_s": 1 / step_s,
      "gen_tokens_per_s": tokens / step_s,
      "xla_flops": flops,
      "flops_per_s": flops / step_s,
      "field_s": field_s,
      "field_share": field_s / step_s,
      "compile_s": compile_s,
      "xla_temp_gib": temp_gib,
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
  parser.add_argument("--chunk", type=int, default=0, help="train.chunk: rows per chunk of the step (0: off)")
  parser.add_argument("--seq_lens", default="", help="comma-separated model.seq_len values (default: the config's)")
  parser.add_argument(
    "--dtypes", default="", help="comma-separated compute dtypes of generator and encoder (default: the config's)"
  )
  parser.add_argument("--child", default="")
  args = parser.parse_args()
  if args.child:
    remat, seq_len = args.remat == "on", int(args.seq_lens or 0)
    child = measure(args.child, args.steps, args.default_batch, remat, args.chunk, seq_len, args.dtypes)
    print("RESULT" + json.dumps(child))
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
  seq_lens = [int(n) for n in args.seq_lens.split(",")] if args.seq_lens else [0]
  dtypes = args.dtypes.split(",") if args.dtypes else [""]
  variants = [(n, r, s, d) for n in args.configs.split(",") for d in dtypes for r in remats for s in seq_lens]
  for name, remat, seq_len, dtype in variants:
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
          f"--chunk={args.chunk}",
          f"--seq_lens={seq_len or ''}",
          f"--dtypes={dtype}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
      )
      if proc.returncode:
        print(
          f"{name} (remat {remat}, chunk {args.chunk}, seq_len {seq_len or 'default'}, dtype {dtype or 'default'}) "
          f"failed:\n{proc.stderr[-2000:]}"
        )
        break
      runs.append(json.loads(proc.stdout.split("RESULT")[-1]))
    if len(runs) < args.runs:
      continue
    row = {k: (float(np.median([r[k] for r in runs])) if isinstance(v, float) else v) for k, v in runs[0].items()}
    row["mfu_f32"] = row["flops_per_s"] / peak32
    row["mfu_bf16"] = row["flops_per_s"] / peak16
    row["step_s_range"] = f"{min(r['step_s'] for r in runs):.4g}-{max(r['step_s'] for r in runs):.4g}"
    rows.append(row)
  header = (  # Column 3 must stay step_s (see the docstring).
    "config",
    "batch",
    "seq_len",
    "step_s",
    "step_s_range",
    "steps_per_s",
    "gen_tokens_per_s",
    "flops_per_s",
    "mfu_f32",
    "mfu_bf16",
    "field_s",
    "field_share",
    "compile_s",
    "xla_temp_gib",
    "peak_rss_gib",
  )
  print(" | ".join(header))
  for r in rows:
    print(" | ".join(f"{r[h]:.4g}" if isinstance(r[h], float) else str(r[h]) for h in header))
  for r in rows:
    if r["config"].startswith("default"):
      print(
        f"{r['config']} config ({r['batch']}, seq_len {r['seq_len']}) MFU: {r['mfu_f32']:.1%} of the float32 "
        f"matmul peak, {r['mfu_bf16']:.1%} of the bfloat16 one"
      )


if __name__ == "__main__":
  main()
