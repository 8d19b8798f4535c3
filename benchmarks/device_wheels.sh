#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels that benchmarks/device_check.sh installs on a lent GPU machine,
# which has no network. Run once from the repository root, on a machine that reaches PyPI:
#   bash benchmarks/device_wheels.sh
# Carried: what that machine lacks (grain with array_record and portpicker, ml-collections, tensorboardX, nltk
# with defusedxml) and the pure-Python libraries whose API driftjax pins (flax, optax, orbax-checkpoint), at the
# versions that passed the dry run under jax 0.11.2 (docs/benchmarks.md): flax 0.12.12, since 0.12.8 does not
# import under jax 0.11.2 (jax.experimental.hijax has no HiPrimitive there). Never jax or jaxlib: the
# machine's own jax 0.11.2 and its CUDA plugin must be the ones imported. Its python3 is CPython 3.12, x86-64.
# Not carried: datasets (only hf: data sources import it; the device check uses data.source=synthetic).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(
  grain==0.2.18 array_record==0.8.6 portpicker==1.6.0
  ml_collections==1.1.0 tensorboardX==2.6.5 nltk==3.10.4 defusedxml==0.7.1
  flax==0.12.12 optax==0.2.8 orbax-checkpoint==0.12.8
)
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${WHEELS[@]}"
ls -l .whl
du -sh .whl
