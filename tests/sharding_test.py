"""8 fake CPU devices (in a subprocess): data parallel and FSDP give the 1-device losses for the same batch."""

import json
import os
import subprocess
import sys

import numpy as np

from conftest import xla_flags
from driftjax import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json, sys
import jax
sys.path.insert(0, ".")
from tests.train_test import tiny_config
from driftjax import train

out = {}
for name, devices, fsdp in (("one", 1, False), ("dp8", 8, False), ("fsdp8", 8, True)):
  config = tiny_config()
  config.data.groups = 8  # Groups shard over the data axis.
  config.data.n_gen = 4
  config.data.n_pos = 4
  config.data.queue_size = 4
  config.model.depth = 1  # Smaller programs compile faster; the layout rules do not depend on depth.
  config.drift.poolings = ("pos", "mean")
  config.train.num_devices = devices
  config.train.fsdp = fsdp
  trainer = train.setup(config, sys.argv[1] + "/" + name)
  state = trainer.init_state()
  losses = []
  for _ in range(3):
    state, metrics = trainer.step_fn(state, trainer.next_batch(), trainer.enc_state)
    losses.append(float(metrics["loss"]))
  leaf = jax.tree.leaves(state["params"])[0]
  out[name] = {"losses": losses, "devices": len(leaf.sharding.device_set),
               "param_sharded": any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated
                                    for x in jax.tree.leaves(state["params"]))}
print("RESULT" + json.dumps(out))
"""


def test_fsdp_spec_rules():
  assert sharding.fsdp_spec((1024, 768), 8) == jax_spec("data", None)
  assert sharding.fsdp_spec((768, 3072), 8) == jax_spec(None, "data")
  assert sharding.fsdp_spec((10,), 8) == jax_spec()  # Small: replicated.
  assert sharding.fsdp_spec((1001, 999), 8) == jax_spec()  # Indivisible: replicated.


def jax_spec(*axes):
  from jax.sharding import PartitionSpec

  return PartitionSpec(*axes)


def test_eight_devices_match_one(tmp_path):
  env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=8"), JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.split("RESULT")[-1])
  assert result["dp8"]["devices"] == 8 and result["one"]["devices"] == 1
  assert result["fsdp8"]["param_sharded"] and not result["dp8"]["param_sharded"]
  np.testing.assert_allclose(result["dp8"]["losses"], result["one"]["losses"], rtol=1e-5)
  np.testing.assert_allclose(result["fsdp8"]["losses"], result["one"]["losses"], rtol=1e-5)
