"""Checkpoints: one orbax CheckpointManager under DIR/checkpoints holding the train state and the grain
iterator state together. Every process calls save and restore (orbax writes each process's shards; nothing is
gathered on host 0). Saves are atomic (orbax commits a step only when complete), so a process killed during a
save leaves the previous steps intact.
"""

from __future__ import annotations

import json
import os
import time

from absl import logging
import grain
import jax
import orbax.checkpoint as ocp


def make_manager(workdir: str, keep: int = 1, async_save: bool = True,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """The manager of DIR/checkpoints; read_only (sampling, evaluation) creates, cleans and deletes nothing."""
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                           create=True, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")), options=options,
                               item_names=("state", "data"))


def require_checkpoints(workdir: str) -> str:
  """DIR/checkpoints, or an error saying that the run has none (before anything is loaded or written)."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if not os.path.isdir(directory) or not any(name.isdigit() for name in os.listdir(directory)):
    raise FileNotFoundError(f"no checkpoints in {directory}: train first (--mode=train) or pass another --workdir")
  return directory


def check_model(workdir: str, signature: dict, write: bool) -> None:
  """DIR/model.json records the settings that fix the train state's shapes. A run whose settings differ fails
  here, naming them, before any checkpoint is read, moved or overwritten; `write` records them when absent."""
  path = os.path.join(workdir, "model.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    diffs = [f"{k}={saved.get(k)!r} there, {signature.get(k)!r} here" for k in sorted(set(saved) | set(signature))
             if saved.get(k) != signature.get(k)]
    if diffs:
      raise ValueError(f"the checkpoints in {workdir} were written for a different model: " + "; ".join(diffs)
                       + ". Use another --workdir, or the settings it was trained with.")
  elif write and jax.process_index() == 0:
    from driftjax import files
    files.atomic_write(path, json.dumps(signature, indent=2, sort_keys=True))


def save(mngr: ocp.CheckpointManager, step: int, state, data_iter, force: bool = False) -> bool:
  args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter))
  return mngr.save(step, args=args, force=force)


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state, data_iter):
  """The state at `step` (sharded like abstract_state); data_iter is moved to the saved position."""
  args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                            data=grain.checkpoint.CheckpointRestore(data_iter))
  return mngr.restore(step, args=args)["state"]


def restore_latest(mngr: ocp.CheckpointManager, abstract_state, data_iter):
  """(state, step) from the newest checkpoint that restores, or (None, None) without one.

  A newest checkpoint that fails to restore (truncated, corrupted) is reported and the previous one is tried.
  Steps that failed are moved, not deleted, to DIR/checkpoints_unreadable/ so that later saves neither collide
  with them nor count them among the checkpoints to keep. If none restores, that is an error listing why.
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  failed, errors = [], []
  for step in steps:
    try:
      state = restore(mngr, step, abstract_state, data_iter)
    except Exception as e:  # Report, then fall back to the previous checkpoint.
      msg = f"checkpoint step {step} in {mngr.directory} could not be restored: {type(e).__name__}: {e}"
      logging.error(msg)
      failed.append(step)
      errors.append(msg)
      continue
    if failed:
      _move_aside(mngr, failed)
      logging.warning("restored step %d instead; unreadable steps %s moved to %s", step, failed,
                      _unreadable_dir(mngr))
    return state, step
  if errors:
    raise ValueError("no checkpoint could be restored (nothing was changed on disk):\n" + "\n".join(errors))
  return None, None


def _unreadable_dir(mngr: ocp.CheckpointManager) -> str:
  return os.path.join(os.path.dirname(str(mngr.directory).rstrip("/")), "checkpoints_unreadable")


def _move_aside(mngr: ocp.CheckpointManager, steps) -> None:
  if jax.process_index() == 0:
    target = _unreadable_dir(mngr)
    os.makedirs(target, exist_ok=True)
    for step in steps:
      src = os.path.join(str(mngr.directory), str(step))
      dst = os.path.join(target, f"{step}.{int(time.time())}")
      os.replace(src, dst)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("driftjax_checkpoint_fallback")
  mngr.reload()
