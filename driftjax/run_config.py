"""A run folder describes itself: training writes its whole resolved config to DIR/config.json, and the modes that
only read a run (sample, eval, the Python API) take it from there when no --config is given.

An explicit config still wins, but it must describe the same model: settings that fix the generator, the
encoder or the tokenizer differ -> an error naming them, before anything is read or written.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections

from driftjax import files
from driftjax import hosts

FILENAME = "config.json"
# Sections whose settings decide what the run's checkpoints and encoder are; compute dtypes and remat may differ.
MODEL_SECTIONS = ("model", "encoder")
FREE_KEYS = ("model.dtype", "encoder.dtype", "model.remat", "encoder.remat")


def path(workdir: str) -> str:
  return os.path.join(workdir, FILENAME)


def _tuples(value: Any) -> Any:
  """JSON has no tuples; configs use them for every sequence (layers, poolings, temperatures)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def save(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes DIR/config.json (process 0, the others waiting; atomically, so a crash leaves the previous one)."""
  text = json.dumps(config.to_dict(), indent=2) + "\n"
  hosts.first_writes("run_config", lambda: files.atomic_write(path(workdir), text))


def load(workdir: str) -> ml_collections.ConfigDict:
  """The config DIR was trained with, locked like a --config file (a misspelt key is an error)."""
  p = path(workdir)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"run folder {workdir} does not exist")
  if not os.path.exists(p):
    raise FileNotFoundError(
      f"{workdir} is not a driftjax run folder: it has no {FILENAME} (training writes it); "
      "train there first, or pass --config"
    )
  try:
    with open(p) as f:
      raw = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{p} could not be read as a config ({type(e).__name__}: {e})") from None
  if not isinstance(raw, dict) or not all(k in raw for k in MODEL_SECTIONS):
    raise ValueError(f"{p} is not a driftjax config (no {' / '.join(MODEL_SECTIONS)} section)")
  config = ml_collections.ConfigDict(_tuples(raw))
  config.lock()
  return config


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def model_differences(saved: ml_collections.ConfigDict, given: ml_collections.ConfigDict) -> list[str]:
  """'key=saved there, given here' for each setting of MODEL_SECTIONS that differs (dtypes excepted)."""
  a = _flatten({s: _tuples(saved[s].to_dict()) for s in MODEL_SECTIONS if s in saved})
  b = _flatten({s: _tuples(given[s].to_dict()) for s in MODEL_SECTIONS if s in given})
  return [
    f"{k}={a.get(k)!r} there, {b.get(k)!r} here"
    for k in sorted(set(a) | set(b))
    if k not in FREE_KEYS and a.get(k) != b.get(k)
  ]


def resolve(config: ml_collections.ConfigDict | None, workdir: str, mode: str) -> ml_collections.ConfigDict:
  """The config a mode runs with: the given one (checked against DIR's when DIR has one), or DIR's own."""
  if config is None:
    if mode not in ("sample", "eval"):
      raise ValueError(f"--mode={mode} needs --config (only sample and eval read a run folder's {FILENAME})")
    return load(workdir)
  if mode in ("sample", "eval") and "://" not in workdir and not os.path.isdir(workdir):
    raise FileNotFoundError(f"run folder {workdir} does not exist")  # Before anything creates it.
  if mode in ("sample", "eval") and os.path.exists(path(workdir)):
    diffs = model_differences(load(workdir), config)
    if diffs:
      raise ValueError(
        f"--config does not describe the model trained in {workdir}: "
        + "; ".join(diffs)
        + f". Leave out --config to use the run's own {FILENAME}."
      )
  return config
