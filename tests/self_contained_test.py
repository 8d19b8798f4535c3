"""The repository works on its own: no tracked file refers to a folder beside the checkout."""

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTSIDE = "../" + "shared"  # Spelt in two pieces so that this file does not name it itself.


def tracked_files() -> list[str]:
  try:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    pytest.skip("not a git checkout (an installed copy): nothing to scan")
  return [f for f in out.decode().split("\0") if f]


def test_no_tracked_file_refers_outside_the_repository():
  offenders = []
  for name in tracked_files():
    path = os.path.join(ROOT, name)
    if not os.path.isfile(path):
      continue  # Deleted in the working tree but still tracked.
    with open(path, "rb") as f:
      if OUTSIDE.encode() in f.read():
        offenders.append(name)
  assert not offenders, f"these tracked files refer to {OUTSIDE}, which a clone does not have: {offenders}"
