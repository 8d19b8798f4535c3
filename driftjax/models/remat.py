"""Rematerialization of one module call: keep its inputs for the backward pass, compute its insides again there.

Plain jax.checkpoint over the module's split state, not nnx.remat: in graph mode nnx.remat writes the state back
into the module's variables after the call, which fails (TraceContextError) when the module was merged outside
the jax.grad that differentiates the call, as the frozen encoder is in the train step. Nothing is written back
here: the modules called this way hold no state that a forward pass changes.
"""

from __future__ import annotations

import jax
from flax import nnx


def call(module: nnx.Module, *args, remat: bool):
  """module(*args), rematerialized when `remat`."""
  if not remat:
    return module(*args)
  graphdef, state = nnx.split(module)
  return jax.checkpoint(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, *args)
