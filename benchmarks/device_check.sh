#!/usr/bin/env bash
# The one prepared check for a lent NVIDIA GPU (docs/benchmarks.md): versions, the carried wheels (.whl/, from
# benchmarks/device_wheels.sh), then benchmarks/device_check.py, whose table is printed last. From the repository
# root: bash benchmarks/device_check.sh [--dry_run]. Each step is guarded: a failure is printed and the rest runs.
# Whole run: well under 8 minutes (the Python part has a 420 s deadline, each part its own cap).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
echo "== machine"
$PY --version
$PY -m pip list 2>/dev/null | grep -i -E "^(jax|jaxlib|jax-cuda13-plugin|jax-cuda13-pjrt|flax|optax|orbax-checkpoint|chex|etils|numpy|transformers|tokenizers|tensorstore|grain|ml.collections|tensorboardx|nltk) " || echo "pip list failed"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv \
  || echo "nvidia-smi failed"

echo "== carried wheels"
export PYTHONPATH=$PWD
if ls .whl/*.whl >/dev/null 2>&1; then
  rm -rf /tmp/site
  # --no-deps: the machine's own jax, jaxlib and CUDA plugin stay the ones imported (.whl/ holds none of them).
  if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl; then
    export PYTHONPATH=/tmp/site:$PWD
    ls /tmp/site | grep -i dist-info
  else
    echo "wheel install failed: running with the machine's packages only"
  fi
else
  echo "no .whl/*.whl here (carry .whl): running with the machine's packages only"
fi
$PY -c "
import jax, flax, optax
print('jax', jax.__version__, jax.__file__)
print('flax', flax.__version__, flax.__file__, '| optax', optax.__version__)
print(jax.devices())" || echo "import check failed"

echo "== measurements"
PYTHONUNBUFFERED=1 timeout 460 $PY benchmarks/device_check.py "$@"
echo "device_check.py exit code $?"
