"""driftjax entry point: python -m driftjax.main --config=configs/<name>.py --workdir=DIR [--mode=...].

After `pip install`, `driftjax --config=... --workdir=...` is the same command. Sample and eval of a trained run
need only --workdir (and --mode): they read the run's DIR/config.json.
"""

import logging as pylogging
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from driftjax import modes

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Path to a configs/*.py file; override fields with --config.key=value. Sample and eval "
  "without it read the run's DIR/config.json.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and reports.")
_MODE = flags.DEFINE_enum("mode", None, list(modes.MODES), "What to run; defaults to config.mode.")


class _QuietLibraries(pylogging.Filter):
  """Keeps orbax's per-save INFO chatter out of the console; its warnings and errors still show."""

  def filter(self, record):
    return record.levelno >= pylogging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)  # Progress is INFO; absl's default would hide it.
    logging.get_absl_handler().addFilter(_QuietLibraries())
  modes.maybe_initialize_distributed()
  config = _CONFIG.value
  mode = _MODE.value or (config.get("mode", "train") if config is not None else "train")
  logging.info(
    "driftjax mode=%s process %d/%d devices=%s", mode, jax.process_index(), jax.process_count(), jax.devices()
  )
  modes.run(mode, config, _WORKDIR.value)


def cli():
  """The `driftjax` console command (pyproject's [project.scripts]) and `python -m driftjax.main`."""
  # As `python -m` does: config files import their siblings (`from configs import default`) from the folder
  # the command runs in.
  if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  flags.mark_flags_as_required(["workdir"])
  app.run(main)


if __name__ == "__main__":
  cli()
