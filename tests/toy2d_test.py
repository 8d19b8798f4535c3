"""The 2D toy end to end on a small budget: the metric falls, the collapsed start spreads, files are written."""

import json
import os

import jax
import numpy as np
import pytest

from configs import toy2d as toy2d_config
from driftjax import toy2d


def test_energy_distance_floor_and_separation():
  key1, key2, key3 = jax.random.split(jax.random.key(0), 3)
  a, b = toy2d.eight_gaussians(key1, 1024), toy2d.eight_gaussians(key2, 1024)
  far = toy2d.checkerboard(key3, 1024)
  same = toy2d.energy_distance(a, b)
  diff = toy2d.energy_distance(a, far)
  assert 0 <= same < 0.02 < diff
  np.testing.assert_allclose(toy2d.energy_distance(a, a), 0.0, atol=1e-12)


def test_mode_shares():
  pts = np.array([[-1.4, 0.1], [-1.6, 0.0], [1.5, 0.2], [-2.0, 1.0]], np.float32)
  assert toy2d.mode_shares(pts) == [0.75, 0.25]


def test_small_toy_run_learns_and_writes_files(tmp_path):
  config = toy2d_config.get_config()
  config.toy.targets = ("eight_gaussians", "two_modes")
  config.toy.steps = 600
  config.toy.warmup_steps = 50
  config.toy.batch_gen = 512
  config.toy.batch_pos = 512
  config.toy.hidden = 64
  config.toy.eval_samples = 1024
  config.toy.plot_samples = 256
  config.toy.log_every = 1000
  metrics = toy2d.run(config, str(tmp_path))
  with open(tmp_path / "toy2d.json") as f:
    assert json.load(f) == metrics
  assert os.path.getsize(tmp_path / "toy2d.png") > 10_000
  for name in ("eight_gaussians", "two_modes"):
    m = metrics[name]
    assert m["final"] < m["init"] / 20, m
  shares = metrics["two_modes"]
  assert shares["init_mode_shares"] == [1.0, 0.0]  # Started collapsed on the first mode ...
  assert min(shares["mode_shares"]) > 0.3, shares  # ... and drifted onto both.


def test_unknown_target_is_an_error(tmp_path):
  config = toy2d_config.get_config()
  config.toy.targets = ("moons",)
  with pytest.raises(ValueError, match=r"unknown toy2d targets \['moons'\]"):
    toy2d.run(config, str(tmp_path))
