"""One JAX compilation cache for the whole test session, shared with the subprocesses tests start.

Many tests build the same tiny trainer (train_test.tiny_config) in this process or in a `python -m
driftjax.main` subprocess; with the persistent cache each program is compiled once per session instead of once
per test. The cache lives in a fresh temporary folder (removed at the end), so no run depends on an earlier one;
a JAX_COMPILATION_CACHE_DIR set by the caller is used instead and kept. pytest-xdist workers inherit the folder
from the controller (JAX reads an entry it cannot decode as a miss, with a warning, and compiles again).
"""

import os
import shutil
import tempfile

_OWN_CACHE = None
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  _OWN_CACHE = tempfile.mkdtemp(prefix="driftjax-test-jax-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
# Cache the tiny trainers' programs (some compile in under JAX's default 1 s floor) but not the many single
# operations of eager code, whose files cost more than they save (with a 0 s floor the suite was no faster).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Compiling is most of the suite's time, and most of compiling is LLVM optimizing the generated CPU code. The tests
# check what the programs compute, not how fast: XLA's HLO passes run as always, only the machine code is less
# optimized (train_step_test + matched_test: 182 s -> 117 s on 2 cores; a tiny repair step's loss agrees to 1e-6
# relative, its parameters after 3 steps to 4e-5, and every test compares within one setting). Subprocesses that
# set their own XLA_FLAGS add to these (xla_flags). A caller's own level is kept. Training and benchmarks outside
# the tests use XLA's default.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()


def xla_flags(*flags: str) -> str:
  """The test session's XLA_FLAGS with these added, for a subprocess's environment."""
  return " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()


def pytest_sessionfinish(session, exitstatus):
  if _OWN_CACHE:
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
