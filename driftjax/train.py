"""--mode=train: the training loop, from one CPU to a multi-host pod with the same code.

Sections: setup (tokenizer, encoder, data, mesh, state created sharded or restored), the jitted step, and the
loop (metrics read one step late, TensorBoard on process 0, checkpoints every N steps, at the end and on
SIGTERM, and a stop on a non-finite loss that leaves the last good checkpoint as it was).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import time
from typing import Any

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np
from flax import nnx

from driftjax import build
from driftjax import checkpoint as ckpt_lib
from driftjax import sharding as shard_lib
from driftjax import train_step as step_lib
from driftjax.data import pipeline
from driftjax.drift import field as field_lib
from driftjax.models import generator as gen_lib


class NonFiniteLossError(FloatingPointError):
  pass


@dataclasses.dataclass
class Trainer:
  """Everything the loop needs, built once (also used by tests and benchmarks)."""
  config: ml_collections.ConfigDict
  workdir: str
  cfg: step_lib.StepConfig
  mesh: Any
  encoder: Any
  tokenizer: Any
  graphdef: Any
  enc_graphdef: Any
  enc_state: Any
  state_shardings: Any
  batch_sharding: Any
  step_fn: Any
  init_fn: Any
  data_iter: Any
  stats: pipeline.CorpusStats
  spec: Any = None

  def init_state(self):
    return self.init_fn(jax.random.key(self.config.seed))

  def global_batch(self, local_rows: np.ndarray) -> jax.Array:
    return jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(local_rows, np.int32))

  def next_batch(self) -> jax.Array:
    return self.global_batch(next(self.data_iter))


def step_config(config: ml_collections.ConfigDict, out_dim: int, vocab_size: int) -> step_lib.StepConfig:
  d = config.data
  return step_lib.StepConfig(
      gen=build.generator_config(config, out_dim, vocab_size), field=field_lib.FieldConfig.from_settings(config.drift),
      groups=d.groups, n_gen=d.n_gen, n_pos=d.n_pos, queue_size=d.queue_size, layers=tuple(config.drift.layers),
      raw=config.drift.raw, poolings=tuple(config.drift.poolings), ema_decay=config.optim.ema_decay)


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
      raise ValueError(f"{rows} real rows per step (data.groups * data.n_pos) must split over "
                       f"{jax.device_count()} devices")
    if config.train.num_devices not in (0, jax.device_count()):
      raise ValueError("train.num_devices must be 0 (all devices) on several hosts")


def corpus_documents(config) -> tuple[list[str], list[str]]:
  """(training, held-out) documents of a files: or synthetic source, split the same way for every mode:
  training and encoder pretraining read the first, the data reference and nothing else the second."""
  d = config.data
  return split_corpus(d.source, d.get("synthetic_docs", 0), d.holdout, config.seed)


def split_corpus(source: str, synthetic_docs: int, holdout: int, seed: int) -> tuple[list[str], list[str]]:
  """corpus_documents from the settings it reads."""
  docs = pipeline.load_documents(source, seed=seed, synthetic_docs=synthetic_docs)
  return pipeline.split_holdout(docs, holdout, seed)


def corpus_rows(config, tokenizer, stats: pipeline.CorpusStats) -> tuple[np.ndarray, np.ndarray]:
  """(training rows, held-out rows) of a files: or synthetic source; `stats` counts the training rows only."""
  d = config.data
  train_docs, held_docs = corpus_documents(config)
  held = (pipeline.tokenize_documents(held_docs, tokenizer, config.model.seq_len, d.pack, pipeline.CorpusStats())
          if held_docs else np.zeros((0, config.model.seq_len), np.int32))
  return pipeline.tokenize_documents(train_docs, tokenizer, config.model.seq_len, d.pack, stats), held


def load_data(config, tokenizer, batch_per_host: int, stats: pipeline.CorpusStats):
  """The training data iterator of this host."""
  d = config.data
  if d.source.startswith("hf:"):
    if d.pack:
      raise ValueError("data.pack needs a files: or synthetic source (hf: sources are tokenized lazily)")
    docs = pipeline.load_documents(d.source, split=d.split)
    return pipeline.hf_iterator(docs, tokenizer, config.model.seq_len, batch_per_host, config.seed, stats)
  train_rows, _ = corpus_rows(config, tokenizer, stats)
  return pipeline.make_iterator(train_rows, batch_per_host, config.seed)


def model_signature(cfg: step_lib.StepConfig) -> dict:
  """The settings that fix the shapes of the train state (the compute dtype and remat do not)."""
  gen = {f"model.{k}": v for k, v in dataclasses.asdict(cfg.gen).items() if k not in ("dtype", "remat")}
  return {**gen, "data.groups": cfg.groups, "data.queue_size": cfg.queue_size}


@dataclasses.dataclass
class StateSpec:
  """How the train state is built and laid out: shared by training, sampling and evaluation."""
  cfg: step_lib.StepConfig
  mesh: Any
  graphdef: Any  # The generator's.
  init: Any  # key -> state (not jitted).
  shardings: Any
  tx: Any
  schedule: Any

  def abstract(self):
    """ShapeDtypeStructs of the state with their shardings: the restore target."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        jax.eval_shape(self.init, jax.random.key(0)), self.shardings)


