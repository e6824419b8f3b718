"""Orbax checkpointing: async save, keep the last few, restore-or-init with fallback.

A checkpoint holds the whole train state (step, params, EMA params, optimiser state, RNG key).
Orbax writes each step into a temporary directory and renames it only once complete, so a process
killed mid-save (SIGKILL, preemption) never leaves a half-written step that `all_steps()` would
list. If the newest complete step still fails to restore (files deleted or truncated afterwards),
`restore_latest` falls back to the previous one with a warning that names both steps.
"""

import os
from typing import Any, Optional, Tuple

from absl import logging
import jax
import orbax.checkpoint as ocp

from ncsn_rin.validation import UserError


class CheckpointShapeError(UserError, ValueError):
  """The checkpoint on disk was written by a network of a different shape."""


class NoRestorableCheckpointError(UserError, RuntimeError):
  """Every checkpoint in the workdir is damaged."""


# Parameter names of the RIN before it followed pix2seq's Tape function and initialisation
# (2026-11-29): LayerNorm-ed time token, class embedding table, learned latents named 'latents'.
_PRE_FIDELITY_RIN_NAMES = ('time_ln', 'class_embed', 'latent_prev_in_ln')


def make_manager(directory: str, *, max_to_keep: int = 3, keep_every: int = 0,
                 async_save: bool = True) -> ocp.CheckpointManager:
  """CheckpointManager over `directory` (created if needed); keeps the last `max_to_keep` steps
  and, with `keep_every` > 0, every step that is a multiple of it (for checkpoint sweeps)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, keep_period=keep_every or None,
      enable_async_checkpointing=async_save, create=True, cleanup_tmp_directories=True)
  if '://' not in directory:  # keep gs:// URLs (TPU pods) as they are
    directory = os.path.abspath(directory)
  # One unnamed item, declared up front: otherwise Orbax infers single- vs multi-item mode from the
  # first step directory it reads, and a latest step whose item folder was deleted would lock it
  # into multi-item mode, making every older (intact) step unrestorable too.
  return ocp.CheckpointManager(directory, options=options,
                               item_handlers=ocp.StandardCheckpointHandler())


def save(manager: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> bool:
  """Starts an (async) save of `state` at `step`; returns whether a save was started."""
  if step in manager.all_steps():
    return False
  return manager.save(step, args=ocp.args.StandardSave(state), force=force)


def _shape_mismatches(saved_meta: Any, abstract_state: Any):
  """Lists 'path: checkpoint shape vs model shape' for leaves whose shapes differ. Paths read
  'a/0/mu/w' whether a node is a namedtuple (the model's state) or the dict Orbax's metadata
  turns it into (`.mu` vs `['mu']`)."""

  def shapes(tree):
    return {jax.tree_util.keystr(k, simple=True, separator='/'): getattr(v, 'shape', None)
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}

  saved, model = shapes(saved_meta), shapes(abstract_state)
  out = []
  for key, want in model.items():
    got, want = saved.get(key, 'missing'), tuple(want or ())
    got = got if got in ('missing', None) else tuple(got)
    if got != want:
      out.append(f'{key}: checkpoint {got} vs model {want}')
  return out + [f'{key}: checkpoint {tuple(shape)} vs model missing'
                for key, shape in saved.items() if key not in model and shape is not None]


def check_compatible(manager: ocp.CheckpointManager, step: int, abstract_state: Any):
  """Raises CheckpointShapeError when the checkpoint's array shapes differ from the model's."""
  try:
    meta = manager.item_metadata(step)
    # A step whose item directory is gone yields an empty Composite, whose getattr raises KeyError.
    meta = getattr(meta, 'tree', meta)
  except Exception:  # pylint: disable=broad-except
    return  # unreadable metadata: the restore itself will report (and fall back)
  mismatches = _shape_mismatches(meta, abstract_state) if meta is not None else []
  if mismatches:
    old = any(name in m for m in mismatches for name in _PRE_FIDELITY_RIN_NAMES)
    cause = ('an older ncsn_rin RIN (before the 2026-11-29 change to the official pix2seq time '
             'token, class projection and latent_slots); retrain it' if old else
             'a network of a different shape')
    raise CheckpointShapeError(
        f'checkpoint step {step} in {manager.directory} was written by {cause} '
        f'({"; ".join(mismatches[:3])}; {len(mismatches)} differences); use a new --workdir, '
        'or the config that wrote it (config.json in the workdir).')


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> Any:
  """Restores `step` directly into the shardings of `abstract_state` (ShapeDtypeStructs)."""
  return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))


def restore_latest(manager: ocp.CheckpointManager,
                   abstract_state: Any) -> Tuple[Optional[Any], Optional[int]]:
  """Restores the newest restorable step, newest first; (None, None) when there is none. A
  model-shape mismatch is not a corrupt checkpoint: it raises CheckpointShapeError at once."""
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return None, None
  check_compatible(manager, steps[0], abstract_state)
  failed = []
  for step in steps:
    try:
      state = restore(manager, step, abstract_state)
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('checkpoint step %d in %s could not be restored (%s: %s)', step,
                      manager.directory, type(e).__name__, str(e).splitlines()[0][:200])
      failed.append(step)
      continue
    if failed:
      logging.warning('checkpoint step %s is corrupt; fell back to step %d', failed, step)
    return state, step
  raise NoRestorableCheckpointError(f'no checkpoint in {manager.directory} could be restored '
                                    f'(tried steps {steps}); move the directory aside to start '
                                    'from scratch.')
