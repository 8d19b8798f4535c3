"""--mode=pretrain_encoder: a tiny LM with its own BPE tokenizer, saved in the HF layout and reused."""

import os

import numpy as np

from configs import default
from driftjax import metrics
from driftjax import pretrain
from driftjax.data import synthetic
from driftjax.data import tokenizer as tok_lib
from driftjax.models import gpt2


def test_pretrain_encoder_writes_hf_folder_and_is_reused(tmp_path):
  config = default.get_config()
  config.data.source = "synthetic"
  p = config.pretrain
  p.docs, p.bpe_vocab_size, p.n_layer, p.n_embd, p.n_head = 300, 400, 1, 32, 2
  p.seq_len, p.steps, p.batch, p.lr, p.log_every = 32, 60, 16, 3e-3, 0
  out = pretrain.pretrain_encoder(config, str(tmp_path))
  assert sorted(os.listdir(out)) == ["config.json", "merges.txt", "model.safetensors", "vocab.json"]
  tok = tok_lib.load_tokenizer(out)
  model = gpt2.load_gpt2(out)
  assert len(tok) == 400 and model.cfg.vocab_size == 400 and tok.decode(tok.encode("Once upon")) == "Once upon"
  # It learned the corpus: held-out grammar stories are likelier than the same tokens shuffled.
  held = synthetic.generate_stories(8, seed=99)
  rng = np.random.default_rng(0)
  shuffled = [tok.decode(rng.permutation(tok.encode(t)).tolist()) for t in held]
  assert metrics.gen_ppl(model, tok, held) < 0.5 * metrics.gen_ppl(model, tok, shuffled)
  mtime = os.path.getmtime(os.path.join(out, "model.safetensors"))
  assert pretrain.pretrain_encoder(config, str(tmp_path)) == out  # Reused, not retrained.
  assert os.path.getmtime(os.path.join(out, "model.safetensors")) == mtime
