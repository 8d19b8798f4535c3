"""--mode=eval: scores a samples file and writes DIR/eval/step_<step>.json and .md, with reference rows.

Rows: the generator's samples; `data` (held-out real text of the same length and count) and `ar` (plain
ancestral samples of the same length from the encoder LM, the generator's teacher), all scored by the same code
(driftjax/text_metrics.py). With config.eval.sweep_temperatures, samples are redrawn at each decoding temperature
and a gen-PPL vs entropy frontier is plotted with the reference points.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import re

from absl import logging
import jax
import ml_collections
import numpy as np

from driftjax import build
from driftjax import files
from driftjax import hosts
from driftjax import sampler as sampler_lib
from driftjax import text_metrics
from driftjax.data import corpus as corpus_lib
from driftjax.data import synthetic
from driftjax.models import decode
from driftjax.models import gpt2
from driftjax.models import kv_decode

TABLE_KEYS = (
  "gen_ppl",
  "gen_ppl_encoder",
  "entropy",
  "distinct_1",
  "distinct_2",
  "distinct_3",
  "self_bleu",
  "mean_tokens",
  "mauve",
  "grammatical_rate",
  "story_rate",
  "copy_rate",
  "coverage_tv",
  "distinct_samples",
)


def latest_samples(workdir: str) -> str:
  files = glob.glob(os.path.join(workdir, "samples", "step_*.jsonl"))
  if not files:
    raise FileNotFoundError(f"no samples in {os.path.join(workdir, 'samples')}: run --mode=sample first")
  return max(files, key=lambda f: int(re.findall(r"step_(\d+)\.jsonl$", f)[0]))


def read_samples(path: str) -> list[dict]:
  if not os.path.exists(path):
    raise FileNotFoundError(f"samples file {path} does not exist")
  rows = []
  with open(path) as f:
    for i, line in enumerate(f):
      try:
        row = json.loads(line)
        rows.append({"text": str(row["text"]), "token_ids": [int(t) for t in row["token_ids"]]})
      except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}:{i + 1}: not a sample record with 'text' and 'token_ids' ({e})") from None
  if not rows:
    raise ValueError(f"samples file {path} is empty")
  return rows


def data_reference(config: ml_collections.ConfigDict, tokenizer, n: int) -> list[list[int]]:
  """n real rows of the model's length that training never saw, each cut at its first end-of-text."""
  return decode.truncate_at_eos(build.corpus(config).heldout_rows(tokenizer, n), tokenizer.eos_token_id)


@functools.lru_cache(maxsize=2)
def training_documents(corpus: corpus_lib.Corpus) -> frozenset:
  """The stories training saw (stripped): copy_rate compares against these, not against held-out ones."""
  return frozenset(d.strip() for d in corpus.documents("train"))


def check_packages(config: ml_collections.ConfigDict) -> None:
  """Fails before any work when the config asks for a metric whose package is not installed (eval.mauve)."""
  if config.eval.mauve:
    text_metrics.require_mauve()


def score(token_lists, tokenizer, evaluator, eval_tok, config, encoder=None) -> dict:
  """The text metrics of one row (token lists of `tokenizer`); gen_ppl under the evaluator, and under the
  encoder too (gen_ppl_encoder) when an encoder other than the evaluator is given."""
  texts = [tokenizer.decode(t) for t in token_lists]
  result = text_metrics.text_metrics(
    token_lists, texts, evaluator, eval_tok, config.eval.bleu_samples, seq_len=config.model.seq_len
  )
  if encoder is not None and encoder is not evaluator:
    ended = [len(t) < config.model.seq_len for t in token_lists]
    result["gen_ppl_encoder"] = text_metrics.gen_ppl(encoder, tokenizer, texts, ended=ended)
  if config.data.source == "synthetic":  # The grammar can check the text itself.
    result["grammatical_rate"] = float(np.mean([synthetic.grammatical_rate(t) for t in texts]))
    result["story_rate"] = synthetic.story_rate(texts)  # Whole stories: slots that agree across sentences.
    result["copy_rate"] = synthetic.copy_rate(texts, training_documents(build.corpus(config)))
  return result


