"""Smoke train -> sample -> eval, offline, with the files each writes; and their clear errors."""

import json
import math
import os
import re
import subprocess
import sys

import jax
import pytest

import driftjax
from driftjax import evaluate
from driftjax import modes
from driftjax import run_config
from driftjax import sample
from driftjax import train
from driftjax.data import tokenizer as tok_lib
from tests.train_test import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(total_steps=6)
  config.train.eval_every = 3
  config.train.eval_samples = 4
  config.sample.n_samples = 12
  config.sample.batch = 8
  config.eval.sweep_temperatures = (0.5, 2.0)
  config.eval.mauve = True  # 12 samples make a meaningless MAUVE (2 buckets), but the whole path runs.
  train.run(config, workdir)
  return config, workdir


def test_periodic_eval_is_logged(trained):
  _, workdir = trained
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  evals = [r for r in rows if "eval/gen_ppl" in r]
  assert [r["step"] for r in evals] == [3, 6]
  assert all(math.isfinite(r["eval/gen_ppl"]) and r["eval/entropy"] > 0 for r in evals)


def test_sample_then_eval(trained):
  config, workdir = trained
  path = sample.run(config, workdir)
  assert path.endswith(os.path.join("samples", "step_6.jsonl"))
  with open(path) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == 12 and all({"text", "token_ids"} <= set(r) for r in rows)
  assert all(len(r["token_ids"]) <= config.model.seq_len for r in rows)
  result = evaluate.run(config, workdir)
  for row in (result, result["reference"]["data"], result["reference"]["ar"]):
    for key in ("gen_ppl", "entropy", "distinct_1", "distinct_2", "distinct_3", "self_bleu"):
      assert math.isfinite(row[key]), (key, row)
  assert result["n_samples"] == 12 and result["seq_len"] == 32 and result["evaluator"].endswith("random_gpt2")
  assert sorted(result["sweep"]) == ["0.5", "2"]
  assert 0.0 <= result["mauve"] <= 1.0
  # The generator's and the evaluator's tokenizers are both GPT-2's here.
  assert result["token_unit"] == result["reference"]["ar"]["token_unit"] == f"tokens of {tok_lib.GPT2_ASSETS}"
  assert result["mauve_features"] == f"{result['evaluator']} (last token, final layer norm)"
  for name in ("step_6.json", "step_6.md", "step_6_frontier.png"):
    assert os.path.getsize(os.path.join(workdir, "eval", name)) > 0
  with open(os.path.join(workdir, "eval", "step_6.md")) as f:
    table = f.read()
  assert "| samples |" in table and "| data |" in table and "| ar |" in table
  assert f"MAUVE (samples vs data) on features of {result['evaluator']}; published MAUVE uses gpt2-large" in table


def test_eval_with_mauve_but_without_the_package_fails_first(trained, monkeypatch):
  config, workdir = trained
  monkeypatch.setitem(sys.modules, "mauve", None)  # `import mauve` now raises ImportError.
  with pytest.raises(ImportError, match=r"eval\.mauve=True needs the mauve-text package: pip install -e '\.\[eval\]'"):
    evaluate.run(config, workdir, samples_path=os.path.join(workdir, "no_such_file.jsonl"))


def test_sample_without_checkpoint_is_a_clear_error(tmp_path):
  config = tiny_config()
  with pytest.raises(FileNotFoundError, match="no checkpoints in .*checkpoints: train first"):
    sample.run(config, str(tmp_path))


def test_sample_of_missing_step_is_a_clear_error(trained):
  config, workdir = trained
  config = config.copy_and_resolve_references()
  config.sample.step = 4
  with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 4 .* \(have \[3, 6\]\)"):
    sample.run(config, workdir)


def test_eval_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="no samples in .*run --mode=sample first"):
    evaluate.latest_samples(str(tmp_path))
  bad = tmp_path / "step_1.jsonl"
  bad.write_text('{"text": "hi"}\n')
  with pytest.raises(ValueError, match="step_1.jsonl:1: not a sample record"):
    evaluate.read_samples(str(bad))
  empty = tmp_path / "step_2.jsonl"
  empty.write_text("")
  with pytest.raises(ValueError, match="is empty"):
    evaluate.read_samples(str(empty))


def _tree(path) -> dict[str, float]:
  """Every file under path with its modification time: 'nothing written' compares two of these."""
  return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs}


