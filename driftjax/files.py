"""Writing result files so that a crash leaves the old file or the new one, never a half-written one."""

import os


def atomic_write(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)
