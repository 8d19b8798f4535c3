"""launch/*.sh --dry-run (or DRY_RUN=1) prints the commands it would run and runs none of them."""

import os
import shlex
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dry_run(tmp_path, script: str, *args: str, **env: str) -> list[list[str]]:
  """The printed commands, split as the shell would; gcloud, tar and python3 on PATH are stand-ins that leave a
  file behind if they are ever run."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  ran = tmp_path / "ran"
  for name in ("gcloud", "tar", "python3"):
    stub = bin_dir / name
    stub.write_text(f"#!/bin/sh\necho {name} >> {ran}\n")
    stub.chmod(0o755)
  full_env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", **env)
  proc = subprocess.run(
    ["bash", os.path.join(ROOT, "launch", script), *args], env=full_env, capture_output=True, text=True, timeout=30
  )
  assert proc.returncode == 0, proc.stderr
  assert not ran.exists(), f"ran: {ran.read_text()}"
  return [shlex.split(line) for line in proc.stdout.splitlines() if line and not line.startswith("#")]


def test_gpu_host_train_prints_the_command_of_each_process(tmp_path):
  env = dict(WORKDIR=str(tmp_path / "run"), CONFIG="configs/smoke.py", EXTRA_FLAGS="--config.seed=3")
  multihost = dict(JAX_COORDINATOR_ADDRESS="127.0.0.1:1234", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="1")
  proc = subprocess.run(
    ["bash", os.path.join(ROOT, "launch", "gpu_host.sh"), "--dry-run", "train"],
    env=dict(os.environ, **env, **multihost),
    capture_output=True,
    text=True,
    timeout=30,
  )
  assert proc.returncode == 0, proc.stderr
  assert "# process 1 of 2, coordinator 127.0.0.1:1234" in proc.stdout
  (cmd,) = _dry_run(tmp_path, "gpu_host.sh", "--dry-run", "train", **env)
  assert cmd == [
    ".venv/bin/python",
    "-m",
    "driftjax.main",
    "--config=configs/smoke.py",
    f"--workdir={tmp_path / 'run'}",
    "--config.seed=3",
  ]
  assert not (tmp_path / "run").exists()


def test_gpu_host_setup_dry_run_with_the_environment_variable(tmp_path):
  cmds = _dry_run(tmp_path, "gpu_host.sh", "setup", DRY_RUN="1", CUDA_EXTRA="cuda13")
  assert cmds[0] == ["python3", "-m", "venv", ".venv"]
  assert cmds[-1][-1] == "jax[cuda13]" and cmds[-1][:3] == [".venv/bin/pip", "install", "-q"]


@pytest.mark.parametrize("action", ["create", "setup", "train", "logs", "delete"])
def test_tpu_pod_dry_run_prints_gcloud_commands(tmp_path, action):
  env = dict(TPU_NAME="pod-x", ZONE="zone-y", PROJECT="proj-z", WORKDIR="gs://bucket/run", CONFIG="configs/default.py")
  cmds = _dry_run(tmp_path, "tpu_pod.sh", "--dry-run", action, **env)
  gcloud = [c for c in cmds if c[0] == "gcloud"]
  for c in gcloud:  # Each names the slice, its zone and its project.
    assert {"--zone=zone-y", "--project=proj-z"} <= set(c) and any(a.split(":")[0] == "pod-x" for a in c), c
  assert gcloud
  if action == "train":
    (cmd,) = cmds
    assert "--worker=all" in cmd
    remote = [a for a in cmd if a.startswith("--command=")][0]
    assert "DRIFTJAX_DISTRIBUTED=1" in remote
    assert "-m driftjax.main --config=configs/default.py --workdir=gs://bucket/run" in remote
  if action == "setup":
    assert cmds[0][0] == "tar" and any("--worker=all" in c for c in gcloud)
