"""Several processes (hosts) in one run: files that serve them all are written by process 0 while the others wait.

Every process must call these at the same points in the same order (each barrier is a collective; its name must
match on all hosts). A single process pays nothing: no barrier, no collective.
"""

from __future__ import annotations

from typing import Callable

import jax
from jax.experimental import multihost_utils


def is_first() -> bool:
  """Process 0: the one that writes the files every host reads (and summaries nobody else writes)."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """A barrier across all processes named `driftjax_<name>` (a mismatch of names between hosts is an error)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"driftjax_{name}")


def first_writes(name: str, write: Callable[[], object]) -> None:
  """Runs write() on process 0 only; every process returns once it is done (the barrier `name`).

  A write that fails on process 0 still reaches the barrier before its error propagates, so the other hosts go on
  to fail on the missing file instead of waiting for a collective to time out.
  """
  try:
    if is_first():
      write()
  finally:
    sync(name)
