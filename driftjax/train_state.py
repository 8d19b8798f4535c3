"""What the train state is and how it is laid out on the mesh: shared by training, sampling and evaluation.

- step_config: the static settings of the jitted step (driftjax/train_step.py) from a config;
- model_signature, check_model: the settings that fix the state's shapes, and their check against DIR/model.json;
- state_spec: the whole train state (generator, EMA, optimizer, queue) with its shardings, for training;
- generator_spec: only the generator's parameters, for sampling a run (no optimizer, no queue).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import ml_collections
from flax import nnx

from driftjax import build
from driftjax import checkpoint as ckpt_lib
from driftjax import sharding as shard_lib
from driftjax import train_step as step_lib
from driftjax.data import tokenizer as tok_lib
from driftjax.drift import field as field_lib
from driftjax.models import generator as gen_lib


def step_config(
  config: ml_collections.ConfigDict, out_dim: int, vocab_size: int, sentence_ends: tuple[int, ...] = ()
) -> step_lib.StepConfig:
  """out_dim: the encoder's embedding width; vocab_size: the tokenizer's; sentence_ends: its sentence-end tokens
  (needed by model.layout_multiple)."""
  d = config.data
  return step_lib.StepConfig(
    gen=build.generator_config(config, out_dim, vocab_size),
    field=field_lib.FieldConfig.from_settings(config.drift),
    groups=d.groups,
    n_gen=d.n_gen,
    n_pos=d.n_pos,
    queue_size=d.queue_size,
    layers=tuple(config.drift.layers),
    raw=config.drift.raw,
    poolings=tuple(config.drift.poolings),
    ema_decay=config.optim.ema_decay,
    # .get: a run folder's config.json from before these settings existed still describes a data-only run.
    positive_source=config.drift.get("positives", "data"),
    teacher_top_k=config.drift.get("teacher_top_k", 8),
    teacher_floor=config.drift.get("teacher_floor", 0.01),
    teacher_min_ratio=config.drift.get("teacher_min_ratio", 0.0),
    teacher_repeat_ngram=config.drift.get("teacher_repeat_ngram", 0),
    teacher_repeat_window=config.drift.get("teacher_repeat_window", 0),
    teacher_weight=config.drift.get("teacher_weight", 1.0),
    continuation_samples=config.drift.get("continuation_samples", 4),
    continuation_policy=config.drift.get("continuation_policy", "continue"),
    continuation_weight=config.drift.get("continuation_weight", 1.0),
    continuation_kernel=config.drift.get("continuation_kernel", "batch"),
    continuation_coupling=config.drift.get("continuation_coupling", "none"),
    continuation_temperature=config.drift.get("continuation_temperature", 1.0),
    continuation_ce_weight=config.drift.get("continuation_ce_weight", 0.0),
    continuation_ce_start=config.drift.get("continuation_ce_start", 0),
    continuation_ce_target=config.drift.get("continuation_ce_target", "draws"),
    continuation_balance=config.drift.get("continuation_balance", 0.0),
    continuation_repeat_penalty=config.drift.get("continuation_repeat_penalty", 0.0),
    continuation_repeat_window=config.drift.get("continuation_repeat_window", 0),
    continuation_choices=config.drift.get("continuation_choices", 0),
    continuation_choices_from=config.drift.get("continuation_choices_from", 0),
    mixture_ce_weight=config.drift.get("mixture_ce_weight", 0.0),
    mixture_ce_positions=config.drift.get("mixture_ce_positions", 0),
    matched_ce_weight=config.drift.get("matched_ce_weight", 0.0),
    matched_ce_positions=config.drift.get("matched_ce_positions", 0),
    matched_ce_bag_weight=config.drift.get("matched_ce_bag_weight", 0.0),
    matched_ce_gap=config.drift.get("matched_ce_gap", 0.0),
    matched_ce_rows=config.drift.get("matched_ce_rows", 0),
    matched_ce_coupling=config.drift.get("matched_ce_coupling", "nearest"),
    matched_ce_window=config.drift.get("matched_ce_window", 0),
    mixture_bag_weight=config.drift.get("mixture_bag_weight", 0.0),
    mixture_bag_n=config.drift.get("mixture_bag_n", 1),
    mixture_bag_target=config.drift.get("mixture_bag_target", "batch"),
    mixture_bag_counts=config.drift.get("mixture_bag_counts", "expected"),
    mixture_bag_max_ratio=config.drift.get("mixture_bag_max_ratio", step_lib.BAG_MAX_RATIO),
    chunk=config.train.get("chunk", 0),
    sentence_ends=sentence_ends,
  )


def _sentence_ends(config: ml_collections.ConfigDict, tokenizer) -> tuple[int, ...]:
  """The tokenizer's sentence-end tokens when the generator lays its text out at them (model.layout_multiple)."""
  return tok_lib.sentence_end_ids(tokenizer) if config.model.get("layout_multiple", 0) else ()