def state_spec(config: ml_collections.ConfigDict, encoder, tokenizer) -> StateSpec:
  cfg = step_config(config, encoder.cfg.n_embd, len(tokenizer))
  mesh = shard_lib.make_mesh(config.train.num_devices or None)
  mean_emb = build.mean_token_embedding(encoder, len(tokenizer))
  tx, schedule = step_lib.make_optimizer(config.optim)

  def make_generator(key):
    return gen_lib.Generator(cfg.gen, rngs=nnx.Rngs(key), mean_embedding=mean_emb)

  graphdef = nnx.graphdef(nnx.eval_shape(lambda: make_generator(jax.random.key(0))))
  init = functools.partial(step_lib.init_state, graphdef_fn=make_generator, tx=tx, cfg=cfg,
                           seq_len=config.model.seq_len, eos_id=tokenizer.eos_token_id)
  abstract = jax.eval_shape(init, jax.random.key(0))
  n = mesh.shape[shard_lib.DATA]

  def leaf_sharding(path, x):
    top = jax.tree_util.keystr(path[:1])
    if "queue" in top:
      return shard_lib.leading_axis(mesh, x.shape)
    if config.train.fsdp and any(k in top for k in ("params", "ema", "opt_state")):
      return jax.sharding.NamedSharding(mesh, shard_lib.fsdp_spec(x.shape, n))
    return shard_lib.replicated(mesh)

  shardings = jax.tree_util.tree_map_with_path(leaf_sharding, abstract)
  return StateSpec(cfg=cfg, mesh=mesh, graphdef=graphdef, init=init, shardings=shardings, tx=tx,
                   schedule=schedule)


