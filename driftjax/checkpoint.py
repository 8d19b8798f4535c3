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
import orbax.checkpoint as ocp

from driftjax import files
from driftjax import hosts


def make_manager(
  workdir: str, keep: int = 1, async_save: bool = True, read_only: bool = False
) -> ocp.CheckpointManager:
  """The manager of DIR/checkpoints; read_only (sampling, evaluation) creates, cleans and deletes nothing."""
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True)
  else:
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True
    )
  return ocp.CheckpointManager(
    os.path.abspath(os.path.join(workdir, "checkpoints")), options=options, item_names=("state", "data")
  )


def require_checkpoints(workdir: str) -> str:
  """DIR/checkpoints, or an error saying that the run has none (before anything is loaded or written)."""
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if not os.path.isdir(directory) or not any(name.isdigit() for name in os.listdir(directory)):
    raise FileNotFoundError(f"no checkpoints in {directory}: train first (--mode=train) or pass another --workdir")
  return directory


def check_model(workdir: str, signature: dict, write: bool, defaults: dict | None = None) -> None:
  """DIR/model.json records the settings that fix the train state's shapes. A run whose settings differ fails
  here, naming them, before any checkpoint is read, moved or overwritten; `write` records them when absent.
  defaults: the values of settings newer than a run's model.json (a setting is added with the behaviour that came
  before it as its default), so older runs still load."""
  path = os.path.join(workdir, "model.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = {**(defaults or {}), **json.load(f)}
    diffs = [
      f"{k}={saved.get(k)!r} there, {signature.get(k)!r} here"
      for k in sorted(set(saved) | set(signature))
      if saved.get(k) != signature.get(k)
    ]
    if diffs:
      raise ValueError(
        f"the checkpoints in {workdir} were written for a different model: "
        + "; ".join(diffs)
        + ". Use another --workdir, or the settings it was trained with."
      )
  if write:  # On every host, whether or not it found the file: the barrier is a collective.

    def record():
      if not os.path.exists(path):
        files.atomic_write(path, json.dumps(signature, indent=2, sort_keys=True))

    hosts.first_writes("model_json", record)


def save(mngr: ocp.CheckpointManager, step: int, state, data_iter, force: bool = False) -> bool:
  args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter))
  return mngr.save(step, args=args, force=force)


def _restore_step(mngr: ocp.CheckpointManager, step: int, target, data_iter):
  if data_iter is None:  # Only the leaves of `target` (e.g. {"ema": ...}): nothing else is read.
    state = ocp.args.PyTreeRestore(
      item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True
    )
    return mngr.restore(step, args=ocp.args.Composite(state=state))["state"]
  args = ocp.args.Composite(state=ocp.args.StandardRestore(target), data=grain.checkpoint.CheckpointRestore(data_iter))
  return mngr.restore(step, args=args)["state"]


def restore(workdir: str, target, step: int | None = None, *, data_iter=None, mngr=None):
  """(tree, step) from DIR/checkpoints: the one restore path of training, sampling and evaluation.

  target: ShapeDtypeStructs (with shardings) of what to read. Training passes the whole train state, its
  grain iterator (moved to the saved position) and its writable manager; sampling and evaluation pass a part of
  the state (e.g. {"ema": params}) and read only that, through a read-only manager.
  step: that checkpoint, or None for the newest that restores. Training without any checkpoint gets (None,
  None), a fresh start; reading a run without one is an error. A newest checkpoint that fails to restore
  (truncated, corrupted) is reported and, in training, moved (never deleted) to DIR/checkpoints_unreadable/
  so that later saves neither collide with it nor count it among those to keep, and the previous one is
  tried; if none restores, that is an error listing why. Reading never changes anything on disk.
  """
  training = mngr is not None
  if not training:
    require_checkpoints(workdir)
    mngr = make_manager(workdir, read_only=True)
  steps = sorted(mngr.all_steps(), reverse=True)
  if not steps:
    if training:
      return None, None
    raise FileNotFoundError(f"no checkpoints in {mngr.directory}: train first (--mode=train)")
  if step is not None and step >= 0:
    if step not in steps:
      raise FileNotFoundError(f"no checkpoint for step {step} in {mngr.directory} (have {sorted(steps)})")
    steps = [step]
  failed, errors = [], []
  for s in steps:
    try:
      tree = _restore_step(mngr, s, target, data_iter)
    except Exception as e:  # Report, then fall back to the previous checkpoint.
      msg = f"checkpoint step {s} in {mngr.directory} could not be restored: {type(e).__name__}: {e}"
      logging.error(msg)
      failed.append(s)
      errors.append(msg)
      if not training:
        break  # Reading a run says what is wrong with the checkpoint asked for; it does not fall back.
      continue
    if failed:
      _move_aside(mngr, failed)
      logging.warning("restored step %d instead; unreadable steps %s moved to %s", s, failed, _unreadable_dir(mngr))
    return tree, s
  raise ValueError("no checkpoint could be restored (nothing was changed on disk):\n" + "\n".join(errors))


def _unreadable_dir(mngr: ocp.CheckpointManager) -> str:
  return os.path.join(os.path.dirname(str(mngr.directory).rstrip("/")), "checkpoints_unreadable")


def _move_aside(mngr: ocp.CheckpointManager, steps) -> None:
  def move():
    target = _unreadable_dir(mngr)
    os.makedirs(target, exist_ok=True)
    for step in steps:
      src = os.path.join(str(mngr.directory), str(step))
      dst = os.path.join(target, f"{step}.{int(time.time())}")
      os.replace(src, dst)

  hosts.first_writes("checkpoint_move_aside", move)
  mngr.reload()
