"""The train state and the pure, jit-able training step (docs/method.md sections 3-4).

noise -> generator -> embeddings E; frozen GPT-2 features of E (inputs_embeds) and of real ids (input_ids)
at the configured layers, plus the raw embeddings; poolings; the drift loss summed over feature keys; AdamW
with warmup + cosine and clipping; EMA of the generator. The real-sample queue (token ids, G x Q x L) lives in
the state: positives of group g are its fresh real rows plus its queued ones (empty slots weigh 0).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from driftjax.drift import features as feat_lib
from driftjax.drift import field as field_lib
from driftjax.drift import losses as losses_lib
from driftjax.models import generator as gen_lib

Array = jax.Array
TrainState = dict[str, Any]  # step, params, ema, opt_state, queue, queue_filled, rng.


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the step (hashable)."""

  gen: gen_lib.GeneratorConfig
  field: field_lib.FieldConfig
  groups: int
  n_gen: int
  n_pos: int
  queue_size: int
  layers: tuple[int, ...]
  raw: bool
  poolings: tuple[str, ...]
  ema_decay: float

  @property
  def positives(self) -> int:
    return self.n_pos + self.queue_size


def make_optimizer(optim) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with linear warmup then cosine decay, after global-norm clipping; no decay of vectors (norms, biases)."""
  if not 0 <= optim.warmup_steps < optim.total_steps:
    raise ValueError(f"optim.warmup_steps={optim.warmup_steps} must be in [0, optim.total_steps={optim.total_steps})")
  schedule = optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=optim.lr,
    warmup_steps=optim.warmup_steps,
    decay_steps=optim.total_steps,
    end_value=optim.lr * optim.final_lr_fraction,
  )
  tx = optax.chain(
    optax.clip_by_global_norm(optim.clip),
    optax.adamw(
      schedule,
      b1=optim.b1,
      b2=optim.b2,
      weight_decay=optim.weight_decay,
      mask=lambda params: jax.tree.map(lambda x: x.ndim >= 2, params),
    ),
  )
  return tx, schedule


def init_state(
  key: Array, graphdef_fn, tx: optax.GradientTransformation, cfg: StepConfig, seq_len: int, eos_id: int
) -> TrainState:
  """A fresh state; graphdef_fn(key) builds the generator (so that jit can create it sharded)."""
  k_model, k_rng = jax.random.split(key)
  params = nnx.state(graphdef_fn(k_model), nnx.Param)
  return {
    "step": jnp.zeros((), jnp.int32),
    "params": params,
    "ema": jax.tree.map(jnp.copy, params),
    "opt_state": tx.init(params),
    "rng": jax.random.key_data(k_rng),
    # Without a queue there is nothing to hold (and orbax cannot save zero-size arrays).
    **(
      {
        "queue": jnp.full((cfg.groups, cfg.queue_size, seq_len), eos_id, jnp.int32),
        "queue_filled": jnp.zeros((cfg.groups, cfg.queue_size), jnp.float32),
      }
      if cfg.queue_size
      else {}
    ),
  }


def feature_dict(encoder, emb: Array | None, ids: Array | None, cfg: StepConfig) -> dict[str, Array]:
  """Pooled features {'<layer>/<pooling>': (B, P, C)} of embeddings (generated) or ids (real)."""
  raw = emb if emb is not None else encoder.embed(ids)
  out = encoder(inputs_embeds=raw, hidden_layers=cfg.layers)
  hidden = {f"h{i}": h.astype(jnp.float32) for i, h in out["hidden"].items()}
  if cfg.raw:
    hidden = {"raw": raw.astype(jnp.float32), **hidden}
  return feat_lib.pool_features(hidden, cfg.poolings)


def train_step(
  state: TrainState,
  real_ids: Array,
  enc_state,
  *,
  graphdef,
  enc_graphdef,
  cfg: StepConfig,
  tx: optax.GradientTransformation,
  schedule,
) -> tuple[TrainState, dict[str, Array]]:
  """One update. real_ids: (G * n_pos, L) int32 fresh real rows, group-major."""
  encoder = nnx.merge(enc_graphdef, jax.lax.stop_gradient(enc_state))
  g, length = cfg.groups, real_ids.shape[1]
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
  noise, style = gen_lib.sample_inputs(step_key, g * cfg.n_gen, cfg.gen)

  fresh = real_ids.reshape(g, cfg.n_pos, length)
  pos_ids, pos_w = fresh, jnp.ones((g, cfg.n_pos))  # (G, M, L), (G, M)
  if cfg.queue_size:
    pos_ids = jnp.concatenate([fresh, state["queue"]], axis=1)
    pos_w = jnp.concatenate([pos_w, state["queue_filled"]], axis=1)
  pos_feats = jax.lax.stop_gradient(feature_dict(encoder, None, pos_ids.reshape(-1, length), cfg))

  table = encoder.wte[...][: cfg.gen.vocab_size]  # The tokens the vocab head chooses among.

  def loss_fn(params):
    emb = gen_lib.to_embeddings(nnx.merge(graphdef, params)(noise, style), table, cfg.gen)
    loss, metrics = losses_lib.drift_losses(
      feature_dict(encoder, emb, None, cfg), pos_feats, pos_w, cfg.groups, cfg.field
    )
    return loss, metrics

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
  updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  ema = optax.incremental_update(params, state["ema"], 1.0 - cfg.ema_decay)

  new_state = {"step": state["step"] + 1, "params": params, "ema": ema, "opt_state": opt_state, "rng": state["rng"]}
  if cfg.queue_size:  # FIFO: newest first, oldest drop out.
    new_state["queue"] = pos_ids[:, : cfg.queue_size]
    new_state["queue_filled"] = pos_w[:, : cfg.queue_size]
  metrics.update(loss=loss, grad_norm=optax.global_norm(grads), lr=schedule(state["step"]))
  return new_state, metrics
