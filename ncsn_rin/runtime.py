"""What every mode does before its work: multi-host set-up, the checks, the workdir, then dispatch.

`run(mode, config, workdir)` checks everything that can be checked without compiling — the config
(`validation.validate`), the workdir, the data set, an existing checkpoint's shapes — before it
creates or writes anything, so bad input fails in seconds and leaves no trace. Only `train` writes
`config.json` (the record of the run); the other modes record their settings in their own result
files.
"""

import json
import os
import time

from absl import logging
import jax
import ml_collections

from ncsn_rin import checkpoints
from ncsn_rin import datasets
from ncsn_rin import evaluation
from ncsn_rin import experiment
from ncsn_rin import files
from ncsn_rin import train
from ncsn_rin import validation

MODES = ('train', 'sample', 'eval', 'fid_stats', 'tune_noise')
_NEEDS_DATA = ('train', 'fid_stats', 'tune_noise')
_NEEDS_CHECKPOINT = ('sample', 'eval')


class _QuietLibraries(logging.logging.Filter):  # pylint: disable=protected-access
  """Drops Orbax / TensorStore INFO chatter (dozens of lines per save) and JAX's probe of absent
  TPU / GPU backends ("Unable to initialize backend 'tpu'"); keeps everything else."""

  def filter(self, record):
    noisy = '/orbax/' in record.pathname or '/tensorstore/' in record.pathname
    probe = 'Unable to initialize backend' in record.getMessage()
    return not ((noisy and record.levelno < logging.logging.WARNING) or probe)


def quiet_library_logs():
  for logger in (logging.get_absl_handler(), logging.logging.getLogger('jax._src.xla_bridge')):
    if not any(isinstance(f, _QuietLibraries) for f in logger.filters):
      logger.addFilter(_QuietLibraries())


# Multi-host -------------------------------------------------------------------------------------

def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None):
  """Calls `jax.distributed.initialize()` when this is one process of several.

  Explicit flags win; then JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; then JAX's
  own auto-detection on TPU pods and under SLURM. A single process does nothing.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get('JAX_COORDINATOR_ADDRESS')
  if num_processes is None and 'JAX_NUM_PROCESSES' in env:
    num_processes = int(env['JAX_NUM_PROCESSES'])
  if process_id is None and 'JAX_PROCESS_ID' in env:
    process_id = int(env['JAX_PROCESS_ID'])
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise validation.UserError(
          f'--coordinator_address={coordinator_address!r} needs --num_processes and --process_id '
          '(or JAX_NUM_PROCESSES / JAX_PROCESS_ID).')
    if num_processes > 1:
      jax.distributed.initialize(coordinator_address, num_processes, process_id)
  elif (',' in env.get('TPU_WORKER_HOSTNAMES', '')  # a TPU pod slice, or SLURM with several tasks
        or (int(env.get('SLURM_NTASKS', '1')) > 1 and 'SLURM_PROCID' in env)):
    jax.distributed.initialize()
  else:
    return
  logging.info('process %d of %d; %d local / %d global devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


# Workdir ----------------------------------------------------------------------------------------

def check_workdir(mode: str, workdir: str):
  """Raises UserError if `workdir` cannot be used by `mode`; creates nothing.

  A local workdir (or, when it does not exist yet, its nearest existing parent) must be a writable
  directory; `sample` / `eval` need its checkpoints. gs:// ones are checked by their first write.
  """
  if workdir.startswith('gs://'):
    return
  path = os.path.abspath(os.path.expanduser(workdir))
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
    raise validation.UserError(
        f'--workdir={workdir!r} is not writable ({existing} is not a writable directory); pass a '
        'directory you can write to, e.g. --workdir=$HOME/runs/NAME.')
  if mode in _NEEDS_CHECKPOINT and not os.path.isdir(os.path.join(path, 'checkpoints')):
    raise validation.UserError(
        f'--mode={mode} needs a trained model but --workdir={workdir!r} has no checkpoints/; '
        f'train first: python main.py --mode=train --workdir={workdir} --config=...')


def save_config_copy(workdir: str, config: ml_collections.ConfigDict):
  """Keeps the resolved training config as config.json (process 0).

  An existing config.json that differs (a resumed run with changed settings) is kept as
  config.<time>.json — nothing is overwritten.
  """
  if jax.process_index() != 0:
    return
  path = files.path(workdir) / 'config.json'
  text = config.to_json_best_effort(indent=2, sort_keys=True)
  if path.exists():
    if path.read_text() == text:
      return
    path.rename(files.path(workdir) / f'config.{time.strftime("%Y%m%d-%H%M%S")}.json')
  files.write_bytes(path, text.encode())


def check_data(config):
  """Raises UserError when the data set is missing (the message says how to prepare it); reads
  only the file system (no TensorFlow), so it runs in about a second."""
  d = config.data
  try:
    datasets.check_prepared(d.name, data_dir=d.data_dir, manual_dir=d.manual_dir,
                            download=d.download, image_folder=d.image_folder, split=d.split)
  except FileNotFoundError as e:
    raise validation.UserError(str(e)) from None


def _check_checkpoint(exp, workdir: str):
  """Raises CheckpointShapeError when the workdir's newest checkpoint has other shapes (one process:
  opening a CheckpointManager is a collective whose participants could differ; on several
  processes the restore raises the same error)."""
  if jax.process_count() > 1 or not files.path(workdir, 'checkpoints').is_dir():
    return
  manager = exp.checkpoint_manager(workdir)
  if manager.all_steps():
    checkpoints.check_compatible(manager, max(manager.all_steps()), exp.abstract_state)
  manager.close()


def run(mode: str, config: ml_collections.ConfigDict, workdir: str):
  """Checks (config, workdir, data, checkpoints), then runs one mode. Returns its result dict."""
  quiet_library_logs()
  if mode not in MODES:
    raise validation.UserError(f'--mode={mode!r} is invalid: allowed {", ".join(MODES)}.')
  validation.validate(config, num_devices=jax.device_count(),
                      num_processes=jax.process_count())
  check_workdir(mode, workdir)
  if mode in _NEEDS_DATA:
    check_data(config)
  exp = None
  if mode in ('train', 'sample', 'eval'):
    exp = experiment.Experiment(config)  # traces shapes only
    _check_checkpoint(exp, workdir)
  files.path(workdir).mkdir(parents=True, exist_ok=True)
  if mode == 'train':
    save_config_copy(workdir, config)
    result = train.train_and_evaluate(exp, workdir)
  elif mode == 'sample':
    result = evaluation.sample_to_workdir(exp, workdir)
  elif mode == 'eval':
    result = evaluation.evaluate_fid(exp, workdir)
  elif mode == 'fid_stats':
    result = evaluation.compute_reference_statistics(config, workdir)
  else:
    result = evaluation.tune_noise(config, workdir)
  logging.info('%s finished: %s', mode, json.dumps(result, default=str))
  return result
