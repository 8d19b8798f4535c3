"""--mode=train: the training loop, from one CPU to a multi-host pod with the same code.

setup() builds what the loop needs (tokenizer, encoder, data, the state's layout, the jitted step); run() creates
the state sharded or restores it, then loops: metrics read one step late (driftjax/train_log.py), checkpoints
every N steps, at the end and on SIGTERM, and a stop on a non-finite loss that leaves the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import signal
import threading
import time
from typing import Any

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from flax import nnx

from driftjax import build
from driftjax import checkpoint as ckpt_lib
from driftjax import evaluate
from driftjax import host_memory
from driftjax import run_config
from driftjax import sampler as sampler_lib
from driftjax import sharding as shard_lib
from driftjax import train_log
from driftjax import train_state
from driftjax import train_step as step_lib
from driftjax.data import pipeline


class NonFiniteLossError(FloatingPointError):
  pass


@dataclasses.dataclass
class Trainer:
  """Everything the loop needs, built once (also used by tests and benchmarks)."""

  spec: train_state.StateSpec
  seed: int
  encoder: Any
  tokenizer: Any
  enc_state: Any
  batch_sharding: Any
  step_fn: Any
  init_fn: Any
  data_iter: Any
  stats: pipeline.CorpusStats
  compiled_step: Any = dataclasses.field(default=None, repr=False)

  @property
  def cfg(self) -> step_lib.StepConfig:
    return self.spec.cfg

  @property
  def graphdef(self):
    return self.spec.graphdef

  def init_state(self):
    return self.init_fn(jax.random.key(self.seed))

  def compile_step(self, state, batch):
    """The step compiled for these shapes (once), after which the compiler's freed memory goes back to the OS
    (host_memory.release_free_heap): the step's buffers then do not sit beside it."""
    if self.compiled_step is None:
      self.compiled_step = self.step_fn.lower(state, batch, self.enc_state).compile()
      host_memory.release_free_heap()
    return self.compiled_step

  def step(self, state, batch):
    """One train step (donates `state`): (new state, device metrics)."""
    return self.compile_step(state, batch)(state, batch, self.enc_state)

  def next_batch(self) -> jax.Array:
    local_rows = np.asarray(next(self.data_iter), np.int32)
    return jax.make_array_from_process_local_data(self.batch_sharding, local_rows)


def check_config(config: ml_collections.ConfigDict) -> None:
  d = config.data
  for name in ("groups", "n_gen", "n_pos"):
    if d[name] <= 0:
      raise ValueError(f"data.{name}={d[name]} must be positive")
  if d.queue_size < 0:
    raise ValueError(f"data.queue_size={d.queue_size} must be >= 0")
  rows = d.groups * d.n_pos
  if rows % jax.process_count():
    raise ValueError(f"{rows} real rows per step do not split over {jax.process_count()} hosts")
  for w in (4, 16):
    if config.model.seq_len % w and any(p.startswith(f"win{w}_") for p in config.drift.poolings):
      raise ValueError(f"model.seq_len={config.model.seq_len} must be a multiple of {w} for win{w} poolings")
  if jax.process_count() > 1:
    # Across hosts a batch that cannot be split over the devices would be taken as replicated: refuse it.
    if rows % jax.device_count():
      raise ValueError(
        f"{rows} real rows per step (data.groups * data.n_pos) must split over {jax.device_count()} devices"
      )
    if config.train.num_devices not in (0, jax.device_count()):
      raise ValueError("train.num_devices must be 0 (all devices) on several hosts")


