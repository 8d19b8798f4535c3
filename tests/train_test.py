"""Training: end to end, checkpoints and resume, SIGTERM, queue, schedule and EMA, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import smoke
from driftjax import train
from driftjax import train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SMALL_VOCAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata", "tiny_bpe")


def tiny_config(total_steps=6, small_vocab=False) -> ml_collections.ConfigDict:
  """The smoke config, cut further so that each compile takes seconds. small_vocab: the tokenizer is a 512-token
  BPE (testdata/make_tiny_bpe.py) instead of GPT-2's 50,257, for programs that work over the whole vocabulary."""
  config = smoke.get_config()
  if small_vocab:
    config.encoder.tokenizer = SMALL_VOCAB
  config.drift.layers = (2,)
  config.drift.poolings = ("pos", "mean", "win4_std")
  config.data.n_gen = 8
  config.data.n_pos = 8
  config.data.queue_size = 8
  config.optim.warmup_steps = 2
  config.optim.total_steps = total_steps
  config.train.log_every = 1
  config.train.checkpoint_every = 3
  config.train.async_checkpoints = False
  return config


def params_of(state):
  return jax.device_get(state["params"])


def test_resumed_run_equals_uninterrupted(tmp_path):
  config = tiny_config(total_steps=6)
  full = train.run(config, str(tmp_path / "full"))
  config.train.stop_after_steps = 4
  first = train.run(config, str(tmp_path / "split"))
  assert first["step"] == 4
  config.train.stop_after_steps = 0
  second = train.run(config, str(tmp_path / "split"))
  assert second["step"] == 6
  losses_full = [h["loss"] for h in full["history"]]
  losses_split = [h["loss"] for h in first["history"] + second["history"]]
  np.testing.assert_allclose(losses_split, losses_full, rtol=1e-6)
  chex.assert_trees_all_close(params_of(second["state"]), params_of(full["state"]), atol=1e-6)
  chex.assert_trees_all_close(jax.device_get(second["state"]["queue"]), jax.device_get(full["state"]["queue"]))
  # The run wrote metrics for TensorBoard and a JSON-lines copy.
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "full" / "tb"))
  with open(tmp_path / "full" / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == list(range(1, 7))
  assert {"loss", "grad_norm", "lr", "tokens_per_s", "step_time_s"} <= set(rows[0])
  assert any(k.startswith("raw_drift_norm/h2/pos/T") for k in rows[0])


def test_checkpoint_round_trip(tmp_path):
  from driftjax import checkpoint as ckpt

  config = tiny_config()
  trainer = train.setup(config, str(tmp_path))
  state = trainer.init_state()
  state, _ = trainer.step_fn(state, trainer.next_batch(), trainer.enc_state)
  mngr = ckpt.make_manager(str(tmp_path), keep=2, async_save=False)
  ckpt.save(mngr, 1, state, trainer.data_iter, force=True)
  expected_next = np.asarray(next(trainer.data_iter))
  abstract = trainer.spec.abstract()
  restored, step = ckpt.restore(str(tmp_path), abstract, data_iter=trainer.data_iter, mngr=mngr)
  assert step == 1
  chex.assert_trees_all_close(jax.device_get(restored), jax.device_get(state))
  np.testing.assert_array_equal(np.asarray(next(trainer.data_iter)), expected_next)  # Data position too.


def test_train_step_updates_queue_fifo(tmp_path):
  config = tiny_config()
  config.data.queue_size = 12  # 1.5 batches of 8 per group.
  trainer = train.setup(config, str(tmp_path))
  state = trainer.init_state()
  assert float(state["queue_filled"].sum()) == 0  # Empty slots weigh nothing at the start.
  batches = [trainer.next_batch() for _ in range(3)]
  for b in batches:
    state, metrics = trainer.step_fn(state, b, trainer.enc_state)
  queue = np.asarray(state["queue"])[0]
  np.testing.assert_array_equal(queue[:8], np.asarray(batches[2]))
  np.testing.assert_array_equal(queue[8:], np.asarray(batches[1])[:4])
  assert float(state["queue_filled"].min()) == 1.0
  assert np.isfinite(float(metrics["loss"]))


def test_learning_rate_schedule_and_ema_by_hand():
  optim = ml_collections.ConfigDict(
    dict(
      lr=1.0,
      b1=0.9,
      b2=0.95,
      weight_decay=0.0,
      warmup_steps=4,
      total_steps=12,
      final_lr_fraction=0.1,
      clip=1e9,
      ema_decay=0.9,
    )
  )
  _, schedule = train_step.make_optimizer(optim)
  assert float(schedule(0)) == 0.0
  assert float(schedule(2)) == pytest.approx(0.5)  # Linear warmup.
  assert float(schedule(4)) == pytest.approx(1.0)
  # Cosine from 1.0 at step 4 to 0.1 at step 12: halfway (step 8) is 0.1 + 0.9 * 0.5.
  assert float(schedule(8)) == pytest.approx(0.55)
  assert float(schedule(12)) == pytest.approx(0.1)
  ema = {"w": jnp.array(0.0)}
  for value in (1.0, 1.0, 2.0):
    ema = optax.incremental_update({"w": jnp.array(value)}, ema, 1 - optim.ema_decay)
  # 0 -> 0.1 -> 0.19 -> 0.19 * 0.9 + 0.2 = 0.371
  assert float(ema["w"]) == pytest.approx(0.371)


def test_bad_warmup_is_an_error():
  config = tiny_config()
  config.optim.warmup_steps = 10
  with pytest.raises(ValueError, match=r"optim.warmup_steps=10 must be in \[0, optim.total_steps=6\)"):
    train_step.make_optimizer(config.optim)


def test_missing_data_file_is_a_clear_error(tmp_path):
  config = tiny_config()
  config.data.source = f"files:{tmp_path}/nothing*.txt"
  with pytest.raises(FileNotFoundError, match="nothing\\*.txt matches no file"):
    train.run(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def _run_main(workdir, *extra, **popen):
  cmd = [
    sys.executable,
    "-m",
    "driftjax.main",
    "--config=configs/smoke.py",
    f"--workdir={workdir}",
    "--config.drift.layers=(2,)",
    "--config.drift.poolings=('pos','mean')",
    *extra,
  ]
  return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_smoke_config_end_to_end(tmp_path):
  proc = _run_main(tmp_path)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20"]
  assert os.path.exists(tmp_path / "random_gpt2" / "model.safetensors")


def saved_steps(workdir) -> list[int]:
  """The steps of DIR/checkpoints, ascending (entries that are not a step number are not counted)."""
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(path) if s.isdigit()) if os.path.isdir(path) else []


def test_sigterm_leaves_a_restorable_checkpoint(tmp_path):
  long_run = (
    "--config.optim.total_steps=100000",
    "--config.optim.warmup_steps=10",
    "--config.train.checkpoint_every=100000",
  )
  proc = _run_main(tmp_path, *long_run, "--config.train.log_every=1")
  metrics = tmp_path / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  steps = saved_steps(tmp_path)
  assert len(steps) == 1 and 2 <= steps[0] < 100000
  # A new run in the same directory resumes from it: the same settings (so the same compiled program), stopped
  # two steps later.
  proc = _run_main(tmp_path, *long_run, "--config.train.stop_after_steps=2")
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert f"resumed from step {steps[0]}" in err
  assert saved_steps(tmp_path)[-1] == steps[0] + 2


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = tiny_config()
  trainer = train.setup(config, str(tmp_path))
  real_step = trainer.step
  calls = {"n": 0}

  def step_that_blows_up(state, batch):
    state, metrics = real_step(state, batch)
    calls["n"] += 1
    if calls["n"] >= 5:
      metrics = dict(metrics, loss=jnp.float32(jnp.nan))
    return state, metrics

  trainer.step = step_that_blows_up
  with pytest.raises(
    train.NonFiniteLossError,
    match=r"loss is nan at step 5: stopping; the last good "
    r"checkpoint \(step 3\)",
  ):
    train.run(config, str(tmp_path), trainer=trainer)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3"]
  # It restores: a fresh run resumes from it.
  config.train.stop_after_steps = 1
  resumed = train.run(config, str(tmp_path))
  assert resumed["history"][0]["step"] == 4
