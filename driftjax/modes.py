"""Dispatch from a mode name to the library call that runs it."""

import importlib
import os

from absl import logging
import jax
import ml_collections

from driftjax import files
from driftjax import run_config


MODES = ("train", "sample", "eval", "describe", "pretrain_encoder", "toy2d", "demo")


def maybe_initialize_distributed() -> None:
  """Joins a multi-host job when the environment describes one; a single host needs and does nothing.

  - JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID: explicit (GPU hosts; launch/gpu_host.sh);
  - DRIFTJAX_DISTRIBUTED=1 (launch/tpu_pod.sh), or a SLURM / Open MPI job of several tasks: JAX's own cluster
    detection (Cloud TPU pods, SLURM, Open MPI).
  """
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in env]
    if missing:
      raise ValueError(f"JAX_COORDINATOR_ADDRESS is set but {missing} are not")
    jax.distributed.initialize(
      coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
      num_processes=int(env["JAX_NUM_PROCESSES"]),
      process_id=int(env["JAX_PROCESS_ID"]),
    )
  elif (
    env.get("DRIFTJAX_DISTRIBUTED") == "1"
    or int(env.get("SLURM_NTASKS", "1")) > 1
    or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
  ):
    jax.distributed.initialize()
  else:
    logging.info("single host: jax.distributed not initialized")


# Each mode's module exposes run(config, workdir); imported only when that mode runs (toy2d needs no
# transformers, describe no data or checkpoints).
_MODULES = {
  "train": "driftjax.train",
  "sample": "driftjax.sample",
  "eval": "driftjax.evaluate",
  "describe": "driftjax.describe",
  "pretrain_encoder": "driftjax.pretrain",
  "toy2d": "driftjax.toy2d",
  "demo": "driftjax.demo",
}


def run(mode: str, config: ml_collections.ConfigDict | None, workdir: str) -> None:
  """Runs `mode`; config None (no --config): sample and eval read the run's DIR/config.json."""
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
  config = run_config.resolve(config, workdir, mode)  # Before anything is written.
  if mode != "describe":  # Fail before any work if results could not be written.
    files.check_writable_dir(workdir)
  importlib.import_module(_MODULES[mode]).run(config, workdir)
