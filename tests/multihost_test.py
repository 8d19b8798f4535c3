"""Two processes on one machine as one multi-host run: jax.distributed on localhost, 2 fake CPU devices each.

One scenario (a single test, so that pytest-xdist never runs it twice): a fresh run in an empty folder, stopped by
SIGTERM to one process, resumed, and compared with a one-process run of the same global batches.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np

from configs import smoke
from driftjax import build
from driftjax import checkpoint
from driftjax import train_state
from conftest import xla_flags
from train_test import saved_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# configs/smoke.py cut further (see train_test.tiny_config): each host compiles the step in seconds.
OVERRIDES = {
  "model.depth": 1,
  "encoder.random.n_layer": 1,
  "drift.layers": (1,),
  "drift.poolings": ("pos", "mean"),
  "data.n_gen": 8,
  "data.n_pos": 8,  # 8 rows a step: 4 per host, 2 per device.
  "data.queue_size": 8,
  "optim.warmup_steps": 2,
  "optim.total_steps": 100000,
  "train.checkpoint_every": 100000,  # Only SIGTERM and stop_after_steps save.
  "train.log_every": 1,
}


def run_config() -> ml_collections.ConfigDict:
  """The config that the two hosts get from configs/smoke.py and the --config flags of OVERRIDES."""
  config = smoke.get_config()
  for key, value in OVERRIDES.items():
    *sections, name = key.split(".")
    node = config
    for section in sections:
      node = node[section]
    node[name] = value
  return config


# The one-process run: 4 devices (the two hosts' mesh), the global batch of each step made of host 0's rows then
# host 1's, each host's rows drawn from the shard that host reads (data/pipeline.py shards by process index).
# Its parameters after `steps` steps go to an .npz file, in the order of jax.tree.leaves.
REFERENCE = r"""
import sys
from unittest import mock
import jax
import numpy as np
sys.path[:0] = [".", "tests"]
from tests.multihost_test import run_config
from driftjax import build, train
from driftjax.data import pipeline

workdir, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
config = run_config()
trainer = train.setup(config, workdir)  # Reads the random encoder the two hosts wrote.
per_host = config.data.groups * config.data.n_pos // 2

def host_iterator(host):
  with mock.patch.object(jax, "process_count", return_value=2), mock.patch.object(jax, "process_index", return_value=host):
    return build.corpus(config).train_iterator(trainer.tokenizer, per_host, pipeline.CorpusStats())

hosts = [host_iterator(0), host_iterator(1)]
state = trainer.init_state()
for _ in range(steps):
  rows = np.concatenate([np.asarray(next(it), np.int32) for it in hosts])
  batch = jax.make_array_from_process_local_data(trainer.batch_sharding, rows)
  state, _ = trainer.step_fn(state, batch, trainer.enc_state)
assert jax.device_count() == 4
np.savez(out, *jax.tree.leaves(jax.device_get(state["params"])))
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(**extra) -> dict:
  # The test session's JAX_COMPILATION_CACHE_DIR (conftest.py) is inherited: the second run compiles nothing.
  return dict(os.environ, JAX_PLATFORMS="cpu", **extra)


class TwoHosts:
  """`python -m driftjax.main` twice, as processes 0 and 1 of one job; each one's stderr in DIR/../host<i>.<n>.log."""

  def __init__(self, workdir, name: str, *extra: str):
    port = _free_port()
    flags = [f"--config.{k}={v!r}" for k, v in OVERRIDES.items()] + list(extra)
    self.logs = [os.path.join(os.path.dirname(workdir), f"host{i}.{name}.log") for i in range(2)]
    self.procs = []
    for i, log in enumerate(self.logs):
      env = _env(
        JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
        JAX_NUM_PROCESSES="2",
        JAX_PROCESS_ID=str(i),
        XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=2"),
      )
      cmd = [sys.executable, "-m", "driftjax.main", "--config=configs/smoke.py", f"--workdir={workdir}", *flags]
      with open(log, "w") as f:
        self.procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=f))

  def wait(self, timeout: float) -> list[str]:
    """Both processes' logs, once both have exited 0 (else both are killed and the assertion shows their logs)."""
    deadline = time.time() + timeout
    try:
      codes = [p.wait(timeout=max(1.0, deadline - time.time())) for p in self.procs]
    except subprocess.TimeoutExpired:
      codes = None
    finally:
      for p in self.procs:
        if p.poll() is None:
          p.kill()
          p.wait()
    logs = [open(log).read() for log in self.logs]
    assert codes == [0, 0], f"exit codes {codes}:\n" + "\n".join(
      f"--- host {i}:\n{t[-3000:]}" for i, t in enumerate(logs)
    )
    return logs


def test_two_processes_train_stop_on_sigterm_and_resume_like_one(tmp_path):
  workdir = str(tmp_path / "run")  # Empty: process 0 writes the random encoder, config.json and model.json.
  run = TwoHosts(workdir, "first")
  metrics = tmp_path / "run" / "metrics.jsonl"  # Process 0 writes it, one step late.
  deadline = time.time() + 240
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
    if any(p.poll() is not None for p in run.procs):
      break
    time.sleep(0.2)
  run.procs[1].send_signal(signal.SIGTERM)  # Only process 1 is preempted; process 0 learns it from JAX.
  logs = run.wait(timeout=120)
  steps = saved_steps(workdir)
  assert len(steps) == 1 and 2 <= steps[0] < 100000, steps
  k = steps[0]
  for i, log in enumerate(logs):
    assert f"preemption notice: every host saves a checkpoint at step {k}" in log, log[-3000:]
    assert f"data: host {i} of 2 reads rows {i}::2" in log  # The shard each host declares; checked below.
    assert "fresh start" in log
  for name in ("config.json", "model.json", "random_gpt2/model.safetensors"):
    assert os.path.exists(os.path.join(workdir, name)), name

  # Resumed by a new two-process job: both restore the newest checkpoint (the grain position of each host's
  # shard with it) and stop two steps later.
  logs = TwoHosts(workdir, "resumed", "--config.train.stop_after_steps=2").wait(timeout=240)
  for log in logs:
    assert f"resumed from step {k}" in log, log[-3000:]
  assert saved_steps(workdir)[-1] == k + 2

  # One process runs the same k + 2 steps uninterrupted. Not at the same time as the two hosts: on a loaded
  # machine a starved host can miss the 30 s in which the other waits for it at a CPU collective (Gloo).
  reference = str(tmp_path / "reference.npz")
  proc = subprocess.run(
    [sys.executable, "-c", REFERENCE, workdir, str(k + 2), reference],
    cwd=ROOT,
    env=_env(XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=4")),
    capture_output=True,
    text=True,
    timeout=240,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]

  # The two hosts' checkpoint holds the parameters of the one-process run on the same global batches: the hosts
  # read rows 0::2 and 1::2 (had they read the same rows, the batches and so the parameters would differ), and
  # the interrupted, resumed run equals an uninterrupted one.
  config = run_config()
  encoder, tokenizer = build.load_encoder_and_tokenizer(config, workdir, write=False)
  spec = train_state.generator_spec(config, encoder, tokenizer)
  restored, step = checkpoint.restore(workdir, {"params": spec.abstract_params})
  assert step == k + 2
  with np.load(reference) as expected:
    ours = jax.tree.leaves(jax.device_get(restored["params"]))
    assert len(expected.files) == len(ours)
    for i, leaf in enumerate(ours):
      np.testing.assert_allclose(leaf, expected[f"arr_{i}"], atol=1e-5, rtol=0)
