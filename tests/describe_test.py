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
  proc = subprocess.run(
    [sys.executable, "-m", "driftjax.main", "--config=configs/default.py", f"--workdir={tmp_path}", "--mode=describe"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  info = json.loads(proc.stdout)
  assert {"generator_params", "encoder_params", "seq_len", "global_batch", "train_flops_per_step"} <= set(info)


def test_field_flops_match_the_actual_feature_shapes():
  """describe's field FLOPs against a count from the features the step really computes (real arrays)."""
  import jax
  import jax.numpy as jnp
  from driftjax import train_state
  from driftjax import train_step
  from driftjax.drift import features
  from driftjax.models import gpt2

  config = default_config.get_config()
  config.encoder.name = TINY
  config.model.seq_len = 32
  config.drift.layers = (1, 3)
  config.drift.poolings = ("pos", "mean", "win4_std", "win16_mean", "flat")
  config.data.groups, config.data.n_gen, config.data.n_pos, config.data.queue_size = 2, 3, 4, 5
  encoder = gpt2.load_gpt2(TINY)
  cfg = train_state.step_config(config, encoder.cfg.n_embd, encoder.cfg.vocab_size)
  d, n_temps = config.data, len(config.drift.temperatures)
  real = jnp.zeros((d.groups * (d.n_pos + d.queue_size), config.model.seq_len), jnp.int32)
  gen = encoder.embed(jnp.zeros((d.groups * d.n_gen, config.model.seq_len), jnp.int32))
  pos_feats = train_step.feature_dict(encoder, None, real, cfg)
  gen_feats = train_step.feature_dict(encoder, gen, None, cfg)
  expected = 0
  for key in gen_feats:
    x = features.to_groups(gen_feats[key], d.groups)  # (G * P, N, C)
    y = features.to_groups(pos_feats[key], d.groups)  # (G * P, M, C)
    groups, n, c = x.shape
    expected += groups * n * (n + y.shape[1]) * c * 2 * (1 + n_temps)
  info = describe.describe(config)
  assert info["train_flops_by_part"]["field"] == expected
  assert info["feature_shapes"]["h1/flat"] == [1, 32 * encoder.cfg.n_embd]  # All positions in one vector.
  assert info["feature_keys"] == 3 * 5 and jax.tree.leaves(gen_feats)


def test_demo_config_counts_flat_features_whole():
  from configs import demo as demo_config

  config = demo_config.get_config()
  info = describe.describe(config)  # No pretrained encoder yet: its shape comes from config.pretrain.
  width = config.model.seq_len * config.pretrain.n_embd
  assert info["feature_shapes"] == {k: [1, width] for k in ("raw/flat", "h1/flat", "h2/flat")}
  d, m, parts = config.data, config.drift.continuation_samples, info["train_flops_by_part"]
  # Continuation positives, own kernel: each sample against its own M repairs and the batch's samples; the LM
  # encodes no real story, and it reads each of the N M repairs whole (layers, attention, output head).
  assert config.drift.positives == "continuation" and config.drift.continuation_kernel == "own"
  assert parts["field"] == 3 * d.n_gen * (m + d.n_gen) * width * 2 * 4
  assert parts["encoder_real"] == 0 and parts["lm_candidates"] == 0
  e, length = config.pretrain, config.model.seq_len
  lm_token = 2 * e.n_layer * 12 * e.n_embd**2 + 4 * e.n_layer * length * e.n_embd + 2 * e.n_embd * e.bpe_vocab_size
  assert parts["lm_continuations"] == lm_token * d.n_gen * m * length
  assert parts["encoder_continuations"] == parts["encoder_generated"] / 2 * m  # Its feature layers, forward only.
  # The paper's variant: data positives only, each real story encoded, no LM pass.
  paper = describe.describe(demo_config.get_config("paper"))["train_flops_by_part"]
  d = demo_config.get_config("paper").data
  assert paper["field"] == 3 * d.n_gen * (d.n_gen + d.n_pos) * width * 2 * 4
  assert paper["encoder_real"] == paper["encoder_generated"] / 2 * d.n_pos / d.n_gen
  assert paper["lm_continuations"] == paper["encoder_continuations"] == 0
