"""Writing result files so that a crash leaves the old file or the new one, never a half-written one."""

import os

import jax


def atomic_write(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def check_writable_dir(path: str) -> None:
  """Creates `path` if needed and checks that a file can be written there; an error names the folder and why.

  gs:// and other remote paths are left to the libraries that write them (orbax, TensorBoard).
  """
  if "://" in path:
    return
  # Hosts sharing a folder (NFS) may have equal process ids: the name holds the host's index too.
  probe = os.path.join(path, f".driftjax_write_probe.{jax.process_index()}.{os.getpid()}")
  try:
    os.makedirs(path, exist_ok=True)
    with open(probe, "w") as f:
      f.write("")
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f"--workdir {path} is not a writable folder ({type(e).__name__}: {e.strerror})") from None