def setup(config: ml_collections.ConfigDict, workdir: str) -> Trainer:
  check_config(config)
  encoder, tokenizer = build.load_encoder_and_tokenizer(config, workdir)
  spec = state_spec(config, encoder, tokenizer)
  cfg, mesh, state_sh = spec.cfg, spec.mesh, spec.shardings
  batch_sh = shard_lib.leading_axis(mesh, (cfg.groups * cfg.n_pos,))
  enc_graphdef, enc_state = nnx.split(encoder)
  enc_state = jax.device_put(enc_state, shard_lib.replicated(mesh))
  step = functools.partial(step_lib.train_step, graphdef=spec.graphdef, enc_graphdef=enc_graphdef, cfg=cfg,
                           tx=spec.tx, schedule=spec.schedule)
  step_fn = jax.jit(step, in_shardings=(state_sh, batch_sh, shard_lib.replicated(mesh)),
                    out_shardings=(state_sh, shard_lib.replicated(mesh)), donate_argnums=0)
  init_fn = jax.jit(spec.init, out_shardings=state_sh)
  stats = pipeline.CorpusStats()
  data_iter = load_data(config, tokenizer, cfg.groups * cfg.n_pos // jax.process_count(), stats)
  logging.info("data: %s", pipeline.describe_stats(stats))
  return Trainer(config=config, workdir=workdir, cfg=cfg, mesh=mesh, encoder=encoder, tokenizer=tokenizer,
                 graphdef=spec.graphdef, enc_graphdef=enc_graphdef, enc_state=enc_state, state_shardings=state_sh,
                 batch_sharding=batch_sh, step_fn=step_fn, init_fn=init_fn, data_iter=data_iter, stats=stats,
                 spec=spec)


class _SigtermFlag:
  """Set on SIGTERM (preemption); the loop saves and exits at the next step boundary."""

  def __init__(self):
    self.set = False
    self._previous = None

  def __enter__(self):
    if _in_main_thread():  # Signal handlers can only be set from the main thread.
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM: saving a checkpoint at the next step and stopping")
    self.set = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _in_main_thread() -> bool:
  import threading
  return threading.current_thread() is threading.main_thread()


def _host_metrics(metrics: dict[str, jax.Array]) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _check_finite(metrics: dict[str, float], step: int, last_saved: int | None, workdir: str) -> None:
  """Stops on a non-finite loss or gradient norm (a NaN gradient poisons the updated parameters)."""
  bad = {k: metrics[k] for k in ("loss", "grad_norm") if k in metrics and not math.isfinite(metrics[k])}
  if bad:
    where = (f"the last good checkpoint (step {last_saved}) in {workdir}/checkpoints is kept" if last_saved
             is not None else "no checkpoint was written")
    what = ", ".join(f"{k} is {v}" for k, v in bad.items())
    raise NonFiniteLossError(f"{what} at step {step}: stopping; {where}")


def _any_host(flag: bool) -> bool:
  """True when any process has the flag set: every host must stop (and save) at the same step."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


class MetricsWriter:
  """TensorBoard event files (tensorboardX) and a JSON-lines copy, written by process 0 only."""

  def __init__(self, workdir: str, start: int):
    """`start`: the step this run starts from; anything logged after it by an earlier, killed run is dropped."""
    self.enabled = jax.process_index() == 0
    self.jsonl = None
    if self.enabled:
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start + 1)
      if "://" not in workdir:  # The JSON-lines copy is for local runs (object stores cannot append).
        path = os.path.join(workdir, "metrics.jsonl")
        _drop_lines_after(path, start)
        self.jsonl = open(path, "a")

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    for k, v in metrics.items():
      self.tb.add_scalar(k, v, step)
    if self.jsonl:
      self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
      self.jsonl.flush()

  def close(self) -> None:
    if self.enabled:
      self.tb.close()
    if self.jsonl:
      self.jsonl.close()


def train(config: ml_collections.ConfigDict, workdir: str, trainer: Trainer | None = None) -> dict[str, Any]:
  """Trains to config.optim.total_steps (resuming from DIR/checkpoints); returns a summary."""
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # Local paths and gs:// alike.
  trainer = trainer or setup(config, workdir)
  t = config.train
  ckpt_lib.check_model(workdir, model_signature(trainer.cfg), write=True)
  mngr = ckpt_lib.make_manager(workdir, t.keep_checkpoints, async_save=t.async_checkpoints)
  abstract = trainer.spec.abstract()
  state, start = ckpt_lib.restore_latest(mngr, abstract, trainer.data_iter)
  if state is None:
    state, start = trainer.init_state(), 0
    logging.info("fresh start in %s", workdir)
  else:
    logging.info("resumed from step %d in %s", start, workdir)
  total = config.optim.total_steps
  writer = MetricsWriter(workdir, start)
  last_saved = start if start else None
  pending = None  # (step, device metrics) of a logged step, read on the next step so the host never blocks.
  history = []
  progress = _progress(start, total)

  def report(step, metrics):
    host = _host_metrics(metrics)
    _check_finite(host, step, last_saved, workdir)
    host.update(timer.lap(step))
    writer.write(step, host)
    history.append({"step": step, **host})
    progress.update(step, host)

  quick_eval = _quick_evaluator(config, workdir, trainer) if t.eval_every else None
  timer = _StepTimer(start, trainer.cfg.groups * trainer.cfg.n_gen * config.model.seq_len)  # After loading.
  step = start
  try:
    with _SigtermFlag() as sigterm:
      while step < total:
        state, metrics = trainer.step_fn(state, trainer.next_batch(), trainer.enc_state)
        step += 1
        if pending is not None:
          report(*pending)
        pending = (step, metrics) if step % t.log_every == 0 or step == total else None
        if quick_eval and step % t.eval_every == 0:
          t_eval = time.time()
          writer.write(step, quick_eval(state))
          timer.time += time.time() - t_eval  # Evaluation time is not training step time.
        stop = _any_host(sigterm.set) or bool(t.stop_after_steps and step - start >= t.stop_after_steps)
        if stop or step % t.checkpoint_every == 0 or step == total:
          # Never save a state that is not finite: read this step's loss and gradient norm first.
          _check_finite(_host_metrics({k: metrics[k] for k in ("loss", "grad_norm")}), step, last_saved, workdir)
          ckpt_lib.save(mngr, step, state, trainer.data_iter, force=True)
          last_saved = step
          if stop:
            logging.warning("stopped (%s) after saving step %d", "SIGTERM" if sigterm.set else "stop_after_steps",
                            step)
            break
      if pending is not None:
        report(*pending)
  finally:
    mngr.wait_until_finished()
    writer.close()
    progress.close()
  return {"state": state, "step": step, "history": history, "stats": dataclasses.asdict(trainer.stats)}


def _drop_lines_after(path: str, step: int) -> None:
  """Rewrites a metrics.jsonl without the rows past `step` (atomically: a crash leaves the old file)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        keep.append(line)
    except (ValueError, KeyError):  # A line cut short by a kill: drop it.
      continue
  if len(keep) != len(lines):
    with open(path + ".tmp", "w") as f:
      f.writelines(keep)
    os.replace(path + ".tmp", path)


def _quick_evaluator(config, workdir: str, trainer: Trainer):
  """state -> {'eval/...': value}: greedy samples of the EMA generator scored like --mode=eval (no references)."""
  from driftjax import evaluate
  from driftjax import sample as sample_lib
  evaluator, eval_tok, _ = build.load_evaluator(config, workdir, trainer.encoder, trainer.tokenizer)
  table = trainer.encoder.wte[...][: len(trainer.tokenizer)]
  n = config.train.eval_samples

  def run(state) -> dict[str, float]:
    ids, dists = sample_lib.generate(trainer.graphdef, state["ema"], trainer.cfg.gen, table, n, n,
                                     jax.random.key(config.sample.seed), metric=config.sample.metric)
    rows = sample_lib.records(ids, dists, trainer.tokenizer)
    scores = evaluate.score([r["token_ids"] for r in rows], trainer.tokenizer, evaluator, eval_tok, config)
    scores["nn_dist"] = float(np.mean([r["nn_dist"] for r in rows]))
    return {f"eval/{k}": float(v) for k, v in scores.items()}

  return run


class _StepTimer:
  """Mean step time and generated tokens/s between two reports."""

  def __init__(self, step: int, tokens_per_step: int):
    self.step, self.time, self.tokens = step, time.time(), tokens_per_step

  def lap(self, step: int) -> dict[str, float]:
    now = time.time()
    dt = (now - self.time) / max(step - self.step, 1)
    self.step, self.time = step, now
    return {"step_time_s": dt, "tokens_per_s": self.tokens / max(dt, 1e-9)}


class _progress:
  """A console progress line on process 0 (tqdm)."""

  def __init__(self, start: int, total: int):
    self.bar = None
    if jax.process_index() == 0:
      from tqdm import tqdm
      self.bar = tqdm(total=total, initial=start, desc="train", dynamic_ncols=True, mininterval=1.0)
    self.last = start

  def update(self, step: int, metrics: dict[str, float]) -> None:
    if self.bar is not None:
      self.bar.update(step - self.last)
      self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", gnorm=f"{metrics['grad_norm']:.3f}",
                           lr=f"{metrics['lr']:.2e}", tok_s=f"{metrics['tokens_per_s']:.0f}")
    self.last = step

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
