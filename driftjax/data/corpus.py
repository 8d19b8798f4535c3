"""A run's corpus, split the same way by every mode: training documents (training, encoder pretraining, copy_rate)
and held-out documents (the data reference of evaluation, never trained on).

files:, synthetic and tinystories_sample sources are split here with a fixed random choice of `holdout`
documents; an hf: data set keeps its own splits (`train_split` trains, `heldout_split` is the reference).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from driftjax.data import pipeline

PARTS = ("train", "heldout")


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Where a run's text comes from and how it becomes rows of token ids."""

  source: str
  seq_len: int
  seed: int
  holdout: int = 0  # Held-out documents of files:/synthetic/tinystories_sample sources.
  synthetic_docs: int = 0
  pack: bool = False
  train_split: str = "train"  # hf: sources only.
  heldout_split: str = "validation"  # hf: sources only.

  @property
  def is_hub(self) -> bool:
    return self.source.startswith("hf:")

  def documents(self, part: str) -> Sequence[str]:
    """The documents of one part ("train" or "heldout"): a list, or a random-access hub data set column."""
    if part not in PARTS:
      raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    if self.is_hub:
      return pipeline.load_documents(self.source, split=self.train_split if part == "train" else self.heldout_split)
    docs = pipeline.load_documents(self.source, seed=self.seed, synthetic_docs=self.synthetic_docs)
    return pipeline.split_holdout(docs, self.holdout, self.seed)[0 if part == "train" else 1]

  def train_rows(self, tokenizer, stats: pipeline.CorpusStats, what: str = "this") -> np.ndarray:
    """Every training row (N, L) of token ids (files:, synthetic and tinystories_sample sources; `what` names the
    setting that needs them in the error an hf: source gets)."""
    if self.is_hub:
      raise ValueError(
        f"{what} needs a files:, synthetic or tinystories_sample source (hf: sources are tokenized lazily)"
      )
    return pipeline.tokenize_documents(self.documents("train"), tokenizer, self.seq_len, self.pack, stats)

  def train_iterator(self, tokenizer, batch_per_host: int, stats: pipeline.CorpusStats, rows: np.ndarray | None = None):
    """This host's endless iterator of training batches (B, L); `stats` counts what tokenization saw; rows: the
    training rows when the caller has them already (train_rows)."""
    if self.is_hub:
      if self.pack:
        raise ValueError(
          "data.pack needs a files:, synthetic or tinystories_sample source (hf: sources are tokenized lazily)"
        )
      return pipeline.hf_iterator(self.documents("train"), tokenizer, self.seq_len, batch_per_host, self.seed, stats)
    rows = self.train_rows(tokenizer, stats) if rows is None else rows
    return pipeline.make_iterator(rows, batch_per_host, self.seed)

  def heldout_rows(self, tokenizer, n: int) -> np.ndarray:
    """Up to n held-out rows (n, L) of token ids, ended and padded with end-of-text."""
    docs = self.documents("heldout")
    if self.is_hub:
      docs = [docs[i] for i in range(min(len(docs), 4 * n))]  # Enough for n non-empty ones.
    if not len(docs):
      raise ValueError(
        "the data reference needs held-out rows: set data.holdout > 0 for files:, synthetic and "
        "tinystories_sample sources"
      )
    return pipeline.tokenize_documents(docs, tokenizer, self.seq_len, self.pack, pipeline.CorpusStats())[:n]
