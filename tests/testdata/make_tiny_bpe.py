"""Makes tests/testdata/tiny_bpe: a byte-level BPE of 512 tokens (end-of-text included) trained on the TinyStories
sample that ships with driftjax (driftjax/assets/tinystories, CDLA-Sharing-1.0; its LICENSE and SOURCE.md apply to
this derived vocabulary too). Run by hand once:

    .venv/bin/python tests/testdata/make_tiny_bpe.py

Tests whose programs compute over the whole vocabulary (the LM's repairs, the vocab head's cross-entropies, the
pooled bags) use it instead of GPT-2's 50,257 tokens (train_test.tiny_config(small_vocab=True)): the same code
paths, a hundredth of the work, so that the suite stays within CI's time.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from driftjax import pretrain  # noqa: E402
from driftjax.data import pipeline  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_bpe")
VOCAB = 512


def main():
  docs = pipeline.load_documents("tinystories_sample")
  tokenizer = pretrain.train_bpe(docs, VOCAB, OUT)
  print(f"{OUT}: {len(tokenizer)} tokens from {len(docs)} stories")


if __name__ == "__main__":
  main()