def markdown_table(result: dict) -> str:
  rows = [("samples", result)] + [(k, v) for k, v in result["reference"].items()]
  rows += [(f"T={k}", v) for k, v in result.get("sweep", {}).items()]
  keys = [k for k in TABLE_KEYS if any(k in r and r[k] is not None for _, r in rows)]
  lines = ["| row | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
  for name, r in rows:
    cells = [f"{r[k]:.4g}" if isinstance(r.get(k), (int, float)) else "" for k in keys]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot_frontier(result: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 4))
  sweep = sorted(result["sweep"].items(), key=lambda kv: float(kv[0]))
  ax.plot([r["entropy"] for _, r in sweep], [r["gen_ppl"] for _, r in sweep], "o-", label="drifting (T sweep)")
  for t, r in sweep:
    ax.annotate(f"T={t}", (r["entropy"], r["gen_ppl"]), fontsize=7)
  for name, r in result["reference"].items():
    ax.plot([r["entropy"]], [r["gen_ppl"]], "s", label=name)
  ax.set_xlabel("entropy (nats)")
  ax.set_ylabel("gen PPL")
  ax.set_yscale("log")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(config: ml_collections.ConfigDict, workdir: str, samples_path: str | None = None) -> dict:
  """Scores DIR's newest samples file (or eval.samples_file, or samples_path) with its reference rows."""
  e = config.eval
  check_packages(config)
  path = samples_path or e.samples_file or latest_samples(workdir)
  rows = read_samples(path)
  match = re.findall(r"step_(\d+)\.jsonl$", path)
  step = int(match[0]) if match else -1
  encoder, tokenizer = build.load_encoder_and_tokenizer(config, workdir, write=False)
  evaluator, eval_tok, eval_name = build.load_evaluator(config, workdir, encoder, tokenizer)
  sweep = None
  if e.sweep_temperatures:  # First: it needs the samples' checkpoint, so a missing one fails before the rest.
    if step < 0:
      raise ValueError(f"a temperature sweep needs a samples file named step_<N>.jsonl, got {path}")
    sweep = temperature_sweep(config, workdir, step, tokenizer, encoder, evaluator, eval_tok)
  tokens = [r["token_ids"] for r in rows]
  n, seq_len = len(rows), config.model.seq_len
  result = score(tokens, tokenizer, evaluator, eval_tok, config, encoder)
  result.update(seq_len=seq_len, evaluator=eval_name, samples_file=path, step=step)
  data_rows = data_reference(config, tokenizer, n)
  ar_rows = teacher_samples(encoder, tokenizer, n, seq_len, e.ar_batch, jax.random.key(e.seed))
  result["reference"] = {
    "data": score(data_rows, tokenizer, evaluator, eval_tok, config, encoder),
    "ar": score(ar_rows, tokenizer, evaluator, eval_tok, config, encoder),
  }
  ref = result["reference"]
  result["ar_lm"] = build.encoder_path(config, workdir)  # The "ar" row: the encoder LM's own samples.
  # What entropy, distinct_n and self_bleu count: the token ids of the tokenizer each row was made with.
  for row in (result, ref["data"], ref["ar"]):
    row["token_unit"] = f"tokens of {tokenizer.name_or_path}"
  if config.data.source == "synthetic":  # Coverage of the grammar's choices against the data reference.
    add_coverage(result, ref, [r["text"] for r in rows], data_rows, ar_rows, tokenizer, config.seed)
  if e.mauve:  # The samples against the data reference, on the evaluator's features (see text_metrics.py).
    result["mauve"] = text_metrics.mauve_score(
      evaluator, eval_tok, [r["text"] for r in rows], [tokenizer.decode(t) for t in data_rows]
    )
    result["mauve_features"] = f"{eval_name} (last token, final layer norm)"
  if sweep is not None:
    result["sweep"] = sweep
  out_dir = os.path.join(workdir, "eval")
  name = f"step_{step}" if step >= 0 else os.path.splitext(os.path.basename(path))[0]
  note = (
    f"\nMAUVE (samples vs data) on features of {eval_name}; published MAUVE uses gpt2-large features.\n"
    if "mauve" in result
    else ""
  )

  def write_report():
    files.atomic_write(os.path.join(out_dir, f"{name}.json"), json.dumps(result, indent=2))
    files.atomic_write(os.path.join(out_dir, f"{name}.md"), markdown_table(result) + note)
    if "sweep" in result:
      plot_frontier(result, os.path.join(out_dir, f"{name}_frontier.png"))

  hosts.first_writes("eval_report", write_report)
  logging.info("eval of %s:\n%s", path, markdown_table(result))
  return result


def teacher_samples(lm, tokenizer, n: int, length: int, batch: int, key) -> list[list[int]]:
  """n ancestral samples of `length` tokens from the LM (KV-cached), each cut at its first end-of-text."""
  ar = np.concatenate(
    [
      np.asarray(kv_decode.sample_ar(lm, jax.random.fold_in(key, i), min(batch, n - i), length))
      for i in range(0, n, batch)
    ]
  )
  return decode.truncate_at_eos(ar, tokenizer.eos_token_id)


def add_coverage(result: dict, ref: dict, sample_texts, data_rows, ar_rows, tokenizer, seed: int) -> None:
  """coverage_tv (and coverage_by_slot) of the samples and of the ar row against the data reference; the data
  row's own value is its distance to a fresh draw of the grammar of the same size: the floor that sampling noise
  sets."""
  data_texts = [tokenizer.decode(t) for t in data_rows]
  fresh = synthetic.generate_stories(len(data_texts), seed=seed + 1_000_003)
  pairs = ((result, sample_texts, data_texts), (ref["ar"], [tokenizer.decode(t) for t in ar_rows], data_texts))
  for row, texts, against in pairs + ((ref["data"], data_texts, fresh),):
    row["coverage_by_slot"] = synthetic.coverage_tv_by_slot(texts, against)  # Which choices are missing.
    row["coverage_tv"] = float(np.mean(list(row["coverage_by_slot"].values())))


def temperature_sweep(config, workdir, step, tokenizer, encoder, evaluator, eval_tok) -> dict:
  e, s = config.eval, config.sample
  gen = sampler_lib.load(config, workdir, step, encoder, tokenizer)
  out = {}
  for t in e.sweep_temperatures:
    ids, _ = gen.generate(s.n_samples, jax.random.key(s.seed), temperature=float(t), top_k=s.top_k)
    toks = decode.truncate_at_eos(ids, tokenizer.eos_token_id)
    texts = [tokenizer.decode(x) for x in toks]
    out[f"{float(t):g}"] = {
      # As the other rows: an end-of-text is scored only where the sample produced one.
      "gen_ppl": text_metrics.gen_ppl(evaluator, eval_tok, texts, ended=[len(x) < config.model.seq_len for x in toks]),
      "entropy": text_metrics.mean_entropy(toks),
    }
  return out
