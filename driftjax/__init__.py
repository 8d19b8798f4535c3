"""driftjax: one-step text generators trained with the drifting objective (docs/method.md).

    import driftjax
    gen = driftjax.load("runs/demo")
    texts = gen.sample(8, seed=0)
"""


def load(run_dir: str, step: int | None = None):
  """The EMA generator of a run folder, ready to sample (driftjax.api.load; imported on first use so that
  `import driftjax` and the command line do not pay for JAX and the models up front)."""
  from driftjax import api
  return api.load(run_dir, step)
