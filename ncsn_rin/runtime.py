"""Process set-up shared by every mode: multi-host init, early validation, the workdir.

Everything here runs before any compilation or data loading, so bad input fails in seconds with a
message that names the value, the allowed range and the fix.
"""

import json
import os
import time
from typing import Optional

from absl import logging
import jax
import ml_collections

METHODS = ('diffusion', 'ncsn')


class _QuietLibraries(logging.logging.Filter):  # pylint: disable=protected-access
  """Drops INFO chatter of Orbax / TensorStore (dozens of lines per save); keeps warnings."""

  def filter(self, record):
    noisy = '/orbax/' in record.pathname or '/tensorstore/' in record.pathname
    return not (noisy and record.levelno < logging.logging.WARNING)


def quiet_library_logs():
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())


# ----------------------------------------------------------------------------------------------
# Multi-host
# ----------------------------------------------------------------------------------------------

def _in_slurm_multiprocess() -> bool:
  return int(os.environ.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_PROCID' in os.environ


def _on_tpu_pod() -> bool:
  return 'TPU_WORKER_HOSTNAMES' in os.environ and ',' in os.environ['TPU_WORKER_HOSTNAMES']


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None):
  """Calls `jax.distributed.initialize()` when this is one process of several.

  Explicit flags win; then JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; then JAX's
  own auto-detection on TPU pods and under SLURM. A single process does nothing.
  """
  coordinator_address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  if num_processes is None and 'JAX_NUM_PROCESSES' in os.environ:
    num_processes = int(os.environ['JAX_NUM_PROCESSES'])
  if process_id is None and 'JAX_PROCESS_ID' in os.environ:
    process_id = int(os.environ['JAX_PROCESS_ID'])
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError(f'coordinator_address={coordinator_address!r} needs --num_processes and '
                       '--process_id (or JAX_NUM_PROCESSES / JAX_PROCESS_ID).')
    if num_processes > 1:
      jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif _on_tpu_pod() or _in_slurm_multiprocess():
    jax.distributed.initialize()
  else:
    return
  logging.info('process %d of %d; %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


# ----------------------------------------------------------------------------------------------
# Early validation
# ----------------------------------------------------------------------------------------------

def _require(ok: bool, message: str):
  if not ok:
    raise ValueError(message)


def validate_config(config: ml_collections.ConfigDict):
  """Cheap checks of every value that would otherwise fail late (after compiling or loading)."""
  from ncsn_rin import noise_scales  # pylint: disable=g-import-not-at-top
  from ncsn_rin import schedules  # pylint: disable=g-import-not-at-top
  _require(config.method in METHODS,
           f'config.method={config.method!r}; allowed: {METHODS}.')
  d, t = config.data, config.train
  _require(d.image_size >= 8, f'config.data.image_size={d.image_size} must be >= 8.')
  _require(d.num_channels in (1, 3), f'config.data.num_channels={d.num_channels}; allowed: 1, 3.')
  _require(d.num_classes >= 0, f'config.data.num_classes={d.num_classes} must be >= 0 '
           '(0 = unconditional).')
  for name in ('batch_size', 'num_steps', 'log_every', 'checkpoint_every'):
    value = t[name]
    _require(value >= 1, f'config.train.{name}={value} must be >= 1.')
  _require(config.sample.num_samples >= 1,
           f'config.sample.num_samples={config.sample.num_samples} must be >= 1.')
  if config.model.name == 'rin':
    _require(d.image_size % config.model.patch_size == 0,
             f'config.data.image_size={d.image_size} is not divisible by config.model.patch_size='
             f'{config.model.patch_size}; pick a patch size that divides the image size.')
  if config.method == 'diffusion':
    schedules.get_gamma_fn(config.diffusion.train_schedule)
    schedules.get_gamma_fn(config.diffusion.sample_schedule)
    schedules.validate_input_scale(config.diffusion.input_scale)
    _require(config.diffusion.pred_target in ('eps', 'x', 'v'),
             f"config.diffusion.pred_target={config.diffusion.pred_target!r}; allowed: 'eps', 'x', 'v'.")
    _require(0. <= config.diffusion.self_cond_rate <= 1.,
             f'config.diffusion.self_cond_rate={config.diffusion.self_cond_rate} must be in [0, 1].')
  else:
    n = config.ncsn
    noise_scales.validate_ncsn_hyperparameters(n.sigma_max, n.sigma_min, n.num_scales,
                                               n.n_steps_each, n.step_lr)
  from ncsn_rin import sampling  # pylint: disable=g-import-not-at-top
  sampling.check_sampler(config)


# ----------------------------------------------------------------------------------------------
# Workdir
# ----------------------------------------------------------------------------------------------

def _path(path: str):
  """A local path or a gs:// URL (TPU pods keep the workdir in a bucket) as an etils Path."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(path)


def check_workdir_writable(workdir: str):
  """Creates `workdir` if needed and checks it is writable (a probe file, removed at once)."""
  try:
    path = _path(workdir)
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f'.write_test_{os.getpid()}'
    probe.write_text('ok')
    probe.unlink()
  except OSError as e:
    raise PermissionError(f'--workdir={workdir!r} is not writable ({e.strerror or e}); pass a '
                          'directory you can write to, e.g. --workdir=$HOME/runs/NAME.') from e


def save_config_copy(workdir: str, config: ml_collections.ConfigDict):
  """Keeps a copy of the resolved config as config.json (process 0 only).

  An existing config.json that differs is kept as config.<time>.json — nothing is overwritten.
  """
  if jax.process_index() != 0:
    return
  path = _path(workdir) / 'config.json'
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if path.exists():
    if path.read_text() == text:
      return
    path.rename(_path(workdir) / f'config.{time.strftime("%Y%m%d-%H%M%S")}.json')
  tmp = _path(workdir) / 'config.json.tmp'
  tmp.write_text(text)
  tmp.rename(path)


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict):
  """Creates `workdir`, checks it is writable and keeps a copy of the resolved config."""
  check_workdir_writable(workdir)
  save_config_copy(workdir, config)


def check_against_workdir(mode: str, config: ml_collections.ConfigDict, workdir: str):
  """The checks that need the devices, the data set or the workdir's checkpoints; reads only.

  They run before the config copy is written and before anything compiles, so a bad value fails in
  seconds and leaves the workdir (its config.json and checkpoints) as it was.
  """
  if mode not in ('train', 'sample', 'eval'):
    return
  from ncsn_rin import checkpoints  # pylint: disable=g-import-not-at-top
  from ncsn_rin import train  # pylint: disable=g-import-not-at-top
  exp = train.Experiment(config)  # global batch vs. devices; the model's shapes (traced, not compiled)
  if mode == 'train':
    from ncsn_rin import input_pipeline  # pylint: disable=g-import-not-at-top
    input_pipeline.dataset_info(config)  # a missing data set or manual_dir
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  # Several processes: opening a CheckpointManager is a collective (barriers), and whether the
  # directory exists yet can differ between them, so the shape check is left to the restore in
  # train/evaluation (the same CheckpointShapeError, after config.json is written).
  if jax.process_count() == 1 and _path(ckpt_dir).is_dir():
    manager = checkpoints.make_manager(ckpt_dir, max_to_keep=config.train.max_to_keep)
    steps = manager.all_steps()
    if steps:
      checkpoints.check_compatible(manager, max(steps), exp.abstract_state)
    manager.close()


MODES = ('train', 'sample', 'eval', 'fid_stats', 'tune_noise')


def run(mode: str, config: ml_collections.ConfigDict, workdir: str):
  """Validates (config, workdir, data, checkpoints), keeps a config copy and runs one mode."""
  quiet_library_logs()
  if mode not in MODES:
    raise ValueError(f'--mode={mode!r}; allowed: {", ".join(MODES)}.')
  validate_config(config)
  check_workdir_writable(workdir)
  check_against_workdir(mode, config, workdir)
  save_config_copy(workdir, config)
  if mode == 'train':
    from ncsn_rin import train  # pylint: disable=g-import-not-at-top
    result = train.train_and_evaluate(config, workdir)
  elif mode == 'sample':
    from ncsn_rin import evaluation  # pylint: disable=g-import-not-at-top
    result = evaluation.sample_to_workdir(config, workdir)
  elif mode == 'eval':
    from ncsn_rin import evaluation  # pylint: disable=g-import-not-at-top
    result = evaluation.evaluate_fid(config, workdir)
  elif mode == 'fid_stats':
    from ncsn_rin import evaluation  # pylint: disable=g-import-not-at-top
    result = evaluation.compute_reference_statistics(config, workdir)
  else:
    from ncsn_rin import evaluation  # pylint: disable=g-import-not-at-top
    result = evaluation.tune_noise(config, workdir)
  logging.info('%s finished: %s', mode, json.dumps(result, default=str))
  return result
