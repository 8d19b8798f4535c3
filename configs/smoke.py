"""A tiny end-to-end run that needs no network and no real weights: under a minute on 2 CPU cores.

python -m driftjax.main --config=configs/smoke.py --workdir=runs/smoke
It writes a random GPT-2 encoder in the Hugging Face layout to DIR/random_gpt2 (once) and trains a tiny
generator for 20 steps on the TinyStories sample that ships with driftjax (data.source="tinystories_sample").
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.seq_len = 32
  config.model.width = 64
  config.model.depth = 2
  config.model.heads = 4
  config.model.noise_dim = 32
  config.model.style_tokens = 8
  config.model.style_codebook = 16
  config.model.dtype = config.encoder.dtype = "float32"  # Tests compare steps to 1e-5.

  config.encoder.name = ""  # Unused: the random encoder below is written to DIR/random_gpt2.
  config.encoder.random.enabled = True
  config.encoder.random.n_layer = 2
  config.encoder.random.n_embd = 32
  config.encoder.random.n_head = 4
  config.encoder.random.n_positions = 64
  config.encoder.random.seed = 0

  config.drift.layers = (1, 2)
  config.data.source = "tinystories_sample"  # 1,200 real stories shipped in driftjax/assets/tinystories.
  config.data.n_gen = 16
  config.data.n_pos = 16
  config.data.queue_size = 16
  config.data.holdout = 64

  config.optim.lr = 1e-3
  config.optim.warmup_steps = 5
  config.optim.total_steps = 20
  config.train.log_every = 5
  config.train.checkpoint_every = 10
  config.sample.n_samples = 16
  config.eval.evaluator = ""  # The random encoder scores too: the numbers only have to be finite.
  config.eval.bleu_samples = 16
  config.eval.mauve = False  # 16 samples make 2 MAUVE buckets (n / 10, at least 2): a number with no meaning.
  return config
