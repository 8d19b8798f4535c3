"""--mode=pretrain_encoder: a tiny LM with its own BPE tokenizer, saved in the HF layout and reused."""

import os

import numpy as np
import pytest

from configs import default
from driftjax import text_metrics
from driftjax import pretrain
from driftjax import build
from driftjax.data import synthetic
from driftjax.data import tokenizer as tok_lib
from driftjax.models import gpt2


def test_pretrain_encoder_writes_hf_folder_and_is_reused(tmp_path):
  config = default.get_config()
  config.data.source = "synthetic"
  config.data.synthetic_docs = 300
  p = config.pretrain
  p.docs, p.bpe_vocab_size, p.n_layer, p.n_embd, p.n_head = 300, 400, 1, 32, 2
  p.seq_len, p.steps, p.batch, p.lr, p.log_every = 32, 60, 16, 3e-3, 0
  out = pretrain.run(config, str(tmp_path))
  assert sorted(os.listdir(out)) == ["config.json", "merges.txt", "model.safetensors", "vocab.json"]
  tok = tok_lib.load_tokenizer(out)
  model = gpt2.load_gpt2(out)
  assert len(tok) == 400 and model.cfg.vocab_size == 400 and tok.decode(tok.encode("Once upon")) == "Once upon"
  # It learned the corpus: held-out grammar stories are likelier than the same tokens shuffled.
  held = synthetic.generate_stories(8, seed=99)
  rng = np.random.default_rng(0)
  shuffled = [tok.decode(rng.permutation(tok.encode(t)).tolist()) for t in held]
  assert text_metrics.gen_ppl(model, tok, held) < 0.5 * text_metrics.gen_ppl(model, tok, shuffled)
  mtime = os.path.getmtime(os.path.join(out, "model.safetensors"))
  assert pretrain.run(config, str(tmp_path)) == out  # Reused, not retrained.
  assert os.path.getmtime(os.path.join(out, "model.safetensors")) == mtime
  # The evaluation LM, added to the same folder later: the encoder is kept, the evaluator trained beside it with
  # the encoder's tokenizer, its own seed and size.
  config.eval.evaluator = "pretrained"
  with pytest.raises(FileNotFoundError, match="eval.evaluator='pretrained' but .*evaluator holds no model"):
    build.load_evaluator(config, str(tmp_path), model, tok)
  config.pretrain.evaluator.update(enabled=True, n_layer=1, n_embd=64, n_head=2, steps=5)
  config.pretrain.evaluator.seed = config.seed
  with pytest.raises(ValueError, match="pretrain.evaluator.seed=0 equals the encoder's seed"):
    pretrain.run(config, str(tmp_path))
  config.pretrain.evaluator.seed = 1
  assert pretrain.run(config, str(tmp_path)) == out
  assert os.path.getmtime(os.path.join(out, "model.safetensors")) == mtime
  evaluator, eval_tok, name = build.load_evaluator(config, str(tmp_path), model, tok)
  assert name == str(tmp_path / "evaluator") and evaluator.cfg.n_embd == 64
  assert eval_tok.get_vocab() == tok.get_vocab()  # The same tokens as the encoder's.


def test_pretraining_never_sees_the_held_out_stories(tmp_path, monkeypatch):
  config = default.get_config()
  config.data.source, config.data.synthetic_docs, config.data.holdout = "synthetic", 50, 10
  config.pretrain.docs, config.pretrain.bpe_vocab_size = 0, 300
  seen = []

  def fake_train_lm(texts, tokenizer, **kw):
    seen.extend(texts)
    raise RuntimeError("stop here")

  monkeypatch.setattr(pretrain, "train_lm", fake_train_lm)
  with pytest.raises(RuntimeError, match="stop here"):
    pretrain.run(config, str(tmp_path))
  corpus = build.corpus(config)
  train_docs, held = corpus.documents("train"), corpus.documents("heldout")
  assert len(seen) == 40 and set(seen) == set(train_docs) and not set(seen) & set(held)
  assert not os.path.exists(tmp_path / "encoder")  # Nothing half-written where the encoder goes.


def test_pretrained_tokenizer_needs_a_bpe(tmp_path):
  config = default.get_config()
  config.data.source, config.data.synthetic_docs = "synthetic", 20
  config.encoder.tokenizer = "pretrained"
  with pytest.raises(ValueError, match="encoder.tokenizer='pretrained' needs pretrain.bpe_vocab_size > 0"):
    pretrain.run(config, str(tmp_path))


def test_document_rows_start_stories_and_weigh_no_padding():
  tok = tok_lib.load_tokenizer("gpt2")
  rows, weights = pretrain.document_rows(["a b", "c d e f g h i j k"], tok, seq_len=4)
  eos = tok.eos_token_id
  assert rows.shape == (2, 6) and weights.shape == (2, 5)
  assert rows[0].tolist() == [eos] + tok.encode("a b") + [eos] * 3
  assert weights[0].tolist() == [1, 1, 1, 0, 0]  # "a", "b" and the closing end-of-text.
  assert rows[1, 0] == eos and rows[1, -1] == eos and weights[1].sum() == 5  # Truncated, still closed.
