"""The offline demo (README's main job): drifting learns a story grammar on 2 CPU cores (8-35 minutes).

python -m driftjax.main --config=configs/demo.py --workdir=runs/demo
--mode=demo runs: pretrain a tiny GPT-2 LM with a byte-level BPE on the built-in story grammar (the frozen
encoder) and a second, larger LM for evaluation only (both reused if DIR has them), train a small drifting
generator, sample it, evaluate the generator at init and at the end against held-out stories and the encoder
LM's own samples under the evaluation LM, and write
DIR/report.json, DIR/report.md and DIR/curves.png. Real stories instead (the 1,200-story sample shipped in
driftjax/assets/tinystories): --config.data.source=tinystories_sample
The paper's pure feature matching against real stories (no LM positives, no cross-entropy):
--config=configs/demo.py:paper
"""

from configs import default


def get_config(variant: str = ""):
  """variant: "" (the demo) or "paper" (data positives only; given as --config=configs/demo.py:paper)."""
  if variant not in ("", "paper"):
    raise ValueError(f"configs/demo.py knows the variants '' and 'paper', not {variant!r}")
  config = default.get_config()
  config.mode = "demo"

  config.data.source = "synthetic"
  config.data.synthetic_docs = 20_000  # Stories in the corpus (files: sources use every story of the files).
  config.data.holdout = 512  # Stories held out of training and pretraining: the data reference.
  config.data.n_gen = 32
  # 128 real stories per step for the 32 samples: the pooled bag of pairs' target and the one-to-one matching's
  # choices (below; the LM encodes none of them). From scratch on the same two LMs, 32 gave gen-PPL 3.17 under the
  # independent LM, grammatical_rate 0.838 and coverage_tv 0.221 over 512 samples; 128 give 2.34, 0.909 and 0.176
  # (seed 2: 2.84, 0.843, 0.151; on session 13's LMs over 1,024: 2.90 / 0.852 / 0.187 against 2.82 / 0.854 / 0.153;
  # docs/demo.md "Session 18").
  config.data.n_pos = 128
  config.data.queue_size = 0

  # Encoder: trained here by --mode=pretrain_encoder (DIR/encoder), with its own BPE vocabulary.
  config.encoder.name = "pretrained"
  config.encoder.tokenizer = "pretrained"
  config.pretrain.docs = 20_000
  config.pretrain.bpe_vocab_size = 1024  # The grammar's words all become single tokens (614 are used).
  config.pretrain.n_layer = 2
  config.pretrain.n_embd = 128
  config.pretrain.n_head = 4
  config.pretrain.seq_len = 96
  config.pretrain.steps = 500
  config.pretrain.batch = 32
  config.pretrain.lr = 3e-3
  # gen_ppl under a second LM trained here for evaluation only (DIR/evaluator): another seed, about twice the
  # encoder's parameters, the same training stories and tokenizer. The encoder's own score is gen_ppl_encoder.
  config.eval.evaluator = "pretrained"
  config.pretrain.evaluator.enabled = True
  config.pretrain.evaluator.seed = 1
  config.pretrain.evaluator.n_layer = 2
  config.pretrain.evaluator.n_embd = 192
  config.pretrain.evaluator.n_head = 4
  config.pretrain.evaluator.steps = 500

  config.model.seq_len = 96  # The grammar's stories are 70-91 tokens; shorter ones end in end-of-text.
  config.model.width = 128
  config.model.depth = 3
  config.model.heads = 4
  config.model.noise_dim = 64
  config.model.style_tokens = 8
  config.model.style_codebook = 16
  config.model.dtype = config.encoder.dtype = "float32"  # The demo's figures (docs/demo.md) are float32.
  config.model.head = "vocab"  # Outputs among the token embeddings (docs/method.md section 5, docs/demo.md).
  # The argmax token with the soft gradient. "straight_through_linear" (every logit gets its token's swap score)
  # made free sequences 3.5x better but collapsed the generator (docs/demo.md, session 8).
  config.model.vocab_mode = "straight_through"

  config.drift.layers = (1, 2)
  config.drift.raw = True
  # One kernel over whole samples: per-position kernels each pick their own nearest real story and left free
  # token sequences as word salad (gen-PPL in the thousands); see docs/demo.md.
  config.drift.poolings = ("flat",)
  # Positives: the LM's repairs of each sample (its unlikely tokens redrawn by the LM, the rest kept), each
  # sample drawn only to its own 4 repairs (issue 14; docs/demo.md "Continuation positives": after 600 steps
  # gen-PPL 24 / 32 / 97 under the independent LM and grammatical_rate 0.50-0.56 over three seeds, against 1,510
  # and 0.16 with data positives).
  config.drift.positives = "continuation"
  config.drift.continuation_policy = "repair"
  config.drift.continuation_kernel = "own"
  config.drift.continuation_samples = 4
  # A repair keeps (or draws) a token among the LM's top 16 with at least 0.3 of the LM's top probability there
  # (min-p; configs/default.py: the top 8 above 0.01). The grammar's 12 names and 10 objects each get 0.07-0.13
  # from the LM, so the top 8 rewrote 4 names and 2 objects in every repair; the ratio keeps out the weak words the
  # plain top 16 let in (docs/demo.md "Session 17", from scratch: on session 13's LMs the top 8's quality over 1,024
  # samples, gen-PPL 2.90 against 2.94 under the independent LM and grammatical_rate 0.852 against 0.851, with
  # coverage_tv 0.187 against 0.220; on the LMs of the 512-story split 3.17 / 0.838 / 0.221 against 3.59 / 0.817 /
  # 0.312 over 512; within 0.5 of the top no better). The step costs the same.
  config.drift.teacher_top_k = 16
  config.drift.teacher_min_ratio = 0.3
  # The field at a fifth of its weight beside the two cross-entropies below (docs/demo.md "Session 12": over 600
  # steps, two seeds, gen-PPL 3.1 / 3.4 under the independent LM and grammatical_rate 0.87 / 0.82, against 5.6 /
  # 11.4 and 0.77 / 0.65 at full weight, whose late sentences broke; without the field, 3.0 / 3.1 and 0.85 / 0.84).
  config.drift.continuation_weight = 0.2
  # Also the cross-entropy of the vocab head toward those repairs, and toward one real story per sample over the
  # first 16 positions (the openings), the stories matched one to one to the samples (matched_cross_entropy):
  # each sample keeps to its own story, so the samples cannot all become the same one and the repairs' CE can
  # start at step 0 (docs/demo.md "Session 11": over two seeds of 600 steps gen-PPL 5.6 / 11.8, grammatical_rate
  # 0.77 / 0.65, coverage_tv 0.48 / 0.53, against 5.8 / 10.3, 0.75 / 0.63 and 0.69 / 0.63 with the repairs' CE
  # alone from step 300, which made most samples the same happy bear).
  # The field alone, at full weight: --config.drift.continuation_ce_weight=0 --config.drift.matched_ce_weight=0
  # --config.drift.continuation_weight=1
  config.drift.continuation_ce_weight = 1.0
  config.drift.continuation_ce_start = 0
  config.drift.matched_ce_weight = 1.0
  config.drift.matched_ce_positions = 16
  # And the divergence of the batch's pooled bag of adjacent token pairs from the real stories' (mixture_bag_
  # divergence): together the samples must say each pair as often as real stories do, wherever they say it, which
  # spreads the choices made after the opening (docs/demo.md "Session 13": over two seeds of 600 steps
  # coverage_tv 0.30 / 0.31 against 0.52 / 0.51 without it, gen-PPL 2.9 / 3.2 and grammatical_rate 0.85 / 0.84).
  config.drift.mixture_bag_weight = 1.0
  config.drift.mixture_bag_n = 2
  if variant == "paper":  # Real stories as every sample's positives (docs/demo.md: gen-PPL 533 at 1,400 steps).
    config.drift.positives = "data"
    config.drift.continuation_ce_weight = config.drift.matched_ce_weight = config.drift.mixture_bag_weight = 0.0
    config.data.n_pos = 32  # Its figure's positives per step (each one encoded by the LM).

  config.optim.lr = 3e-3
  config.optim.warmup_steps = 100
  config.optim.total_steps = 600  # 0.55-2.75 s per step on 2 cores by machine (the LM's sequential repair included).
  config.optim.ema_decay = 0.99
  config.optim.weight_decay = 0.0

  config.train.log_every = 50
  config.train.checkpoint_every = 500
  config.train.eval_every = 200  # Quick evaluations (64 samples) for the curves.
  config.train.eval_samples = 64
  config.train.async_checkpoints = False

  # 512 samples: coverage_tv's floor (two draws of the grammar) is 0.066 at 512 against 0.124 at 128 (docs/demo.md,
  # session 17), so the 0.15 target measures the generator rather than the sampling noise.
  config.sample.n_samples = 512
  config.sample.batch = 128
  config.eval.bleu_samples = 128
  config.eval.ar_batch = 64
  # MAUVE stays on: 512 samples make 51 buckets (n / 10); it adds a few seconds (mostly importing faiss and
  # scikit-learn).
  # Its features are the demo LM's, so it does not compare with published (gpt2-large) MAUVE.
  return config
