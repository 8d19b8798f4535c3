"""Faults: SIGKILL at random moments (saves included) and corrupted or truncated newest checkpoints.

Every case ends at the parameters of an uninterrupted run, and no good checkpoint is lost.
"""

import os
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from driftjax import build
from driftjax import checkpoint
from driftjax import train
from driftjax import train_state
from train_test import params_of, saved_steps, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _damage(step_dir: str, how: str) -> int:
  """Truncates (to half) or overwrites with random bytes every file of the step's state; returns how many."""
  rng = np.random.default_rng(0)
  n = 0
  for root, _, names in os.walk(os.path.join(step_dir, "state")):
    for name in names:
      path = os.path.join(root, name)
      size = os.path.getsize(path)
      with open(path, "r+b") as f:
        if how == "truncate":
          f.truncate(size // 2)
        else:
          f.write(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
      n += 1
  return n


_FULL = {}


def _uninterrupted(tmp_path_factory):
  """Parameters of the uninterrupted 6-step run (computed once for both damage kinds)."""
  if "params" not in _FULL:
    config = tiny_config(total_steps=6)
    config.train.checkpoint_every = 2
    _FULL["params"] = params_of(train.run(config, str(tmp_path_factory.mktemp("full")))["state"])
  return _FULL["params"]


@pytest.mark.parametrize("how", ["truncate", "corrupt"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, tmp_path_factory, how, caplog):
  config = tiny_config(total_steps=6)
  config.train.checkpoint_every, config.train.keep_checkpoints = 2, 5
  full_params = _uninterrupted(tmp_path_factory)
  run = tmp_path / "run"
  config.train.stop_after_steps = 4
  train.run(config, str(run))
  assert sorted(os.listdir(run / "checkpoints")) == ["2", "4"]
  assert _damage(str(run / "checkpoints" / "4"), how) > 0
  config.train.stop_after_steps = 0
  resumed = train.run(config, str(run))
  assert "checkpoint step 4 in" in caplog.text and "could not be restored" in caplog.text
  assert resumed["history"][0]["step"] == 3  # It went on from step 2.
  chex.assert_trees_all_close(params_of(resumed["state"]), full_params, atol=1e-6)
  assert sorted(os.listdir(run / "checkpoints")) == ["2", "4", "6"]  # The good step 2 is kept.
  aside = os.listdir(run / "checkpoints_unreadable")
  assert len(aside) == 1 and aside[0].startswith("4.")  # Moved, not deleted.


def _main(workdir, *extra):
  cmd = [
    sys.executable,
    "-m",
    "driftjax.main",
    "--config=configs/smoke.py",
    f"--workdir={workdir}",
    "--config.drift.layers=(2,)",
    "--config.drift.poolings=('pos','mean','win4_std')",
    "--config.data.n_gen=8",
    "--config.data.n_pos=8",
    "--config.data.queue_size=8",
    "--config.optim.warmup_steps=2",
    "--config.optim.total_steps=10",
    "--config.train.log_every=1",
    "--config.train.checkpoint_every=1",
    "--config.train.keep_checkpoints=2",
    *extra,
  ]
  return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigkill_at_random_moments_resumes_to_the_uninterrupted_result(tmp_path):
  """Saves happen every step (async), so kills land before, during and between saves."""
  workdir = str(tmp_path / "killed")
  rng = np.random.default_rng(0)
  kills = 0
  for _ in range(2):
    proc = _main(workdir)
    metrics = os.path.join(workdir, "metrics.jsonl")
    start = len(open(metrics).readlines()) if os.path.exists(metrics) else 0
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      if os.path.exists(metrics) and len(open(metrics).readlines()) > start:
        break  # Training is under way: kill within the next ~1.5 steps' time.
      time.sleep(0.05)
    if proc.poll() is not None:
      break
    time.sleep(float(rng.uniform(0.0, 0.05)))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    kills += 1
  assert kills == 2
  proc = _main(workdir)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert saved_steps(workdir)[-1] == 10
  # The uninterrupted run, in this process with the same settings.
  from configs import smoke

  config = smoke.get_config()
  config.drift.layers, config.drift.poolings = (2,), ("pos", "mean", "win4_std")
  config.data.n_gen = config.data.n_pos = config.data.queue_size = 8
  config.optim.warmup_steps, config.optim.total_steps = 2, 10
  config.train.async_checkpoints, config.train.checkpoint_every = False, 5
  full = train.run(config, str(tmp_path / "full"))
  encoder, tokenizer = build.load_encoder_and_tokenizer(config, workdir)
  spec = train_state.generator_spec(config, encoder, tokenizer)
  restored, step = checkpoint.restore(workdir, {"params": spec.abstract_params})
  params = restored["params"]
  assert step == 10
  chex.assert_trees_all_close(jax.device_get(params), params_of(full["state"]), atol=1e-6)
