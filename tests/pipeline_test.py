"""The grain input pipeline: sources, tokenization, padding/packing, counts, sharding, iterator state, errors."""

import json
import os

import jax
import numpy as np
import pytest

from driftjax.data import pipeline
from driftjax.data import tokenizer as tok_lib


@pytest.fixture(scope="module")
def tok():
  return tok_lib.load_tokenizer("gpt2")


def test_text_file_documents_and_empty_ones_counted(tmp_path, tok):
  path = tmp_path / "a.txt"
  path.write_text("One cat sat.\n<|endoftext|>\n\n  \n<|endoftext|>\nA dog ran.\nIt was fun.\n<|endoftext|>\n")
  docs = pipeline.read_files(str(tmp_path / "*.txt"))
  assert docs == ["One cat sat.", "", "A dog ran.\nIt was fun."]
  stats = pipeline.CorpusStats()
  rows = pipeline.tokenize_documents(docs, tok, seq_len=8, pack=False, stats=stats)
  assert rows.shape == (2, 8) and stats.empty_skipped == 1 and stats.documents == 2
  first = tok.encode("One cat sat.")
  np.testing.assert_array_equal(rows[0], first + [tok.eos_token_id] * (8 - len(first)))


def test_jsonl_and_truncation_counted(tmp_path, tok):
  long_text = "word " * 50
  with open(tmp_path / "d.jsonl", "w") as f:
    for text in ("Short one.", long_text, "   "):
      f.write(json.dumps({"text": text}) + "\n")
  stats = pipeline.CorpusStats()
  rows = pipeline.tokenize_documents(pipeline.read_files(str(tmp_path / "d.jsonl")), tok, 16, False, stats)
  assert rows.shape == (2, 16)
  assert stats.truncated == 1 and stats.empty_skipped == 1
  assert rows[1, -1] == tok.eos_token_id  # A truncated story still ends with end-of-text.


