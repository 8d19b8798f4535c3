"""The input pipeline on grain: documents -> token ids (B, L), padded or packed, shuffled, sharded per host.

Sources (config.data.source):
  hf:<dataset>   datasets.load_dataset(<dataset>, split=config.data.split), field "text" (a hub name such as
                 roneneldan/TinyStories, or a local folder of data files);
  files:<glob>   local .txt files (documents separated by lines holding only <|endoftext|>) or .jsonl files
                 (one {"text": ...} per line);
  synthetic      the built-in story grammar (driftjax.data.synthetic);
  tinystories_sample  the 1,200 TinyStories stories shipped in driftjax/assets/tinystories (CDLA-Sharing-1.0;
                 see its SOURCE.md): real text with no network.
Each document becomes its tokens plus end-of-text, truncated to seq_len and padded with end-of-text; with
packing, documents are concatenated and cut into seq_len pieces instead. The iterator's state is a small dict
(grain) that checkpoints with the train state.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Sequence

from absl import logging
import grain
import jax
import numpy as np

from driftjax.data import synthetic

EOT = "<|endoftext|>"
TINYSTORIES_SAMPLE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "tinystories", "dev.txt")


@dataclasses.dataclass
class CorpusStats:
  """What loading saw: documents kept, empty documents skipped, documents truncated to seq_len."""

  documents: int = 0
  empty_skipped: int = 0
  truncated: int = 0
  tokens: int = 0


def _decode(raw: bytes, path: str) -> str:
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path} is not valid UTF-8 (byte {e.start}: {raw[e.start : e.start + 4]!r})") from None


def read_text_file(path: str) -> list[str]:
  """Documents of a .txt file, split at lines holding only <|endoftext|>; blank ones kept (counted later)."""
  with open(path, "rb") as f:
    text = _decode(f.read(), path)
  docs, current = [], []
  for line in text.splitlines():
    if line.strip() == EOT:
      docs.append("\n".join(current).strip())
      current = []
    else:
      current.append(line)
  docs.append("\n".join(current).strip())
  if docs and not docs[-1] and text.rstrip().endswith(EOT):
    docs.pop()  # A trailing separator ends the last document; it does not start an empty one.
  return docs


def read_jsonl_file(path: str) -> list[str]:
  with open(path, "rb") as f:
    text = _decode(f.read(), path)
  docs = []
  for i, line in enumerate(text.splitlines()):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{i + 1}: not JSON ({e.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
      raise ValueError(f"{path}:{i + 1}: expected an object with a string field 'text'")
    docs.append(record["text"].strip())
  return docs


def read_files(pattern: str) -> list[str]:
  paths = sorted(glob.glob(os.path.expanduser(pattern)))
  if not paths:
    raise FileNotFoundError(f"data source files:{pattern} matches no file")
  docs = []
  for path in paths:
    if path.endswith(".jsonl"):
      docs.extend(read_jsonl_file(path))
    elif path.endswith(".txt"):
      docs.extend(read_text_file(path))
    else:
      raise ValueError(f"{path}: unsupported file type (expected .txt or .jsonl)")
  return docs


def load_documents(source: str, split: str = "train", seed: int = 0, synthetic_docs: int = 0) -> Sequence[str]:
  """The raw documents of a source: a list, or a random-access Hugging Face dataset column."""
  if source.startswith("files:"):
    return read_files(source.removeprefix("files:"))
  if source.startswith("hf:"):
    import datasets

    name = source.removeprefix("hf:")
    try:
      ds = datasets.load_dataset(name, split=split)
    except Exception as e:
      raise OSError(
        f"could not load data set {name!r} split {split!r} ({type(e).__name__}: {e}); offline, use "
        "files:<glob> or a local folder"
      ) from e
    if "text" not in ds.column_names:
      raise ValueError(f"data set {name!r} has no 'text' column (columns: {ds.column_names})")
    return ds["text"]
  if source == "synthetic":
    return synthetic.generate_stories(synthetic_docs, seed=seed)
  if source == "tinystories_sample":
    return read_text_file(TINYSTORIES_SAMPLE)
  raise ValueError(
    f"unknown data source {source!r}; expected hf:<dataset>, files:<glob>, synthetic or tinystories_sample"
  )


def tokenize_documents(docs: Sequence[str], tokenizer, seq_len: int, pack: bool, stats: CorpusStats) -> np.ndarray:
  """All documents as token rows (R, seq_len) int32, each ended with end-of-text and padded with it.

  Empty documents are skipped and counted; longer ones are truncated and counted. With `pack`, the documents
  (each ended with end-of-text) are concatenated and cut into rows, so no position is padding.
  """
  eos = tokenizer.eos_token_id
  kept = [d for d in docs if d and d.strip()]
  stats.empty_skipped += len(docs) - len(kept)
  if not kept:
    raise ValueError(f"the corpus has no non-empty document ({len(docs)} documents, all empty or whitespace)")
  encoded = tokenizer(list(kept), add_special_tokens=False)["input_ids"]
  stats.documents += len(encoded)
  if pack:
    stream = np.fromiter((t for ids in encoded for t in (*ids, eos)), np.int32)
    stats.tokens += len(stream)
    n_rows = len(stream) // seq_len
    if n_rows == 0:
      raise ValueError(f"the corpus has {len(stream)} tokens, fewer than one packed row of {seq_len}")
    return stream[: n_rows * seq_len].reshape(n_rows, seq_len)
  rows = np.full((len(encoded), seq_len), eos, np.int32)
  for i, ids in enumerate(encoded):
    ids = ids[: seq_len - 1]  # Leave room for end-of-text.
    if len(ids) == seq_len - 1 and len(encoded[i]) > seq_len - 1:
      stats.truncated += 1
    rows[i, : len(ids)] = ids
    stats.tokens += len(ids) + 1
  return rows


def split_holdout(docs: Sequence[str], holdout: int, seed: int) -> tuple[list[str], list[str]]:
  """A fixed random split of documents into (train, held-out); held-out documents never enter training (nor
  encoder pretraining): they are the data reference of evaluation."""
  if holdout <= 0:
    return list(docs), []
  if holdout >= len(docs):
    raise ValueError(f"data.holdout={holdout} needs more than {holdout} documents; the corpus has {len(docs)}")
  perm = np.random.default_rng(seed).permutation(len(docs))
  return [docs[int(i)] for i in perm[holdout:]], [docs[int(i)] for i in perm[:holdout]]


def make_iterator(rows: np.ndarray, batch_per_host: int, seed: int) -> grain.DatasetIterator:
  """Endless iterator of (batch_per_host, L) id batches over this host's shard, reshuffled every epoch.

  Rows are sharded by jax.process_index() before batching; its get_state()/set_state() checkpoint it.
  """
  n_hosts, host = jax.process_count(), jax.process_index()
  shard = grain.MapDataset.source(rows)[host::n_hosts]
  if len(shard) < batch_per_host:
    raise ValueError(f"host {host} holds {len(shard)} rows, fewer than its batch of {batch_per_host}")
  if n_hosts > 1:
    logging.info(
      "data: host %d of %d reads rows %d::%d (%d of %d)", host, n_hosts, host, n_hosts, len(shard), len(rows)
    )
  ds = shard.shuffle(seed=seed).repeat(None).to_iter_dataset().batch(batch_per_host, drop_remainder=True)
  return iter(ds)


def hf_iterator(
  docs: Any, tokenizer, seq_len: int, batch_per_host: int, seed: int, stats: CorpusStats
) -> grain.DatasetIterator:
  """For large hub data sets: tokenization happens lazily per document inside the grain pipeline.

  `stats` then counts every document processed so far, grain's read-ahead and repeated epochs included.
  """
  eos = tokenizer.eos_token_id
  n_hosts, host = jax.process_count(), jax.process_index()

  def encode(text: str):
    if not text or not text.strip():
      stats.empty_skipped += 1
      return None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    stats.documents += 1
    if len(ids) > seq_len - 1:
      stats.truncated += 1
    row = np.full((seq_len,), eos, np.int32)
    ids = ids[: seq_len - 1]
    row[: len(ids)] = ids
    return row

  if n_hosts > 1:
    logging.info("data: host %d of %d reads documents %d::%d of %d", host, n_hosts, host, n_hosts, len(docs))
  ds = (
    grain.MapDataset.source(docs)[host::n_hosts]
    .shuffle(seed=seed)
    .repeat(None)
    .map(encode)
    .filter(lambda r: r is not None)
    .to_iter_dataset()
    .batch(batch_per_host, drop_remainder=True)
  )
  return iter(ds)


def describe_stats(stats: CorpusStats) -> str:
  return (
    f"{stats.documents} documents, {stats.tokens} tokens; skipped {stats.empty_skipped} empty, truncated "
    f"{stats.truncated} longer than seq_len"
  )