def test_run_folder_describes_itself(trained):
  config, workdir = trained
  saved = run_config.load(workdir)
  assert saved.to_dict() == config.to_dict()  # Tuples come back as tuples, every key as trained.
  with pytest.raises(AttributeError):
    saved.model.widht = 3  # Locked like a --config file: a misspelt key is an error.
  # sample and eval with only the workdir: the run's own config.
  path = os.path.join(workdir, "samples", "step_6.jsonl")
  before = os.path.getmtime(path) if os.path.exists(path) else None
  modes.run("sample", None, workdir)
  assert os.path.getmtime(path) != before
  with open(path) as f:
    assert len(f.readlines()) == config.sample.n_samples


def test_api_samples_like_the_sample_mode_and_compiles_once(trained):
  config, workdir = trained
  gen = driftjax.load(workdir)
  assert gen.step == 6
  texts = gen.sample(config.sample.n_samples, seed=config.sample.seed)
  assert isinstance(texts, list) and all(isinstance(t, str) for t in texts)
  with open(sample.run(config, workdir)) as f:  # The same generator, noise and decoding as --mode=sample.
    assert texts == [json.loads(line)["text"] for line in f]
  compiles = []
  listener = lambda event, duration, **kw: compiles.append(event) if "backend_compile" in event else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    again = gen.sample(config.sample.n_samples, seed=config.sample.seed)
    other = gen.sample(config.sample.n_samples, seed=config.sample.seed + 1)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiles == [], f"{len(compiles)} compilations on repeated calls"
  assert again == texts and other != texts
  hot = gen.sample(3, seed=0, temperature=1.0)
  assert len(hot) == 3 and hot != gen.sample(3, seed=0)


def test_not_a_run_is_a_clear_error(tmp_path):
  (tmp_path / "notes.txt").write_text("not a run")
  before = _tree(tmp_path)
  with pytest.raises(FileNotFoundError, match=f"{tmp_path} is not a driftjax run folder: it has no config.json"):
    driftjax.load(str(tmp_path))
  for mode in ("sample", "eval"):
    with pytest.raises(FileNotFoundError, match="is not a driftjax run folder"):
      modes.run(mode, None, str(tmp_path))
  with pytest.raises(ValueError, match="--mode=train needs --config"):
    modes.run("train", None, str(tmp_path))
  with pytest.raises(FileNotFoundError, match="run folder .*nope does not exist"):
    driftjax.load(str(tmp_path / "nope"))
  assert _tree(tmp_path) == before


def test_run_without_checkpoints_is_a_clear_error(trained, tmp_path):
  config, _ = trained
  run_config.save(str(tmp_path), config)  # A run that wrote its config and died before its first checkpoint.
  before = _tree(tmp_path)
  with pytest.raises(FileNotFoundError, match="no checkpoints in .*checkpoints: train first"):
    driftjax.load(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="no checkpoints in .*checkpoints: train first"):
    modes.run("sample", None, str(tmp_path))
  assert _tree(tmp_path) == before


def test_config_that_does_not_match_the_run_is_a_clear_error(trained):
  config, workdir = trained
  other = config.copy_and_resolve_references()
  other.model.width = 2 * config.model.width
  other.encoder.random.n_layer = 3
  other.model.dtype = "bfloat16"  # A compute dtype is not a model setting: not named.
  before = _tree(workdir)
  for mode in ("sample", "eval"):
    with pytest.raises(
      ValueError,
      match=re.escape(
        f"--config does not describe the model trained in {workdir}: encoder.random.n_layer=2 there, 3 here; "
        f"model.width={config.model.width} there, {2 * config.model.width} here. Leave out --config"
      ),
    ):
      modes.run(mode, other, workdir)
  assert _tree(workdir) == before


def test_console_command(tmp_path):
  exe = os.path.join(os.path.dirname(sys.executable), "driftjax")
  assert os.path.exists(exe), "the driftjax console command is not installed (pip install -e .)"
  proc = subprocess.run([exe, "--helpfull"], capture_output=True, text=True, timeout=60)
  assert "driftjax.main:" in proc.stdout and "--workdir" in proc.stdout and "--config" in proc.stdout
  proc = subprocess.run([exe, f"--workdir={tmp_path}", "--mode=sample"], capture_output=True, text=True, timeout=60)
  assert proc.returncode != 0 and "is not a driftjax run folder" in proc.stderr
  assert not os.listdir(tmp_path)