def test_packing_concatenates_documents(tok):
  docs = ["a b c", "d e", "f"]
  stats = pipeline.CorpusStats()
  rows = pipeline.tokenize_documents(docs, tok, seq_len=4, pack=True, stats=stats)
  eos = tok.eos_token_id
  stream = [t for d in docs for t in tok.encode(d) + [eos]]
  np.testing.assert_array_equal(rows.ravel(), stream[: rows.size])
  assert rows.shape == (len(stream) // 4, 4)


def test_invalid_utf8_names_the_file(tmp_path):
  (tmp_path / "bad.txt").write_bytes(b"fine text\n\xff\xfe broken\n")
  with pytest.raises(ValueError, match=r"bad.txt is not valid UTF-8 \(byte 10"):
    pipeline.read_files(str(tmp_path / "bad.txt"))


@pytest.mark.parametrize(
  "content, match",
  [
    ("", "no non-empty document"),
    ("   \n\n \t\n", "no non-empty document"),
  ],
)
def test_empty_or_whitespace_corpus_is_an_error(tmp_path, tok, content, match):
  (tmp_path / "e.txt").write_text(content)
  docs = pipeline.read_files(str(tmp_path / "e.txt"))
  with pytest.raises(ValueError, match=match):
    pipeline.tokenize_documents(docs, tok, 8, False, pipeline.CorpusStats())


def test_bad_sources(tmp_path):
  with pytest.raises(FileNotFoundError, match="matches no file"):
    pipeline.load_documents(f"files:{tmp_path}/none.txt")
  with pytest.raises(ValueError, match="unknown data source 'ftp:x'"):
    pipeline.load_documents("ftp:x")
  (tmp_path / "x.csv").write_text("a,b")
  with pytest.raises(ValueError, match="unsupported file type"):
    pipeline.load_documents(f"files:{tmp_path}/x.csv")
  (tmp_path / "bad.jsonl").write_text('{"txt": 1}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:1: expected an object with a string field 'text'"):
    pipeline.load_documents(f"files:{tmp_path}/bad.jsonl")


def test_hf_source_from_local_folder(tmp_path):
  """The hf: path goes through datasets.load_dataset; a local folder stands in for the hub."""
  folder = tmp_path / "stories"
  folder.mkdir()
  with open(folder / "train.jsonl", "w") as f:
    for i in range(5):
      f.write(json.dumps({"text": f"Story number {i}."}) + "\n")
  docs = pipeline.load_documents(f"hf:{folder}", split="train")
  assert list(docs) == [f"Story number {i}." for i in range(5)]


def test_hf_iterator_tokenizes_lazily(tmp_path, tok):
  docs = ["Tom ran.", "", "Sue sat down.", "word " * 40]
  stats = pipeline.CorpusStats()
  it = pipeline.hf_iterator(docs, tok, 8, batch_per_host=3, seed=0, stats=stats)
  batch = next(it)
  assert batch.shape == (3, 8) and batch.dtype == np.int32
  assert (batch[:, 0] != tok.eos_token_id).all()  # The empty document never becomes a row.
  # Counts cover every document processed so far, read-ahead and repeated epochs included.
  assert stats.empty_skipped >= 1 and stats.truncated >= 1 and stats.documents >= 3


def test_iterator_shuffles_reproducibly_and_restores_state():
  rows = np.arange(40, dtype=np.int32).reshape(20, 2)
  it = pipeline.make_iterator(rows, batch_per_host=4, seed=3)
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  later = [next(it) for _ in range(7)]  # Crosses an epoch boundary.
  again = pipeline.make_iterator(rows, batch_per_host=4, seed=3)
  np.testing.assert_array_equal(np.stack([next(again) for _ in range(3)]), np.stack(first))
  again.set_state(state)
  np.testing.assert_array_equal(np.stack([next(again) for _ in range(7)]), np.stack(later))
  epoch = np.concatenate(first + later[:2])[:, 0]
  assert sorted(epoch.tolist()) == list(range(0, 40, 2))  # One epoch holds every row once.
  assert epoch.tolist() != list(range(0, 40, 2))  # ... shuffled.


def test_rows_shard_per_host(monkeypatch):
  rows = np.arange(24, dtype=np.int32).reshape(12, 2)
  seen = []
  for host in range(3):
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    monkeypatch.setattr(jax, "process_index", lambda h=host: h)
    it = pipeline.make_iterator(rows, batch_per_host=4, seed=0)
    seen.append(set(np.asarray(next(it))[:, 0].tolist()))
  assert all(len(s) == 4 for s in seen)
  assert set.union(*seen) == set(range(0, 24, 2)) and not (seen[0] & seen[1])


def test_holdout_is_disjoint():
  docs = [f"story {i}" for i in range(25)]
  train, held = pipeline.split_holdout(docs, 5, seed=0)
  assert len(train) == 20 and len(held) == 5
  assert not set(train) & set(held) and set(train) | set(held) == set(docs)
  assert pipeline.split_holdout(docs, 5, seed=0) == (train, held)  # The same split in every mode.
  with pytest.raises(ValueError, match="data.holdout=25 needs more than 25 documents; the corpus has 25"):
    pipeline.split_holdout(docs, 25, seed=0)


def test_tinystories_sample_loads(tok):
  docs = pipeline.load_documents("tinystories_sample")
  assert len(docs) == 1200 and docs == pipeline.load_documents(f"files:{pipeline.TINYSTORIES_SAMPLE}")
  assert docs[0].startswith("One day, a little girl named Lily")
  folder = os.path.dirname(pipeline.TINYSTORIES_SAMPLE)  # The license and attribution travel with the data.
  assert "CDLA-Sharing-1.0" in open(os.path.join(folder, "SOURCE.md")).read()
  assert "Community Data License Agreement" in open(os.path.join(folder, "LICENSE")).read()
  stats = pipeline.CorpusStats()
  rows = pipeline.tokenize_documents(docs, tok, 256, False, stats)
  assert rows.shape == (1200, 256) and stats.empty_skipped == 0 and stats.truncated > 0
