"""Tokenizer loading: a local folder with vocab.json + merges.txt, a hub name, or GPT-2's files shipped here."""

from __future__ import annotations

import os

GPT2_ASSETS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets", "gpt2_tokenizer")
# Hub names whose tokenizer is GPT-2's own: served from the shipped files, no network needed.
GPT2_NAMES = ("gpt2", "openai-community/gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")


def load_tokenizer(name_or_path: str):
  """A transformers fast tokenizer with eos (end-of-text) set; pad is eos, as in GPT-2."""
  from transformers import AutoTokenizer, GPT2TokenizerFast

  if name_or_path in GPT2_NAMES:
    name_or_path = GPT2_ASSETS
  if os.path.isdir(name_or_path):
    missing = [f for f in ("vocab.json", "merges.txt") if not os.path.exists(os.path.join(name_or_path, f))]
    has_json = os.path.exists(os.path.join(name_or_path, "tokenizer.json"))
    if missing and not has_json:
      raise FileNotFoundError(
        f"tokenizer folder {name_or_path} lacks {' and '.join(missing)} "
        "(a byte-level BPE tokenizer needs vocab.json and merges.txt)"
      )
    # Note: GPT2TokenizerFast(vocab_file=..., merges_file=...) builds an empty tokenizer in transformers 5.x;
    # from_pretrained on the folder reads the files properly.
    tok = GPT2TokenizerFast.from_pretrained(name_or_path)
  elif os.path.exists(name_or_path) or name_or_path.startswith((".", "/")):
    raise FileNotFoundError(f"tokenizer: {name_or_path!r} is not a folder")
  else:
    try:
      tok = AutoTokenizer.from_pretrained(name_or_path)
    except Exception as e:
      raise OSError(
        f"could not load tokenizer {name_or_path!r} from the Hugging Face hub ({e}); pass a "
        "local folder with vocab.json and merges.txt instead"
      ) from e
  if len(tok) == 0:
    raise ValueError(f"tokenizer {name_or_path!r} is empty")
  if tok.eos_token_id is None:
    if "<|endoftext|>" not in tok.get_vocab():
      raise ValueError(f"tokenizer {name_or_path!r} has no end-of-text token")
    tok.eos_token = "<|endoftext|>"
  tok.pad_token = tok.eos_token
  return tok


def sentence_end_ids(tokenizer) -> tuple[int, ...]:
  """The tokens that end a sentence: those whose text, stripped of whitespace, ends in ".", "!" or "?"."""
  ids = range(len(tokenizer))
  return tuple(
    i for i, text in zip(ids, tokenizer.batch_decode([[i] for i in ids])) if text.strip().endswith((".", "!", "?"))
  )
