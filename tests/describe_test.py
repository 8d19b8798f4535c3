"""--mode=describe: sizes from abstract shapes only, and a FLOPs estimate."""

import json
import os
import subprocess
import sys

import pytest

from configs import default as default_config
from driftjax import describe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "testdata", "tiny_gpt2")


def test_default_config_is_the_seed_size():
  info = describe.describe(default_config.get_config())
  assert 120e6 <= info["generator_params"] <= 140e6
  assert info["encoder_params"] == 124_439_808  # GPT-2 small with tied embeddings.
  assert info["seq_len"] == 256 and info["global_batch"] == 128
  parts = info["train_flops_by_part"]
  assert info["train_flops_per_step"] == pytest.approx(sum(parts.values()))
  # The generator's share is about 6 * params * tokens.
  assert parts["generator"] == pytest.approx(6 * info["generator_params"] * 64 * 256, rel=0.15)


def test_local_encoder_folder_and_too_long_sequence():
  config = default_config.get_config()
  config.encoder.name = TINY
  config.model.seq_len = 64  # The tiny encoder has 32 positions.
  with pytest.raises(ValueError, match="model.seq_len=64 exceeds the encoder's 32 positions"):
    describe.describe(config)
  config.model.seq_len = 32
  config.drift.layers = (1, 2)
  info = describe.describe(config)
  assert info["encoder_layers"] == 3 and info["encoder_params"] < 1e6


def test_describe_mode_prints_one_json_object(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "driftjax.main", "--config=configs/default.py",
                         f"--workdir={tmp_path}", "--mode=describe"], cwd=ROOT, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  info = json.loads(proc.stdout)
  assert {"generator_params", "encoder_params", "seq_len", "global_batch", "train_flops_per_step"} <= set(info)
