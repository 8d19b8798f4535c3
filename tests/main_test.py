"""The command line: config files, locked overrides, modes."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, timeout=120):
  return subprocess.run(
    [sys.executable, "-m", "driftjax.main", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
  )


def test_misspelt_override_names_the_key(tmp_path):
  proc = run_main("--config=configs/toy2d.py", f"--workdir={tmp_path}", "--config.toy.stepz=3")
  assert proc.returncode != 0
  assert "stepz" in proc.stderr
  assert not os.listdir(tmp_path)  # Nothing written.


def test_override_of_wrong_type_is_an_error(tmp_path):
  proc = run_main("--config=configs/toy2d.py", f"--workdir={tmp_path}", "--config.toy.steps=many")
  assert proc.returncode != 0
  assert "toy.steps" in proc.stderr or "many" in proc.stderr


def test_unknown_mode_is_an_error(tmp_path):
  proc = run_main("--config=configs/toy2d.py", f"--workdir={tmp_path}", "--mode=dance")
  assert proc.returncode != 0
  assert "dance" in proc.stderr


def test_missing_config_file_is_an_error(tmp_path):
  proc = run_main("--config=configs/nope.py", f"--workdir={tmp_path}")
  assert proc.returncode != 0
  assert "nope.py" in proc.stderr


@pytest.mark.slow
def test_toy2d_mode_end_to_end(tmp_path):
  proc = run_main(
    "--config=configs/toy2d.py",
    f"--workdir={tmp_path}",
    "--config.toy.steps=20",
    "--config.toy.warmup_steps=2",
    "--config.toy.batch_gen=128",
    "--config.toy.batch_pos=128",
    "--config.toy.eval_samples=512",
    "--config.toy.targets=('two_modes',)",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert os.path.exists(tmp_path / "toy2d.json") and os.path.exists(tmp_path / "toy2d.png")