def setup(config: ml_collections.ConfigDict, workdir: str) -> Trainer:
  check_config(config)
  encoder, tokenizer = build.load_encoder_and_tokenizer(config, workdir)
  spec = train_state.state_spec(config, encoder, tokenizer)
  cfg, mesh, state_sh = spec.cfg, spec.mesh, spec.shardings
  batch_sh = shard_lib.leading_axis(mesh, (cfg.groups * cfg.n_pos,))
  enc_graphdef, enc_state = nnx.split(encoder)
  enc_state = jax.device_put(enc_state, shard_lib.replicated(mesh))
  stats = pipeline.CorpusStats()
  data = build.corpus(config)
  rows = bag_target = openings = None
  if cfg.mixture_bag_weight and cfg.mixture_bag_target == "split":  # Every host counts the whole training split.
    rows = data.train_rows(tokenizer, stats, what="drift.mixture_bag_target='split'")
    grams, shares = step_lib.ngram_distribution(rows, cfg.mixture_bag_n)
    bag_target = (grams, shares)  # NumPy arrays: constants of the compiled step.
    logging.info(
      "pooled bag target: %d distinct %d-grams of %d training rows", len(shares), cfg.mixture_bag_n, len(rows)
    )
  if cfg.matched_ce_weight and cfg.matched_ce_coupling == "noise":  # Every host sorts the whole split's openings.
    if rows is None:
      rows = data.train_rows(tokenizer, stats, what="drift.matched_ce_coupling='noise'")
    openings = step_lib.sorted_openings(rows, cfg.matched_ce_positions)  # A constant of the compiled step.
    logging.info("noise-coupled openings: %d distinct of %d training rows", len(np.unique(openings, axis=0)), len(rows))
  step = functools.partial(
    step_lib.train_step,
    graphdef=spec.graphdef,
    enc_graphdef=enc_graphdef,
    cfg=cfg,
    tx=spec.tx,
    schedule=spec.schedule,
    bag_target=bag_target,
    openings=openings,
  )
  step_fn = jax.jit(
    step,
    in_shardings=(state_sh, batch_sh, shard_lib.replicated(mesh)),
    out_shardings=(state_sh, shard_lib.replicated(mesh)),
    donate_argnums=0,
  )
  init_fn = jax.jit(spec.init, out_shardings=state_sh)
  data_iter = data.train_iterator(tokenizer, cfg.groups * cfg.n_pos // jax.process_count(), stats, rows)
  logging.info("data: %s", pipeline.describe_stats(stats))
  return Trainer(
    spec=spec,
    seed=config.seed,
    encoder=encoder,
    tokenizer=tokenizer,
    enc_state=enc_state,
    batch_sharding=batch_sh,
    step_fn=step_fn,
    init_fn=init_fn,
    data_iter=data_iter,
    stats=stats,
  )


class _Preemption:
  """Whether to save and stop at this step because the job is being preempted (SIGTERM).

  One process: our SIGTERM handler sets a flag that the loop reads at the next step boundary. Several: the
  preemption sync manager that jax.distributed.initialize starts catches SIGTERM on any host, tells the others
  through the coordination service, and agrees on one step at which every host sees
  reached_preemption_sync_point(step) true; asking it is local, so no step pays for a collective. (Our own
  handler would replace JAX's, so none is installed there.)
  """

  def __init__(self):
    self.set = False
    self._previous = None
    self._several_hosts = jax.process_count() > 1

  def __enter__(self):
    if not self._several_hosts and _in_main_thread():  # Signal handlers can only be set from the main thread.
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def reached(self, step: int) -> bool:
    """Asked once after every step, with the same step on every host (they all start from the same one)."""
    if self._several_hosts and multihost_utils.reached_preemption_sync_point(step):
      logging.warning("preemption notice: every host saves a checkpoint at step %d and stops", step)
      self.set = True
    return self.set

  def _handle(self, signum, frame):
    logging.warning("SIGTERM: saving a checkpoint at the next step and stopping")
    self.set = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _in_main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()


def _host_metrics(metrics: dict[str, jax.Array]) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _check_finite(metrics: dict[str, float], step: int, last_saved: int | None, workdir: str) -> None:
  """Stops on a non-finite loss or gradient norm (a NaN gradient poisons the updated parameters)."""
  bad = {k: metrics[k] for k in ("loss", "grad_norm") if k in metrics and not math.isfinite(metrics[k])}
  if bad:
    where = (
      f"the last good checkpoint (step {last_saved}) in {workdir}/checkpoints is kept"
      if last_saved is not None
      else "no checkpoint was written"
    )
    what = ", ".join(f"{k} is {v}" for k, v in bad.items())
    raise NonFiniteLossError(f"{what} at step {step}: stopping; {where}")


def run(config: ml_collections.ConfigDict, workdir: str, trainer: Trainer | None = None) -> dict[str, Any]:
  """Trains to config.optim.total_steps (resuming from DIR/checkpoints); returns a summary."""
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # Local paths and gs:// alike.
  trainer = trainer or setup(config, workdir)
  t = config.train
  train_state.check_model(workdir, trainer.cfg, write=True)
  run_config.save(workdir, config)  # After the model check: a refused run leaves DIR's config as it was.
  mngr = ckpt_lib.make_manager(workdir, t.keep_checkpoints, async_save=t.async_checkpoints)
  state, start = ckpt_lib.restore(workdir, trainer.spec.abstract(), data_iter=trainer.data_iter, mngr=mngr)
  if state is None:
    state, start = trainer.init_state(), 0
    logging.info("fresh start in %s", workdir)
  else:
    logging.info("resumed from step %d in %s", start, workdir)
  total = config.optim.total_steps
  writer = train_log.MetricsWriter(workdir, start)
  last_saved = start if start else None
  pending = None  # (step, device metrics) of a logged step, read on the next step so the host never blocks.
  history = []
  progress = train_log.ProgressBar(start, total)

  def report(step, metrics):
    host = _host_metrics(metrics)
    _check_finite(host, step, last_saved, workdir)
    host.update(timer.lap(step))
    writer.write(step, host)
    history.append({"step": step, **host})
    progress.update(step, host)

  quick_eval = _quick_evaluator(config, workdir, trainer) if t.eval_every else None
  timer = train_log.StepTimer(start, trainer.cfg.groups * trainer.cfg.n_gen * config.model.seq_len)  # After loading.
  step = start
  try:
    with _Preemption() as preemption:
      while step < total:
        state, metrics = trainer.step(state, trainer.next_batch())
        step += 1
        if pending is not None:
          report(*pending)
        pending = (step, metrics) if step % t.log_every == 0 or step == total else None
        if quick_eval and step % t.eval_every == 0:
          t_eval = time.time()
          writer.write(step, quick_eval(state))
          timer.pause(time.time() - t_eval)  # Evaluation time is not training step time.
        stop = preemption.reached(step) or bool(t.stop_after_steps and step - start >= t.stop_after_steps)
        if stop or step % t.checkpoint_every == 0 or step == total:
          # Never save a state that is not finite: read this step's loss and gradient norm first.
          _check_finite(_host_metrics({k: metrics[k] for k in ("loss", "grad_norm")}), step, last_saved, workdir)
          ckpt_lib.save(mngr, step, state, trainer.data_iter, force=True)
          last_saved = step
          if stop:
            why = "preemption" if preemption.set else "stop_after_steps"
            logging.warning("stopped (%s) after saving step %d", why, step)
            break
      if pending is not None:
        report(*pending)
  finally:
    mngr.wait_until_finished()
    writer.close()
    progress.close()
  return {"state": state, "step": step, "history": history, "stats": dataclasses.asdict(trainer.stats)}


def _quick_evaluator(config, workdir: str, trainer: Trainer):
  """state -> {'eval/...': value}: greedy samples of the EMA generator scored like --mode=eval (no references)."""
  evaluator, eval_tok, _ = build.load_evaluator(config, workdir, trainer.encoder, trainer.tokenizer)
  n = config.train.eval_samples

  def run_eval(state) -> dict[str, float]:
    gen = sampler_lib.from_params(
      config, trainer.graphdef, state["ema"], trainer.cfg.gen, trainer.encoder, trainer.tokenizer, batch=n
    )
    rows = gen.records(n, jax.random.key(config.sample.seed))
    scores = evaluate.score([r["token_ids"] for r in rows], trainer.tokenizer, evaluator, eval_tok, config)
    scores["nn_dist"] = float(np.mean([r["nn_dist"] for r in rows]))
    return {f"eval/{k}": float(v) for k, v in scores.items()}

  return run_eval
