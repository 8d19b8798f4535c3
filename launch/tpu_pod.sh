#!/usr/bin/env bash
# Train driftjax on a Cloud TPU pod slice: every worker runs the same command; jax.distributed.initialize()
# finds the other hosts by itself on Cloud TPU, and all hosts share one gs:// workdir (orbax writes each host's
# shards there; no host gathers the state).
#
#   bash launch/tpu_pod.sh create    # make the TPU VM (once)
#   bash launch/tpu_pod.sh setup     # copy this checkout to every worker and install it
#   bash launch/tpu_pod.sh train     # start (or resume: the same command picks up DIR's latest checkpoint)
#   bash launch/tpu_pod.sh logs      # follow worker 0's log
#   bash launch/tpu_pod.sh delete
#   bash launch/tpu_pod.sh --dry-run train   # (or DRY_RUN=1) print the commands instead of running them
#
# A preempted spot/queued slice gets SIGTERM: the run saves a checkpoint and exits; rerun `train` on a new
# slice with the same WORKDIR to resume.
set -euo pipefail

# ---- Set these. ----------------------------------------------------------------------------------------------
PROJECT=${PROJECT:-my-gcp-project}
ZONE=${ZONE:-us-central2-b}
TPU_NAME=${TPU_NAME:-driftjax-v4-32}
ACCELERATOR=${ACCELERATOR:-v4-32}           # A pod slice: several hosts of 4 chips.
RUNTIME=${RUNTIME:-tpu-ubuntu2204-base}
WORKDIR=${WORKDIR:-gs://my-bucket/driftjax/run1}   # Shared by all hosts; holds checkpoints and TensorBoard files.
CONFIG=${CONFIG:-configs/default.py}
EXTRA_FLAGS=${EXTRA_FLAGS:-"--config.model.dtype=bfloat16 --config.encoder.dtype=bfloat16 --config.data.groups=32"}
# ---------------------------------------------------------------------------------------------------------------

# --dry-run (or DRY_RUN=1): run() prints each command instead (sourced without arguments, so its `shift`
# consumes this script's --dry-run).
source "$(dirname "${BASH_SOURCE[0]}")/dry_run.sh"

ssh_all() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker=all --command="$1"
}

case "${1:-}" in
  create)
    run gcloud compute tpus tpu-vm create "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR" --version="$RUNTIME"
    ;;
  setup)
    run tar czf /tmp/driftjax.tgz --exclude=.venv --exclude=runs --exclude=.git -C "$(dirname "$0")/.." .
    run gcloud compute tpus tpu-vm scp /tmp/driftjax.tgz "$TPU_NAME":~/driftjax.tgz --project="$PROJECT" \
      --zone="$ZONE" --worker=all
    ssh_all "mkdir -p ~/driftjax && tar xzf ~/driftjax.tgz -C ~/driftjax && cd ~/driftjax && \
      python3 -m venv .venv && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e . 'jax[tpu]'"
    ;;
  train)
    # nohup: the run outlives the ssh session; each worker logs to ~/driftjax/train.log.
    ssh_all "cd ~/driftjax && DRIFTJAX_DISTRIBUTED=1 nohup .venv/bin/python -m driftjax.main --config=$CONFIG --workdir=$WORKDIR \
      $EXTRA_FLAGS > train.log 2>&1 &"
    ;;
  logs)
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --worker=0 \
      --command="tail -f ~/driftjax/train.log"
    ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" --project="$PROJECT" --zone="$ZONE" --quiet
    ;;
  *)
    echo "usage: $0 [--dry-run] create|setup|train|logs|delete" >&2
    exit 2
    ;;
esac
