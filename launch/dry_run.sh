# Sourced by launch/gpu_host.sh and launch/tpu_pod.sh: `--dry-run` as the first argument (or DRY_RUN=1) makes
# run() print each command, shell-quoted, instead of running it.
DRY_RUN=${DRY_RUN:-0}
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
  shift
fi
# Runs a command, or prints it under --dry-run.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}
