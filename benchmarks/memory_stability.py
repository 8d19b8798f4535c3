"""Long-run stability: host memory (RSS) of a training process against its step, and a check for NaN.

python benchmarks/memory_stability.py --config=configs/demo.py --workdir=runs/stability --steps=2000
Runs `python -m driftjax.main --mode=train` with --config.optim.total_steps=N in a subprocess (for the demo
config DIR/encoder must exist, e.g. from a demo run: copy or link it), samples its resident memory every
--every seconds together with the last logged step, and prints the curve, the growth from the first logged
step to the end, and whether any logged loss was not finite.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rss_mib(pid: int) -> float:
  with open(f"/proc/{pid}/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) / 1024
  return float("nan")


def last_step(metrics_path: str) -> tuple[int, list[float]]:
  if not os.path.exists(metrics_path):
    return 0, []
  step, losses = 0, []
  with open(metrics_path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue  # A line being written.
      step = max(step, row["step"])
      if "loss" in row:
        losses.append(row["loss"])
  return step, losses


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--config", default="configs/demo.py")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--every", type=float, default=5.0)
  parser.add_argument("--extra", default="", help="more --config.x=y flags, space-separated")
  args = parser.parse_args()
  cmd = [
    sys.executable,
    "-m",
    "driftjax.main",
    f"--config={args.config}",
    f"--workdir={args.workdir}",
    "--mode=train",
    f"--config.optim.total_steps={args.steps}",
    "--config.train.log_every=10",
    "--config.train.eval_every=0",
    *args.extra.split(),
  ]
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  metrics = os.path.join(args.workdir, "metrics.jsonl")
  curve = []
  while proc.poll() is None:
    try:
      mem = rss_mib(proc.pid)
    except FileNotFoundError:
      break
    step, _ = last_step(metrics)
    curve.append((time.time(), step, mem))
    time.sleep(args.every)
  err = proc.communicate()[1]
  if proc.returncode:
    print(f"training failed ({proc.returncode}):\n{err[-3000:]}")
    sys.exit(1)
  step, losses = last_step(metrics)
  print(
    f"{args.config}: {step} steps, {len(losses)} logged losses, non-finite: {sum(not math.isfinite(x) for x in losses)}"
  )
  print("| step | RSS (MiB) |\n|---|---|")
  shown = set()
  for _, s, mem in curve:
    bucket = s // max(1, args.steps // 20)
    if s and bucket not in shown:
      shown.add(bucket)
      print(f"| {s} | {mem:.0f} |")
  logged = [(s, m) for _, s, m in curve if s > 0]
  if len(logged) >= 2:
    (s0, m0), (s1, m1) = logged[0], logged[-1]
    half = [m for s, m in logged if s >= (s0 + s1) / 2]
    print(
      f"RSS at step {s0}: {m0:.0f} MiB; at step {s1}: {m1:.0f} MiB; growth {m1 - m0:+.0f} MiB "
      f"({(m1 - m0) / max(1, s1 - s0) * 1000:+.1f} MiB per 1,000 steps); second half min/max "
      f"{min(half):.0f}/{max(half):.0f} MiB"
    )


if __name__ == "__main__":
  main()
