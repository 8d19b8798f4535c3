"""The step's pieces: fused per-key field calls equal separate ones; the jitted step compiles once."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from driftjax import train
from driftjax.drift import features as feat_lib
from driftjax.drift import field as field_lib
from driftjax.drift import losses as losses_lib
from train_test import tiny_config


def test_fused_keys_equal_one_field_call_per_key():
  field_cfg = field_lib.FieldConfig()
  keys = jax.random.split(jax.random.key(0), 12)
  shapes = {"raw/pos": (3, 6), "h1/pos": (3, 6), "h2/pos": (3, 6), "h1/mean": (1, 6), "h2/mean": (1, 7)}
  gen = {k: jax.random.normal(keys[i], (8, *s)) for i, (k, s) in enumerate(shapes.items())}
  pos = {k: jax.random.normal(keys[6 + i], (10, *s)) for i, (k, s) in enumerate(shapes.items())}
  w = jnp.array([[1.0, 1, 1, 0, 2], [1, 1, 1, 1, 1]])

  def separate(gen):
    total, out = 0.0, {}
    for name in gen:
      x, y = feat_lib.to_groups(gen[name], 2), feat_lib.to_groups(pos[name], 2)
      loss, _ = field_lib.drift_loss(x, y, pos_weights=jnp.repeat(w, x.shape[0] // 2, axis=0), config=field_cfg)
      total, out[f"loss/{name}"] = total + loss, loss
    return total, out

  fused, metrics = jax.jit(lambda g: losses_lib.drift_losses(g, pos, w, 2, field_cfg))(gen)
  ref, ref_metrics = jax.jit(separate)(gen)
  np.testing.assert_allclose(fused, ref, rtol=1e-5)
  for name in shapes:
    np.testing.assert_allclose(metrics[f"loss/{name}"], ref_metrics[f"loss/{name}"], rtol=1e-5)
    assert f"raw_drift_norm/{name}/T0.02" in metrics and f"scale/{name}" in metrics
  g_fused = jax.jit(jax.grad(lambda g: losses_lib.drift_losses(g, pos, w, 2, field_cfg)[0]))(gen)
  g_ref = jax.jit(jax.grad(lambda g: separate(g)[0]))(gen)
  chex.assert_trees_all_close(g_fused, g_ref, rtol=1e-4, atol=1e-6)


def test_train_step_compiles_once(tmp_path):
  config = tiny_config()
  trainer = train.setup(config, str(tmp_path))
  state = trainer.init_state()
  compiles = []
  listener = lambda event, duration, **kw: compiles.append(event) if "backend_compile" in event else None
  state, _ = trainer.step(state, trainer.next_batch())  # The one compilation (what the train loop calls).
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    for _ in range(4):
      state, metrics = trainer.step(state, trainer.next_batch())
    float(metrics["loss"])
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiles == [], f"{len(compiles)} compilations in 4 steps after the first"
  assert int(state["step"]) == 5


def test_remat_gives_same_loss_and_gradients(tmp_path):
  """model.remat and encoder.remat change what is kept for the backward pass, not what the step computes."""
  results = []
  for remat in (False, True):
    config = tiny_config()
    config.model.remat = config.encoder.remat = remat
    trainer = train.setup(config, str(tmp_path / str(remat)))
    state, batch = trainer.init_state(), trainer.next_batch()
    jaxpr = str(jax.make_jaxpr(trainer.step_fn)(state, batch, trainer.enc_state))
    assert ("remat2[" in jaxpr) == remat, "the remat switches must reach the traced step"  # jax.checkpoint's name.
    state, metrics = trainer.step_fn(state, batch, trainer.enc_state)
    results.append((jax.device_get(metrics), jax.device_get(state["opt_state"])))
  (plain, plain_opt), (remat, remat_opt) = results
  np.testing.assert_allclose(remat["loss"], plain["loss"], rtol=1e-6)
  np.testing.assert_allclose(remat["grad_norm"], plain["grad_norm"], rtol=1e-5)
  # After one step Adam's moments are (1 - b1) g and (1 - b2) g^2 of the clipped gradient g: compare those,
  # each leaf to 1e-5 of its largest entry (float32 rounding: XLA fuses the recomputed forward differently).
  jax.tree.map(
    lambda r, p: np.testing.assert_allclose(r, p, rtol=1e-5, atol=1e-5 * np.abs(p).max()), remat_opt, plain_opt
  )


def test_bfloat16_step_follows_the_float32_one(tmp_path):
  """bfloat16 compute (products accumulated in float32, driftjax/models/matmul.py) in the generator and the
  encoder: the same loss to 1% and a first update in the same direction (Adam's first moment after one
  step is (1 - b1) times the clipped gradient)."""
  results = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_config()
    config.model.dtype = config.encoder.dtype = dtype
    trainer = train.setup(config, str(tmp_path / dtype))
    state, metrics = trainer.step(trainer.init_state(), trainer.next_batch())
    mu = jax.tree.leaves(jax.device_get(optax.tree_utils.tree_get(state["opt_state"], "mu")))
    results[dtype] = (float(metrics["loss"]), np.concatenate([np.ravel(m) for m in mu]))
  (loss32, g32), (loss16, g16) = results["float32"], results["bfloat16"]
  assert abs(loss16 - loss32) < 0.01 * abs(loss32), (loss16, loss32)
  cosine = float(g16 @ g32 / np.linalg.norm(g16) / np.linalg.norm(g32))
  assert cosine > 0.995, cosine  # 0.9998 measured.


def _one_step(config, workdir):
  trainer = train.setup(config, workdir)
  state, metrics = trainer.step_fn(trainer.init_state(), trainer.next_batch(), trainer.enc_state)
  return jax.device_get(metrics), jax.device_get(state["opt_state"]), trainer


def test_chunked_step_gives_same_loss_metrics_and_gradients(tmp_path):
  """train.chunk takes features and gradients in chunks of rows: the same loss, field metrics and update."""
  config = tiny_config()
  config.data.groups = 2  # Chunks cut across groups and queue slots (weight 0 before the queue fills).
  plain, plain_opt, _ = _one_step(config, str(tmp_path / "plain"))
  config.train.chunk = 4
  chunked, chunked_opt, trainer = _one_step(config, str(tmp_path / "chunked"))
  jaxpr = str(jax.make_jaxpr(trainer.step_fn)(trainer.init_state(), trainer.next_batch(), trainer.enc_state))
  assert "scan[" in jaxpr, "train.chunk must reach the traced step"
  assert set(chunked) == set(plain)
  for name in plain:
    np.testing.assert_allclose(chunked[name], plain[name], rtol=1e-5, err_msg=name)
  # Adam's moments after one step hold the clipped gradient g and g^2 (see the remat test above).
  jax.tree.map(
    lambda c, p: np.testing.assert_allclose(c, p, rtol=1e-5, atol=1e-5 * np.abs(p).max()), chunked_opt, plain_opt
  )


def test_chunked_step_refuses_what_it_cannot_split(tmp_path):
  config = tiny_config()
  config.train.chunk = 4
  config.drift.positives = "data+teacher"
  with pytest.raises(ValueError, match="train.chunk"):
    train.setup(config, str(tmp_path / "teacher"))
  config.drift.positives = "data"
  config.train.chunk = 3
  with pytest.raises(ValueError, match="must divide"):
    train.setup(config, str(tmp_path / "uneven"))
