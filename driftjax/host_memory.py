"""The host process's memory: hand the heap's free pages back to the operating system.

Compiling a large XLA program on the CPU leaves most of the compiler's working memory freed but still resident
(glibc's malloc keeps freed pages for reuse), and the step's own buffers are then allocated beside it: on the
default config (8 + 8 rows, 256 tokens) about 0.8 GiB of the step's peak resident memory. glibc's
malloc_trim(0) returns those pages; elsewhere (other C libraries, macOS) there is nothing to call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc():
  name = ctypes.util.find_library("c")
  return ctypes.CDLL(name) if name else None


def release_free_heap() -> bool:
  """malloc_trim(0) where the C library is glibc; True if it ran."""
  libc = _libc()
  trim = getattr(libc, "malloc_trim", None) if libc is not None else None
  if trim is None:
    return False
  trim(0)
  return True
