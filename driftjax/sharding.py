"""One device mesh and the NamedShardings of parameters and batches: data parallel, or FSDP of the generator.

Everything runs under plain jax.jit; GSPMD inserts the collectives. Batches (and groups) split over the
mesh's "data" axis. Parameters are replicated (data parallel) or, with FSDP, each one is split over "data"
along its largest dimension that the device count divides (small or indivisible ones stay replicated).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def make_mesh(num_devices: int | None = None) -> Mesh:
  n = num_devices or jax.device_count()
  # Auto axes: GSPMD propagates shardings through the step (JAX's default here is Explicit sharding types).
  return jax.make_mesh((n,), (DATA,), devices=jax.devices()[:n], axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def leading_axis(mesh: Mesh, shape) -> NamedSharding:
  """Split the first axis over the data axis when the device count divides it, else replicate."""
  n = mesh.shape[DATA]
  if len(shape) and shape[0] % n == 0:
    return NamedSharding(mesh, P(DATA))
  return replicated(mesh)


def fsdp_spec(shape, n: int, min_size: int = 1 << 14) -> P:
  """Split the largest dimension that n divides; parameters under min_size elements stay whole."""
  if n == 1 or int(np.prod(shape)) < min_size:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % n == 0:
      spec = [None] * len(shape)
      spec[axis] = DATA
      return P(*spec)
  return P()


def param_shardings(mesh: Mesh, abstract_params, fsdp: bool):
  """A tree of NamedShardings matching abstract_params (leaves with .shape)."""
  n = mesh.shape[DATA]
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, n) if fsdp else P()), abstract_params)
