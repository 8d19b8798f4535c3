#!/usr/bin/env bash
# Train driftjax on one host with several GPUs: one process drives every local GPU through a single mesh
# (data parallel; add --config.train.fsdp=True for generators that do not fit replicated).
#
#   bash launch/gpu_host.sh setup    # install with CUDA jaxlib into .venv
#   bash launch/gpu_host.sh train    # start or resume (same WORKDIR resumes from its latest checkpoint)
#   bash launch/gpu_host.sh --dry-run train   # (or DRY_RUN=1) print the commands instead of running them
#
# For several GPU hosts, run `train` on each with JAX_COORDINATOR_ADDRESS=host0:1234, JAX_NUM_PROCESSES=N and
# JAX_PROCESS_ID=i set: driftjax then calls jax.distributed.initialize() and all hosts form one mesh.
set -euo pipefail

# --dry-run (or DRY_RUN=1): run() prints each command instead (sourced without arguments, so its `shift`
# consumes this script's --dry-run).
source "$(dirname "${BASH_SOURCE[0]}")/dry_run.sh"

# ---- Set these. ----------------------------------------------------------------------------------------------
WORKDIR=${WORKDIR:-runs/default}    # Local disk, NFS, or gs:// (shared by all hosts when there are several).
CONFIG=${CONFIG:-configs/default.py}
EXTRA_FLAGS=${EXTRA_FLAGS:-"--config.model.dtype=bfloat16 --config.encoder.dtype=bfloat16 --config.data.groups=8"}
CUDA_EXTRA=${CUDA_EXTRA:-cuda12}
# ---------------------------------------------------------------------------------------------------------------

cd "$(dirname "$0")/.."
case "${1:-}" in
  setup)
    run python3 -m venv .venv
    run .venv/bin/pip install -q -U pip
    run .venv/bin/pip install -q -e . "jax[$CUDA_EXTRA]"
    ;;
  train)
    if [[ "$DRY_RUN" == 1 && -n "${JAX_COORDINATOR_ADDRESS:-}" ]]; then
      echo "# process ${JAX_PROCESS_ID:-?} of ${JAX_NUM_PROCESSES:-?}, coordinator $JAX_COORDINATOR_ADDRESS"
    fi
    run .venv/bin/python -m driftjax.main --config="$CONFIG" --workdir="$WORKDIR" $EXTRA_FLAGS
    ;;
  *)
    echo "usage: $0 [--dry-run] setup|train" >&2
    exit 2
    ;;
esac
