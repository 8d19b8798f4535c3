"""Tokenizer loading from the shipped GPT-2 files and from folders."""

import os
import shutil

import pytest

from driftjax.data import tokenizer

SENTENCE = "Once upon a time, there was a little girl."
IDS = [7454, 2402, 257, 640, 11, 612, 373, 257, 1310, 2576, 13]
SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "gpt2-tokenizer")


@pytest.mark.parametrize("name", ["gpt2", tokenizer.GPT2_ASSETS])
def test_gpt2_encodes_and_decodes(name):
  tok = tokenizer.load_tokenizer(name)
  assert tok.encode(SENTENCE) == IDS
  assert tok.decode(IDS) == SENTENCE
  assert tok.eos_token_id == 50256 and len(tok) == 50257


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared is not beside this checkout")
def test_shipped_files_equal_shared_ones():
  for f in ("vocab.json", "merges.txt"):
    with open(os.path.join(SHARED, f), "rb") as a, open(os.path.join(tokenizer.GPT2_ASSETS, f), "rb") as b:
      assert a.read() == b.read()


def test_folder_without_merges_is_an_error(tmp_path):
  shutil.copy(os.path.join(tokenizer.GPT2_ASSETS, "vocab.json"), tmp_path)
  with pytest.raises(FileNotFoundError, match="lacks merges.txt"):
    tokenizer.load_tokenizer(str(tmp_path))


def test_missing_folder_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    tokenizer.load_tokenizer(str(tmp_path / "nope"))
