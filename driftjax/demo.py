"""--mode=demo: the whole pipeline offline, end to end, with a report (configs/demo.py; README's main job).

pretrain the encoder (reused when DIR has it) -> samples of the generator at init -> train (resumes from DIR's
checkpoints) -> samples of the EMA generator at the end -> evaluation against held-out data and the LM's own
samples -> DIR/report.json (rows init, final, data, ar with the eval mode's keys; targets; timings),
DIR/report.md (the table, samples, the curves) and DIR/curves.png.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from absl import logging
import jax
import ml_collections
from flax import nnx

from driftjax import build
from driftjax import evaluate
from driftjax import files
from driftjax import hosts
from driftjax import pretrain
from driftjax import sample
from driftjax import sampler as sampler_lib
from driftjax import train
from driftjax.data import synthetic
from driftjax.models import gpt2
from driftjax.models import kv_decode

ROWS = ("init", "final", "data", "ar")
REPORT_KEYS = (
  "gen_ppl",
  "gen_ppl_encoder",
  "entropy",
  "grammatical_rate",
  "story_rate",
  "copy_rate",
  "coverage_tv",
  "distinct_samples",
  "distinct_1",
  "distinct_2",
  "distinct_3",
  "self_bleu",
  "mauve",
  "mean_tokens",
  "n_samples",
)  # mauve: the final row (samples vs data).


def targets(rows: dict[str, dict]) -> dict[str, dict[str, Any]]:
  """The demo's targets (issue 14), each with its measured value and whether it holds. gen_ppl is under the
  independent evaluator. Both corpora: at least 95% of the samples distinct (so that one good story, repeated,
  passes nothing: its own entropy can be the data's). Synthetic corpus: grammar, copies, coverage of the grammar's
  choices; real text (no grammar to check): gen-PPL against the encoder LM's own samples (ar) and the data."""
  init, final, data, ar = rows["init"], rows["final"], rows["data"], rows["ar"]
  out = {
    "gen_ppl_init_over_final": (init["gen_ppl"] / final["gen_ppl"], ">= 10", lambda v: v >= 10),
    "entropy_rel_gap_to_data": (
      abs(final["entropy"] - data["entropy"]) / data["entropy"],
      "<= 0.1",
      lambda v: v <= 0.1,
    ),
    "distinct_samples": (final["distinct_samples"], ">= 0.95", lambda v: v >= 0.95),
  }
  if "grammatical_rate" in final:
    out["gen_ppl_final_over_data"] = (final["gen_ppl"] / data["gen_ppl"], "<= 2", lambda v: v <= 2)
    out["grammatical_rate"] = (final["grammatical_rate"], ">= 0.9", lambda v: v >= 0.9)
    out["copy_rate"] = (final["copy_rate"], "< 0.05", lambda v: v < 0.05)
    out["coverage_tv"] = (final["coverage_tv"], "<= 0.15", lambda v: v <= 0.15)
  else:
    out["gen_ppl_final_over_ar"] = (final["gen_ppl"] / ar["gen_ppl"], "<= 2", lambda v: v <= 2)
    out["gen_ppl_final_over_data"] = (final["gen_ppl"] / data["gen_ppl"], "<= 4", lambda v: v <= 4)
  return {k: {"value": float(v), "target": t, "met": bool(ok(v))} for k, (v, t, ok) in out.items()}


def sampling_speed(gen, encoder, n: int, length: int, seed: int) -> dict[str, float]:
  """Seconds for n samples of `length` tokens: the one-step generator (forward + decode) against the encoder
  LM's KV-cached autoregressive sampling, same count and length, each timed after a warm-up call."""

  def one_step():
    return gen.generate(n, jax.random.key(seed))[0]

  def autoregressive():
    return kv_decode.sample_ar(encoder, jax.random.key(seed), n, length)

  out = {}
  for name, fn in (("one_step_s", one_step), ("autoregressive_s", autoregressive)):
    jax.block_until_ready(fn())
    t = time.perf_counter()
    jax.block_until_ready(fn())
    out[name] = time.perf_counter() - t
  out.update(n=n, length=length, speedup=out["autoregressive_s"] / out["one_step_s"])
  return out


def markdown(report: dict) -> str:
  rows = report["rows"]
  keys = [k for k in REPORT_KEYS if any(k in r for r in rows.values())]
  lines = [
    f"# driftjax demo: {report['data_source']}",
    "",
    f"Wall time {report['timings']['total_s'] / 60:.1f} min on {report['device']} "
    f"({', '.join(f'{k} {v:.0f} s' for k, v in report['timings'].items() if k != 'total_s')}); "
    f"{report['train_steps']} training steps. gen_ppl is under the evaluator {report['evaluator']} "
    f"({report['evaluator_params']:,} parameters, never used in training); gen_ppl_encoder under the frozen "
    f"encoder ({report['encoder_params']:,}). The ar row: the encoder LM's own samples.",
    "",
    f"Sampling {report['speed']['n']} samples of {report['speed']['length']} tokens on this machine: one-step "
    f"generator {report['speed']['one_step_s']:.3f} s, the encoder LM's autoregressive sampling "
    f"{report['speed']['autoregressive_s']:.3f} s ({report['speed']['speedup']:.1f}x).",
    "",
    "| row | " + " | ".join(keys) + " |",
    "|---" * (len(keys) + 1) + "|",
  ]
  for name in ROWS:
    r = rows[name]
    lines.append(
      f"| {name} | " + " | ".join(f"{r[k]:.4g}" if isinstance(r.get(k), (int, float)) else "" for k in keys) + " |"
    )
  if report.get("targets"):
    lines += ["", "| target | measured | wanted | met |", "|---|---|---|---|"]
    lines += [
      f"| {k} | {v['value']:.3g} | {v['target']} | {'yes' if v['met'] else 'no'} |"
      for k, v in report["targets"].items()
    ]
  slots = {n: rows[n]["coverage_by_slot"] for n in ("final", "ar", "data") if "coverage_by_slot" in rows[n]}
  if slots:  # Which of the grammar's choices the samples miss (the data row: a fresh draw, the noise floor).
    names = list(next(iter(slots.values())))
    lines += ["", "coverage_tv by slot (each choice's distribution against the data's):", ""]
    lines += ["| row | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(f"{tv[k]:.2f}" for k in names) + " |" for n, tv in slots.items()]
  for name in ("final", "data", "init"):
    lines += ["", f"## Samples: {name}", ""]
    lines += [f"{i + 1}. {json.dumps(t)}" for i, t in enumerate(report["samples"][name])]
  lines += ["", "## Training curves", "", "![curves](curves.png)", ""]
  return "\n".join(lines)


def n_params(model) -> int:
  return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def plot_curves(metrics_path: str, out_path: str) -> None:
  """Loss (and quick-eval gen_ppl / grammatical_rate when logged) against step, from DIR/metrics.jsonl."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  with open(metrics_path) as f:
    recs = [json.loads(line) for line in f if line.strip()]
  panels = [k for k in ("loss", "eval/gen_ppl", "eval/grammatical_rate") if any(k in r for r in recs)]
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
  for ax, key in zip(axes[0], panels):
    pts = [(r["step"], r[key]) for r in recs if key in r]
    ax.plot(*zip(*pts), "-o" if key != "loss" else "-", ms=3)
    ax.set_xlabel("step")
    ax.set_title(key)
    if key == "eval/gen_ppl":
      ax.set_yscale("log")
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  evaluate.check_packages(config)  # Before pretraining and training, not after them.
  timings = {}
  t0 = time.time()
  if config.encoder.name == build.PRETRAINED:
    pretrain.run(config, workdir)
  timings["pretrain_s"] = time.time() - t0

  t = time.time()
  trainer = train.setup(config, workdir)
  evaluator, eval_tok, eval_name = build.load_evaluator(config, workdir, trainer.encoder, trainer.tokenizer)
  s = config.sample
  init_gen = sampler_lib.from_params(
    config, trainer.graphdef, trainer.init_state()["ema"], trainer.cfg.gen, trainer.encoder, trainer.tokenizer
  )  # The state training starts from.
  init_rows = init_gen.records(s.n_samples, jax.random.key(s.seed), temperature=s.temperature, top_k=s.top_k)
  init = evaluate.score(
    [r["token_ids"] for r in init_rows], trainer.tokenizer, evaluator, eval_tok, config, trainer.encoder
  )
  timings["init_eval_s"] = time.time() - t

  t = time.time()
  result = train.run(config, workdir, trainer)
  timings["train_s"] = time.time() - t

  t = time.time()
  path = sample.run(config, workdir)
  final = evaluate.run(config, workdir, path)
  if config.data.source == "synthetic":  # The init row's coverage, against the same data reference.
    data_rows = evaluate.data_reference(config, trainer.tokenizer, len(init_rows))
    init["coverage_tv"] = synthetic.coverage_tv(
      [r["text"] for r in init_rows], [trainer.tokenizer.decode(r) for r in data_rows]
    )
  speed = sampling_speed(
    sampler_lib.load(config, workdir, encoder=trainer.encoder, tokenizer=trainer.tokenizer),
    trainer.encoder,
    s.n_samples,
    config.model.seq_len,
    s.seed,
  )
  timings["final_eval_s"] = time.time() - t
  timings["total_s"] = time.time() - t0

  rows = {"init": init, "final": {k: v for k, v in final.items() if k != "reference"}, **final["reference"]}
  data_texts = [trainer.tokenizer.decode(r) for r in evaluate.data_reference(config, trainer.tokenizer, 5)]
  report = {
    "data_source": config.data.source,
    "device": f"{jax.device_count()}x {jax.devices()[0].device_kind}, {os.cpu_count()} host cores",
    "evaluator": eval_name,
    "evaluator_params": n_params(evaluator),
    "encoder_params": n_params(trainer.encoder),
    "speed": speed,
    "train_steps": int(result["step"]),
    "timings": timings,
    "rows": rows,
    "targets": targets(rows),
    "samples": {
      "init": [r["text"] for r in init_rows[:3]],
      "final": [r["text"] for r in evaluate.read_samples(path)[:5]],
      "data": data_texts,
    },
    "corpus": result["stats"],
  }

  def write_report():
    files.atomic_write(os.path.join(workdir, "report.json"), json.dumps(report, indent=2))
    plot_curves(os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "curves.png"))
    files.atomic_write(os.path.join(workdir, "report.md"), markdown(report))

  hosts.first_writes("demo_report", write_report)  # Process 0 alone writes metrics.jsonl and the report.
  logging.info("demo report: %s", os.path.join(workdir, "report.md"))
  print(markdown(report).split("## Samples")[0])
  return report
