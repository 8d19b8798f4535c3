"""What the training loop reports: metrics to TensorBoard and DIR/metrics.jsonl, the step timer, the progress bar.

Only process 0 writes or draws; the others carry the same objects and do nothing with them.
"""

from __future__ import annotations

import json
import os
import time

from tensorboardX import SummaryWriter
from tqdm import tqdm

from driftjax import hosts


class MetricsWriter:
  """TensorBoard event files (tensorboardX) and a JSON-lines copy, written by process 0 only."""

  def __init__(self, workdir: str, start: int):
    """`start`: the step this run starts from; anything logged after it by an earlier, killed run is dropped."""
    self.enabled = hosts.is_first()
    self.jsonl = None
    if self.enabled:
      self.tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start + 1)
      if "://" not in workdir:  # The JSON-lines copy is for local runs (object stores cannot append).
        path = os.path.join(workdir, "metrics.jsonl")
        drop_lines_after(path, start)
        self.jsonl = open(path, "a")

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    for k, v in metrics.items():
      self.tb.add_scalar(k, v, step)
    if self.jsonl:
      self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
      self.jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self.tb.close()
    if self.jsonl:
      self.jsonl.close()


def drop_lines_after(path: str, step: int) -> None:
  """Rewrites a metrics.jsonl without the rows past `step` (atomically: a crash leaves the old file)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        keep.append(line)
    except (ValueError, KeyError):  # A line cut short by a kill: drop it.
      continue
  if len(keep) != len(lines):
    with open(path + ".tmp", "w") as f:
      f.writelines(keep)
    os.replace(path + ".tmp", path)


class StepTimer:
  """Mean step time and generated tokens/s between two reports; paused time (evaluations) is left out."""

  def __init__(self, step: int, tokens_per_step: int):
    self.step, self.time, self.tokens = step, time.time(), tokens_per_step

  def pause(self, seconds: float) -> None:
    self.time += seconds

  def lap(self, step: int) -> dict[str, float]:
    now = time.time()
    dt = (now - self.time) / max(step - self.step, 1)
    self.step, self.time = step, now
    return {"step_time_s": dt, "tokens_per_s": self.tokens / max(dt, 1e-9)}


class ProgressBar:
  """A console progress line on process 0 (tqdm)."""

  def __init__(self, start: int, total: int):
    self.bar = None
    if hosts.is_first():
      self.bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True, mininterval=1.0)
    self.last = start

  def update(self, step: int, metrics: dict[str, float]) -> None:
    if self.bar is not None:
      self.bar.update(step - self.last)
      self.bar.set_postfix(
        loss=f"{metrics['loss']:.4f}",
        gnorm=f"{metrics['grad_norm']:.3f}",
        lr=f"{metrics['lr']:.2e}",
        tok_s=f"{metrics['tokens_per_s']:.0f}",
      )
    self.last = step

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
