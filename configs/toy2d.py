"""The paper's 2D toy (Fig. 3): an MLP generator trained with the drifting field in raw 2D space.

python -m driftjax.main --config=configs/toy2d.py --workdir=runs/toy2d
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.mode = "toy2d"  # Default mode of this config; --mode overrides it.
  config.seed = 0

  # The field's settings (driftjax.drift.field.FieldConfig); the paper's defaults.
  config.drift = ml_collections.ConfigDict()
  config.drift.temperatures = (0.02, 0.05, 0.2)  # Relative to the mean distance s.
  config.drift.softmax = "double"  # Ablations: double_floor | cols.
  config.drift.drift_norm = "per_temperature"  # Ablation: none.
  config.drift.temperature_units = "mean_distance"  # Ablation: feature (port: R not times sqrt(C)).
  config.drift.self_mask = 100.0  # Added to d_ii in normalized units, as in the paper's code.

  config.toy = ml_collections.ConfigDict()
  config.toy.targets = ("checkerboard", "swiss_roll", "eight_gaussians", "two_modes")
  config.toy.steps = 4000  # 2,000 left the swiss roll at 6.5x the floor; 4,000 reached 1.1x.
  config.toy.batch_gen = 1024  # Generated samples per step (one group).
  config.toy.batch_pos = 1024  # Target samples (positives) per step.
  config.toy.noise_dim = 32
  config.toy.hidden = 256
  config.toy.depth = 3
  config.toy.lr = 3e-3
  config.toy.warmup_steps = 100
  config.toy.final_lr_fraction = 0.05  # Cosine decay to this fraction of lr.
  config.toy.ema_decay = 0.995  # Samples and metrics use the EMA generator.
  # two_modes starts collapsed: output layer scaled by this and its bias set to the first mode.
  config.toy.collapsed_out_scale = 0.05
  config.toy.eval_samples = 4096  # Energy distance: 4096 generated vs 4096 target samples.
  config.toy.floor_pairs = 5  # Independent target-vs-target pairs averaged into the floor.
  config.toy.plot_samples = 2048
  config.toy.snapshot_fractions = (0.05, 0.25, 1.0)  # Plot columns, as fractions of steps.
  config.toy.log_every = 500
  return config