def _generator_signature(gen: gen_lib.GeneratorConfig) -> dict:
  """The generator settings that fix its parameters' shapes (the compute dtype and remat do not)."""
  return {f"model.{k}": v for k, v in dataclasses.asdict(gen).items() if k not in ("dtype", "remat")}


def model_signature(cfg: step_lib.StepConfig) -> dict:
  """The settings that fix the shapes of the train state."""
  return {**_generator_signature(cfg.gen), "data.groups": cfg.groups, "data.queue_size": cfg.queue_size}


def check_model(workdir: str, cfg: step_lib.StepConfig, write: bool) -> None:
  """checkpoint.check_model of cfg's signature; a setting absent from an older run's model.json counts as its
  default (settings are added with the behaviour that came before them as their default)."""
  defaults = _generator_signature(gen_lib.GeneratorConfig())
  ckpt_lib.check_model(workdir, model_signature(cfg), write=write, defaults=defaults)


def _generator_factory(gen_cfg: gen_lib.GeneratorConfig, encoder, vocab_size: int):
  mean_emb = build.mean_token_embedding(encoder, vocab_size)
  return lambda key: gen_lib.Generator(gen_cfg, rngs=nnx.Rngs(key), mean_embedding=mean_emb)


@dataclasses.dataclass
class StateSpec:
  """How the train state is built and laid out."""

  cfg: step_lib.StepConfig
  mesh: Any
  graphdef: Any  # The generator's.
  init: Any  # key -> state (not jitted).
  shardings: Any
  tx: Any
  schedule: Any

  def abstract(self):
    """ShapeDtypeStructs of the state with their shardings: the restore target."""
    return _with_shardings(jax.eval_shape(self.init, jax.random.key(0)), self.shardings)


def _with_shardings(shapes, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def state_spec(config: ml_collections.ConfigDict, encoder, tokenizer) -> StateSpec:
  cfg = step_config(config, encoder.cfg.n_embd, len(tokenizer), _sentence_ends(config, tokenizer))
  mesh = shard_lib.make_mesh(config.train.num_devices or None)
  tx, schedule = step_lib.make_optimizer(config.optim)
  make_generator = _generator_factory(cfg.gen, encoder, len(tokenizer))
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: make_generator(jax.random.key(0))))
  init = functools.partial(
    step_lib.init_state,
    graphdef_fn=make_generator,
    tx=tx,
    cfg=cfg,
    seq_len=config.model.seq_len,
    eos_id=tokenizer.eos_token_id,
  )
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
  return StateSpec(cfg=cfg, mesh=mesh, graphdef=graphdef, init=init, shardings=shardings, tx=tx, schedule=schedule)


@dataclasses.dataclass
class GeneratorSpec:
  """The generator alone: its graph, its parameters' shapes (replicated), and its settings."""

  cfg: step_lib.StepConfig
  graphdef: Any
  abstract_params: Any


def generator_spec(config: ml_collections.ConfigDict, encoder, tokenizer) -> GeneratorSpec:
  cfg = step_config(config, encoder.cfg.n_embd, len(tokenizer), _sentence_ends(config, tokenizer))
  mesh = shard_lib.make_mesh(config.train.num_devices or None)
  make_generator = _generator_factory(cfg.gen, encoder, len(tokenizer))
  abstract = nnx.eval_shape(lambda: make_generator(jax.random.key(0)))
  graphdef, shapes = nnx.graphdef(abstract), nnx.state(abstract, nnx.Param)
  shardings = jax.tree.map(lambda _: shard_lib.replicated(mesh), shapes)
  return GeneratorSpec(cfg=cfg, graphdef=graphdef, abstract_params=_with_shardings(shapes, shardings))
