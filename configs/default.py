"""The seed's setup at full size: GPT-2 small as the frozen encoder, a 130M DiT generator, TinyStories.

python -m driftjax.main --config=configs/default.py --workdir=DIR
Where the paper's own (ImageNet) settings differ, the comment says so.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.mode = "train"  # Default mode; --mode overrides it.
  config.seed = 0

  # Generator (driftjax.models.generator.GeneratorConfig): DiT with RoPE, SwiGLU, RMSNorm, QK-norm, adaLN-Zero.
  config.model = ml_collections.ConfigDict()
  config.model.seq_len = 256  # Tokens per sample (the seed's length).
  config.model.width = 768
  config.model.depth = 12
  config.model.heads = 12
  config.model.mlp_ratio = 8 / 3  # SwiGLU hidden = 2048 at width 768: about 130M parameters in all.
  config.model.noise_dim = 768  # Per-position Gaussian noise width.
  # "position": each position its own noise draw; "sample": one draw per sample, read at every position.
  config.model.noise_scope = "position"
  # head="vocab": > 0 lets the one step read its own draft: the frozen LM reads the blocks' argmax tokens, and this
  # many more blocks turn its states into the final logits (driftjax/models/generator.py; 0: off).
  config.model.draft_blocks = 0
  # head="vocab", > 0: a slotted layout (driftjax/models/layout.py): the generator writes layout_positions positions
  # over the vocabulary plus a filler token, each sentence starting at a multiple of layout_multiple (at least the
  # longest sentence: sentence k at k * layout_multiple); decoding drops the fillers. 0: off.
  config.model.layout_multiple = 0
  config.model.layout_positions = 0
  config.model.style_tokens = 32  # Style vector = sum of 32 embeddings drawn from a 64-entry codebook.
  config.model.style_codebook = 64
  config.model.pos_init_scale = (
    1.0  # Position signal at the noise's scale (0.02 was drowned; docs/method.md section 5).
  )
  # Compute dtype; parameters stay float32. bfloat16 products accumulate in float32 (driftjax/models/matmul.py):
  # on GPUs, TPUs and CPUs with AVX512-BF16 about twice the float32 rate (docs/benchmarks.md). "float32" for
  # exact comparisons; the small configs (smoke, demo) use it.
  config.model.dtype = "bfloat16"
  config.model.head = "embedding"  # The paper's: embeddings. "vocab": logits whose expected embedding feeds the
  config.model.vocab_mode = "soft"  # encoder ("soft"), or the argmax token's with that gradient ("straight_through").
  # "straight_through_linear": the argmax token's, with each logit's gradient its token's first-order swap gain
  # (not scaled by its probability); linear_top_k > 0 limits that gradient to the head's k likeliest tokens.
  config.model.linear_top_k = 0
  # "batch" / "sample": each logit's linear gradient minus its mean over the samples and positions / over each
  # sample's positions ("": off).
  config.model.linear_center = ""
  config.model.st_temperature = 1.0  # "straight_through": the backward softmax's temperature (>1: flatter).
  config.model.linear_mix = 0.0  # "straight_through": logit v's swap score weighs p_v + this (a floor), not p_v.
  config.model.remat = False  # Recompute each generator block in the backward pass: less memory, ~1/3 more FLOPs.

  # Frozen feature encoder: GPT-2 in Flax NNX with Hugging Face weights (hub name or local folder).
  config.encoder = ml_collections.ConfigDict()
  config.encoder.name = "gpt2"
  config.encoder.tokenizer = "gpt2"  # GPT-2's vocabulary ships with driftjax: works offline.
  config.encoder.dtype = "bfloat16"  # As model.dtype; features enter the field in float32 either way.
  config.encoder.remat = False  # Recompute each encoder block in the backward pass through the generated rows.
  # A random GPT-2 written to DIR/random_gpt2 instead (tests, benchmarks: speed does not depend on weights).
  config.encoder.random = ml_collections.ConfigDict()
  config.encoder.random.enabled = False
  config.encoder.random.n_layer = 12
  config.encoder.random.n_embd = 768
  config.encoder.random.n_head = 12
  config.encoder.random.n_positions = 1024
  config.encoder.random.seed = 0

  # Drift features and field (docs/method.md sections 2-3).
  config.drift = ml_collections.ConfigDict()
  config.drift.layers = (3, 6, 9, 12)  # Hidden states (HF indexing: 12 = after the final norm).
  config.drift.raw = True  # Also the embeddings themselves ("raw"): pulls outputs onto real tokens.
  config.drift.poolings = ("pos", "mean", "std", "win4_mean", "win4_std", "win16_mean", "win16_std", "rms")
  config.drift.temperatures = (0.02, 0.05, 0.2)  # Relative to the mean distance (the paper's set).
  config.drift.softmax = "double"  # Ablations: double_floor | cols | split (field.FieldConfig).
  config.drift.drift_norm = "per_temperature"  # Ablation: none.
  config.drift.temperature_units = "mean_distance"  # Ablation: feature.
  config.drift.self_mask = 100.0
  # Where the positives come from (issue 14; docs/demo.md "Teacher positives"): "data" (real stories'
  # features, as above), "teacher" (per position, the frozen LM's likely next tokens after the sample's own
  # decoded prefix, weighted by their probabilities, against the other samples' tokens at that position; a
  # field on token embeddings), "continuation" (the LM's continuations of each decoded sample from the first
  # token it finds unlikely: whole-sample positives near the sample, through the same features as "data"), or
  # several joined by "+" (the sum of their losses), e.g. "data+teacher", "data+continuation".
  config.drift.positives = "data"
  config.drift.teacher_top_k = 8  # Candidate next tokens per position.
  config.drift.teacher_floor = 0.01  # Candidates below this probability weigh 0.
  # And those below this fraction of the position's top probability (min-p; 0: off), for a larger top_k.
  config.drift.teacher_min_ratio = 0.0
  # > 0: tokens that would repeat an n-gram already in the sample are masked: teacher candidates weigh 0, and
  # continuations replace such tokens and never propose them.
  config.drift.teacher_repeat_ngram = 0
  config.drift.teacher_repeat_window = 0  # > 0: the sample's own previous w tokens are extra negatives.
  config.drift.teacher_weight = 1.0  # Weight of the teacher loss in the sum.
  config.drift.continuation_samples = 4  # Continuations per generated sample (M): M x n_gen positives.
  # "continue": the sample's tokens up to the first the LM finds unlikely (not in its top teacher_top_k with
  # probability >= teacher_floor), then the LM's samples; "repair": each unlikely token replaced, the rest kept
  # (both a sequential, KV-cached pass of the LM); "resample": "repair" in one parallel pass, each position
  # conditioned on the sample's own tokens before it (faster; later tokens do not see earlier repairs);
  # "ancestral": none of the sample's tokens kept (the LM's own sample, among the same candidates).
  config.drift.continuation_policy = "continue"
  config.drift.continuation_weight = 1.0  # Weight of the continuation loss in the sum.
  # "batch": all the group's continuations are positives of each sample (the data loss's kernel); "own": each
  # sample is drawn only to its own M continuations and repelled by the group's other samples.
  config.drift.continuation_kernel = "batch"
  # "noise": the LM's draws for a sample are the inverse CDF at the uniforms Phi(noise[:, t, 0]) of the sample's
  # own generator noise, so its continuation is a function of its noise (ancestral + noise: the generator learns
  # the LM's sampling map from noise to story); "none": independent draws.
  config.drift.continuation_coupling = "none"
  # The LM's draws among its candidates at this temperature; 0: greedy (its likeliest candidate).
  config.drift.continuation_temperature = 1.0
  # > 0: plus this weight times the cross-entropy of the vocab head's logits toward the continuations' tokens (a
  # sample's own M draws): the LM's choices reach the head at any probability (the straight-through gradient
  # scales each token's push by it). 0: the field alone.
  config.drift.continuation_ce_weight = 0.0
  # The cross-entropy from this step on (0: from the start, which makes every sample the same story; after the
  # field alone has spread the samples it sharpens each: docs/demo.md, session 9).
  config.drift.continuation_ce_start = 0
  # The cross-entropy's targets: "draws" (a sample's M draws: the mean over them) or "likeliest" (the one of its
  # draws the LM finds likeliest: one consistent target per sample).
  config.drift.continuation_ce_target = "draws"
  # > 0: the continuations keep or draw each token with weight min(1, its share of the step's real rows' tokens /
  # its share of the samples') ** this, so an over-written choice (one colour of eight) is redrawn in part among
  # the LM's candidates. Needs data.n_pos real rows in the step. 0: off.
  config.drift.continuation_balance = 0.0
  # > 0: the sequential continuations' LM lowers each token's log-probability by this many nats for every time it
  # stands among the new row's last continuation_repeat_window tokens (0: anywhere before), before its top-k and
  # min-p tests (a repetition penalty: the repairs stop endorsing a small LM's loops). 0: off.
  config.drift.continuation_repeat_penalty = 0.0
  config.drift.continuation_repeat_window = 0
  # >= 2: where at least this many of the LM's candidates are acceptable (a choice point: a name, a colour), the
  # repair's token is the inverse CDF at the sample's Phi(noise[:, t, 0]) over them, whatever the sample wrote: the
  # choice becomes a function of the noise the generator reads there. Needs the "repair" policy. 0: off.
  config.drift.continuation_choices = 0
  config.drift.continuation_choices_from = 0  # No choice points before this position.
  # > 0: plus this weight times the cross-entropy of real stories' tokens under the batch's mixture of the vocab
  # head's distributions at each position: together the samples must offer every real choice (coverage), while
  # no sample is pulled to the marginal. 0: off.
  config.drift.mixture_ce_weight = 0.0
  # The mixture cross-entropy's first this many positions (0: all): where real stories are aligned.
  config.drift.mixture_ce_positions = 0
  # > 0: plus this weight times the cross-entropy of each sample toward one real story of the batch, matched one
  # to one (greedily, by the head's own cross-entropy): each sample is pulled to a real story it is near, and
  # the samples to as many stories as there are samples. Needs data.n_pos >= data.n_gen. 0: off.
  config.drift.matched_ce_weight = 0.0
  # The matched cross-entropy's first this many positions (0: all).
  config.drift.matched_ce_positions = 0
  # > 0: the matching and the matched cross-entropy also hold this weight times the divergence of the sample's
  # bag of tokens (order ignored) from its match's: the match's later choices count wherever they are said.
  config.drift.matched_ce_bag_weight = 0.0
  # > 0: the matching and the matched cross-entropy compare a sample with a real story under their cheapest
  # monotone alignment, each token of either left unaligned costing this many nats (a sentence said a few tokens
  # early or late is still compared with the same sentence). 0: position by position.
  config.drift.matched_ce_gap = 0.0
  # > 0: the matching chooses among the step's first this many real stories (data.n_gen to data.n_pos; 0: all):
  # with as many as samples, every real opening of the step is some sample's target (docs/demo.md, session 20).
  config.drift.matched_ce_rows = 0
  # Which real opening a sample is pulled to: "nearest" (the matching above, among the step's stories) or "noise"
  # (the opening at the sample's noise quantile among every training story's, sorted in token order: the same
  # noise keeps the same target from step to step; files:, synthetic and tinystories_sample sources).
  config.drift.matched_ce_coupling = "nearest"
  # With the "noise" coupling, > 0: the nearest opening among this many sorted ones around the noise's quantile (the
  # noise picks the coarse choices, the head the rest); 0: the opening at the quantile (docs/demo.md, session 21).
  config.drift.matched_ce_window = 0
  # > 0: plus this weight times the divergence of the batch's pooled bag of tokens from the real rows': together
  # the samples must say each token as often as real stories do, wherever they say it. 0: off.
  config.drift.mixture_bag_weight = 0.0
  # The pooled bag's units: 1, tokens; 2 (3), runs of two (three) adjacent tokens.
  config.drift.mixture_bag_n = 1
  # The pooled bag's target: "batch", the step's real rows; "split", every training row's n-grams, counted once
  # before training (files:, synthetic and tinystories_sample sources): the same target without its sampling noise.
  config.drift.mixture_bag_target = "batch"
  # Whose counts weigh the pooled bag's gradient: "expected" (the softmax's: the plain cross-entropy) or "argmax"
  # (the tokens the samples write: a choice no sample writes is pushed hardest, up to mixture_bag_max_ratio times
  # an exact one's; docs/demo.md, sessions 20 and 22).
  config.drift.mixture_bag_counts = "expected"
  config.drift.mixture_bag_max_ratio = 10.0

  # Batches: G groups, each of n_gen generated and n_pos real samples (paper: 64 and 64 per class).
  config.data = ml_collections.ConfigDict()
  config.data.source = "hf:roneneldan/TinyStories"  # Or files:<glob> (.txt / .jsonl), synthetic, tinystories_sample.
  config.data.split = "train"  # For hf: sources.
  config.data.groups = 1  # G; groups shard over the data axis of the mesh.
  config.data.n_gen = 64  # Generated samples per group.
  config.data.n_pos = 64  # Fresh real samples per group per step.
  config.data.queue_size = 0  # Earlier real samples per group added as positives (paper: more positives help).
  config.data.pack = False  # Pad each story with end-of-text (False) or pack stories into rows (True).
  config.data.holdout = 0  # Rows held out of training as the data reference (files:, synthetic, tinystories_sample).
  config.data.synthetic_docs = 0  # Stories drawn from the grammar for data.source=synthetic.

  # AdamW with linear warmup then cosine decay (the seed's settings).
  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 1e-4  # The paper's ImageNet runs use a larger batch and lr (their Table 8).
  config.optim.b1 = 0.9
  config.optim.b2 = 0.95
  config.optim.weight_decay = 0.05  # Matrices only; norms and biases are not decayed.
  config.optim.warmup_steps = 5000
  config.optim.total_steps = 100_000
  config.optim.final_lr_fraction = 0.1  # Cosine decays to lr * this.
  config.optim.clip = 2.0  # Global gradient-norm clipping.
  config.optim.ema_decay = 0.999  # EMA of generator parameters, used for sampling.

  # The loop.
  config.train = ml_collections.ConfigDict()
  config.train.num_devices = 0  # 0: every device; the mesh has one "data" axis.
  config.train.fsdp = False  # Shard generator params and optimizer state over "data" (large generators).
  # > 0: features and gradients in chunks of this many rows (it must divide the generated and the positive rows
  # per step): the activations of a chunk alive at a time instead of the batch's, for one more forward pass of the
  # generated rows; the same loss and gradients. drift.positives="data" and model.head="embedding" only. 0: off.
  config.train.chunk = 0
  config.train.log_every = 50  # Metrics every N steps (read one step late).
  config.train.checkpoint_every = 1000
  config.train.keep_checkpoints = 3
  config.train.async_checkpoints = True
  config.train.stop_after_steps = 0  # Stop (after a checkpoint) once this run has done N steps; 0: never.
  config.train.eval_every = 0  # Quick evaluation of EMA samples every N steps (0: off).
  config.train.eval_samples = 16  # Samples per quick evaluation.

  # --mode=sample: the EMA generator of DIR's latest checkpoint (or `step`), one forward pass per batch.
  config.sample = ml_collections.ConfigDict()
  config.sample.step = -1  # -1: the latest checkpoint.
  config.sample.n_samples = 64
  config.sample.batch = 16
  config.sample.metric = "l2"  # Nearest token by "l2" or "cosine" distance.
  config.sample.temperature = 0.0  # 0: nearest token; T > 0: sample from softmax(-distance / T).
  config.sample.top_k = 0  # With T > 0: sample among the k nearest tokens (0: the whole vocabulary).
  config.sample.seed = 1
  config.sample.print_samples = 3

  # --mode=eval: metrics of a samples file with reference rows (held-out data, the evaluator's own samples).
  config.eval = ml_collections.ConfigDict()
  config.eval.samples_file = ""  # Default: DIR/samples' latest.
  # Hub name or HF folder; "pretrained": the independent LM --mode=pretrain_encoder trains (pretrain.evaluator);
  # "" uses the encoder itself (which then grades samples it helped to train: not an independent score).
  config.eval.evaluator = "gpt2-large"
  config.eval.evaluator_tokenizer = ""  # Default: the evaluator's own name.
  config.eval.data_split = "validation"  # For hf: sources, the split of the data reference.
  config.eval.bleu_samples = 200  # Self-BLEU over the first N samples (it is quadratic).
  # MAUVE of the samples against the data reference (needs the eval extra: pip install -e '.[eval]'), on the
  # evaluator's features; comparable with published MAUVE only when the evaluator is gpt2-large.
  config.eval.mauve = True
  config.eval.sweep_temperatures = ()  # E.g. (0.5, 1.0, 2.0): a gen-PPL vs entropy frontier plot.
  config.eval.seed = 2
  config.eval.ar_batch = 32  # Batch of the "ar" row's samples: the encoder LM's own (KV-cached), scored likewise.

  # --mode=pretrain_encoder: a small GPT-2 LM trained on data.source (offline encoder and evaluator).
  config.pretrain = ml_collections.ConfigDict()
  config.pretrain.out_dir = "encoder"  # Written to DIR/encoder; reused when it exists.
  config.pretrain.docs = 20_000  # Documents read from the source (synthetic: stories generated).
  config.pretrain.bpe_vocab_size = 0  # > 0: train a byte-level BPE tokenizer of this size on the corpus.
  config.pretrain.n_layer = 4
  config.pretrain.n_embd = 256
  config.pretrain.n_head = 4
  config.pretrain.seq_len = 128
  config.pretrain.steps = 2000
  config.pretrain.batch = 32
  config.pretrain.lr = 1e-3
  config.pretrain.log_every = 100
  # A second LM for evaluation only (eval.evaluator="pretrained"): the same data and tokenizer, another seed and
  # its own size (at least twice the encoder's parameters), never used in training.
  config.pretrain.evaluator = ml_collections.ConfigDict()
  config.pretrain.evaluator.enabled = False
  config.pretrain.evaluator.out_dir = "evaluator"  # DIR/evaluator; reused when it exists.
  config.pretrain.evaluator.seed = 1
  config.pretrain.evaluator.n_layer = 4
  config.pretrain.evaluator.n_embd = 384
  config.pretrain.evaluator.n_head = 6
  config.pretrain.evaluator.steps = 2000
  return config
