"""driftjax: one-step text generators trained with the drifting objective (docs/method.md).

import driftjax
gen = driftjax.load("runs/demo")
texts = gen.sample(8, seed=0)
"""


def load(run_dir: str, step: int | None = None):
  """The EMA generator of a run folder (its DIR/config.json, its newest checkpoint or `step`, its tokenizer),
  as a driftjax.sampler.Sampler: `.sample(n, seed=0, temperature=0.0, top_k=0)` returns n strings, compiled on
  the first call and reused by later calls of the same n. Imported on first use so that `import driftjax` and
  the command line do not pay for JAX and the models up front."""
  from driftjax import sampler

  return sampler.load_run(run_dir, step)
