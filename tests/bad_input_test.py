"""Bad input fails fast with a message naming the cause and writes nothing partial; unusual input is handled.

Each case runs the real entry (train.run, sample/eval, the tokenizer loader or main.py) and checks the whole
message. Errors raised before training starts leave no checkpoint behind.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from configs import smoke
from driftjax import build
from driftjax import evaluate
from driftjax import sample
from driftjax import train
from driftjax.data import pipeline
from driftjax.data import tokenizer as tok_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(tmp_path, text: str | bytes | None = None):
  """Smoke config at its smallest; with `text`, the corpus is one file holding it."""
  config = smoke.get_config()
  config.drift.layers, config.drift.poolings = (2,), ("mean",)
  config.data.n_gen = config.data.n_pos = 4
  config.data.queue_size, config.data.holdout = 0, 0
  config.optim.warmup_steps, config.optim.total_steps = 1, 2
  config.train.async_checkpoints = False
  if text is not None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    config.data.source = f"files:{path}"
  return config


def nothing_written(workdir) -> bool:
  return not os.path.exists(os.path.join(workdir, "checkpoints")) and not os.path.exists(
    os.path.join(workdir, "metrics.jsonl")
  )


@pytest.mark.parametrize("text", ["", " \n\t\n  \n"], ids=["empty", "whitespace"])
def test_empty_or_whitespace_corpus(tmp_path, text):
  workdir = str(tmp_path / "run")
  with pytest.raises(ValueError, match=re.escape("the corpus has no non-empty document")):
    train.run(tiny(tmp_path, text), workdir)
  assert nothing_written(workdir)


def test_invalid_utf8(tmp_path):
  workdir = str(tmp_path / "run")
  with pytest.raises(ValueError, match=re.escape(f"{tmp_path}/corpus.txt is not valid UTF-8 (byte 11")):
    train.run(tiny(tmp_path, b"Once upon.\n\xff\xfe a time\n"), workdir)
  assert nothing_written(workdir)


def test_unusual_input_is_handled_and_counted(tmp_path):
  long_story = " ".join(["word"] * 200)
  text = "\n<|endoftext|>\n".join(["A short story.", "   ", long_story] + ["Another story here."] * 6)
  config = tiny(tmp_path, text)
  stats = pipeline.CorpusStats()
  docs = build.corpus(config).documents("train")
  rows = pipeline.tokenize_documents(docs, tok_lib.load_tokenizer("gpt2"), config.model.seq_len, False, stats)
  assert stats.empty_skipped == 1 and stats.truncated == 1 and len(rows) == 8
  assert "skipped 1 empty, truncated 1 longer than seq_len" in pipeline.describe_stats(stats)


def test_seq_len_beyond_encoder_positions(tmp_path):
  config = tiny(tmp_path)
  config.model.seq_len = 128  # The smoke encoder has 64 positions.
  workdir = str(tmp_path / "run")
  with pytest.raises(ValueError, match=re.escape("model.seq_len=128 exceeds the encoder's 64 positions")):
    train.run(config, workdir)
  assert nothing_written(workdir)


def test_tokenizer_folder_without_merges(tmp_path):
  folder = tmp_path / "tok"
  folder.mkdir()
  (folder / "vocab.json").write_text("{}")
  config = tiny(tmp_path)
  config.encoder.tokenizer = str(folder)
  workdir = str(tmp_path / "run")
  with pytest.raises(FileNotFoundError, match=re.escape(f"tokenizer folder {folder} lacks merges.txt")):
    train.run(config, workdir)
  assert nothing_written(workdir)


def test_checkpoint_from_a_different_model_size(tmp_path):
  workdir = str(tmp_path / "run")
  train.run(tiny(tmp_path), workdir)
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  bigger = tiny(tmp_path)
  bigger.model.width = 128
  with pytest.raises(
    ValueError,
    match=re.escape(
      f"the checkpoints in {workdir} were written for a different model: model.width=64 there, 128 here. "
      "Use another --workdir, or the settings it was trained with."
    ),
  ):
    train.run(bigger, workdir)
  with pytest.raises(ValueError, match=re.escape("model.width=64 there, 128 here")):
    sample.run(bigger, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before  # Nothing moved or deleted.
  assert not os.path.exists(os.path.join(workdir, "checkpoints_unreadable"))
  # A run written before a setting existed (its model.json lacks it) still loads: the setting's default stands in.
  path = os.path.join(workdir, "model.json")
  with open(path) as f:
    saved = json.load(f)
  with open(path, "w") as f:
    json.dump({k: v for k, v in saved.items() if k not in ("model.draft_blocks", "model.noise_scope")}, f)
  sample.run(tiny(tmp_path), workdir)
  drafting = tiny(tmp_path)  # And a setting that differs from that default still fails.
  drafting.model.head, drafting.model.vocab_mode, drafting.model.draft_blocks = "vocab", "straight_through", 1
  with pytest.raises(ValueError, match=re.escape("model.draft_blocks=0 there, 1 here")):
    sample.run(drafting, workdir)


def test_config_override_of_wrong_type(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "driftjax.main",
      "--config=configs/smoke.py",
      f"--workdir={tmp_path}/run",
      "--config.optim.total_steps=many",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode != 0
  assert "flag --config.optim.total_steps=many: invalid literal for int() with base 10: 'many'" in proc.stderr, (
    proc.stderr
  )
  assert not os.path.exists(tmp_path / "run")


def test_workdir_that_is_not_writable(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  proc = subprocess.run(
    [sys.executable, "-m", "driftjax.main", "--config=configs/smoke.py", f"--workdir={blocker}/run"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode != 0
  assert f"--workdir {blocker}/run is not a writable folder (NotADirectoryError: Not a directory)" in proc.stderr
  assert blocker.read_text() == "not a folder"


def test_evaluator_whose_vocabulary_differs(tmp_path):
  config = tiny(tmp_path)
  workdir = str(tmp_path / "run")
  small = tiny(tmp_path)
  small.encoder.random.n_positions = 32
  evaluator_dir = str(tmp_path / "evaluator")
  build.write_random_encoder(small, evaluator_dir, vocab_size=300, eos_id=0)
  config.eval.evaluator, config.eval.evaluator_tokenizer = evaluator_dir, "gpt2"
  encoder, tokenizer = build.load_encoder_and_tokenizer(config, workdir)
  with pytest.raises(
    ValueError,
    match=re.escape(
      f"evaluator {evaluator_dir!r} has 300 token embeddings but its "
      "tokenizer has 50257 tokens: they do not belong together"
    ),
  ):
    build.load_evaluator(config, workdir, encoder, tokenizer)
  with pytest.raises(ValueError, match=re.escape(f"evaluator {evaluator_dir!r} has 300 token embeddings")):
    evaluate.run(config, workdir, samples_path=_one_sample_file(tmp_path))


def _one_sample_file(tmp_path) -> str:
  path = tmp_path / "step_1.jsonl"
  path.write_text('{"text": "hi", "token_ids": [5303]}\n')
  return str(path)
