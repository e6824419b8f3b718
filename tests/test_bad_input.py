"""Bad input fails early — before anything compiles or loads for long — with a message that names
the value, the allowed range and the fix, and leaves what is already in the workdir untouched.

Most cases go through `runtime.run`, the path of `main.py`, on a workdir that already holds a
config copy, a checkpoint and a sample grid; flag parsing is checked in-process with the same
`config_flags` definition as main.py, plus one main.py subprocess.
"""

import os
import shutil
import time

from absl import flags
import jax
import numpy as np
import pytest
from ml_collections import config_flags

from ncsn_rin import checkpoints
from ncsn_rin import runtime
from ncsn_rin import train
from tests import helpers

RIN_DIGITS = os.path.join(helpers.ROOT, 'configs', 'rin_digits.py')


# ----------------------------------------------------------------------------------------------
# Fixtures: an existing workdir, its snapshot, and a compile detector
# ----------------------------------------------------------------------------------------------

def _zero_state(config):
  """A train state of the right shapes without compiling anything (zeros on the host)."""
  abstract = train.Experiment(config).abstract_state
  return jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract)


@pytest.fixture(scope='module')
def _template_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('existing') / 'run')
  config = helpers.tiny_rin_config()
  runtime.prepare_workdir(workdir, config)
  manager = checkpoints.make_manager(os.path.join(workdir, 'checkpoints'), async_save=False)
  checkpoints.save(manager, 5, _zero_state(config))
  manager.wait_until_finished()
  manager.close()
  with open(os.path.join(workdir, 'samples_step0000005.png'), 'wb') as f:
    f.write(b'not really a png')
  return workdir


@pytest.fixture
def existing_workdir(_template_workdir, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(_template_workdir, workdir)
  return workdir


def _snapshot(workdir):
  """{relative path: (size, mtime_ns, bytes)} of every file under `workdir`."""
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, workdir)] = (os.path.getsize(path),
                                               os.stat(path).st_mtime_ns, f.read())
  return out


@pytest.fixture
def compiled():
  """Names of the functions XLA compiles while the test runs."""
  names = []

  def listener(event, duration, **kwargs):
    del duration
    if event == '/jax/core/compile/backend_compile_duration':
      names.append(kwargs.get('fun_name', '?'))

  jax.monitoring.register_event_duration_secs_listener(listener)
  yield names
  jax.monitoring.unregister_event_duration_listener(listener)


def _fails_early(config, workdir, compiled, error, match, mode='train'):
  """runtime.run(mode) raises `error` matching `match` in seconds, compiles none of the model's
  programs, and leaves every file of `workdir` as it was."""
  before = _snapshot(workdir)
  start = time.time()
  with pytest.raises(error, match=match) as info:
    runtime.run(mode, config, workdir)
  assert time.time() - start < 30
  assert not [n for n in compiled if 'init_fn' in n or 'train_step' in n or 'sample' in n], compiled
  assert _snapshot(workdir) == before
  return str(info.value)


# ----------------------------------------------------------------------------------------------
# Flags: unknown key, wrong type
# ----------------------------------------------------------------------------------------------

def _parse(*overrides):
  """Parses main.py-style flags with main.py's config flag definition (locked config)."""
  argv = ['main.py', f'--config={RIN_DIGITS}', *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'Experiment config file.', flag_values=values,
                                  lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


def test_override_parsing_works():
  config = _parse('--config.train.batch_size=32', '--config.diffusion.input_scale=0.5')
  assert config.train.batch_size == 32 and config.diffusion.input_scale == 0.5


def test_unknown_config_key_names_it_and_suggests_the_right_one():
  with pytest.raises(AttributeError, match=r'batch_sise[\s\S]*Did you mean "batch_size"'):
    _parse('--config.train.batch_sise=64')


@pytest.mark.parametrize('override, pattern', [
    ('--config.train.batch_size=abc', r"config.train.batch_size=abc: invalid literal for int\(\)"),
    ('--config.train.batch_size=1.5', r"config.train.batch_size=1.5: invalid literal for int\(\)"),
    ('--config.diffusion.input_scale=big', r"config.diffusion.input_scale=big: could not convert "
                                          r"string to float"),
])
def test_wrong_type_names_flag_value_and_type(override, pattern):
  with pytest.raises(flags.IllegalFlagValueError, match=pattern):
    _parse(override)


def test_main_with_wrong_type_exits_at_once_and_touches_nothing(existing_workdir):
  before = _snapshot(existing_workdir)
  start = time.time()
  result = helpers.run_main(RIN_DIGITS, existing_workdir, *helpers.TINY_RIN_FLAGS,
                            '--config.train.batch_size=abc', timeout=120)
  assert result.returncode != 0
  assert 'config.train.batch_size=abc' in result.stdout and 'int()' in result.stdout
  assert time.time() - start < 60
  assert _snapshot(existing_workdir) == before


# ----------------------------------------------------------------------------------------------
# Config values caught by runtime.validate_config
# ----------------------------------------------------------------------------------------------

def _set(config, dotted, value):
  *path, leaf = dotted.split('.')
  node = config
  for key in path:
    node = node[key]
  node[leaf] = value


@pytest.mark.parametrize('field, value, pattern', [
    ('diffusion.train_schedule', 'sigmoid@3,-3,1', r"'sigmoid@3,-3,1'.*start"),
    ('diffusion.train_schedule', 'quadratic', r"unknown schedule 'quadratic'.*must be one of"),
    ('diffusion.sample_schedule', 'cosine@0.2,1', r"cosine@0.2,1"),
    ('diffusion.sample_schedule', 'sigmoid@-3,3,0', r"sigmoid@-3,3,0.*tau"),
])
def test_invalid_schedule_spec(existing_workdir, compiled, field, value, pattern):
  config = helpers.tiny_rin_config()
  _set(config, field, value)
  _fails_early(config, existing_workdir, compiled, ValueError, pattern)


@pytest.mark.parametrize('b', [0., -0.5, float('nan')])
def test_input_scale_b_not_positive(existing_workdir, compiled, b):
  config = helpers.tiny_rin_config()
  config.diffusion.input_scale = b
  message = _fails_early(config, existing_workdir, compiled, ValueError,
                         r'input scale b must be a finite number > 0, got')
  assert 'e.g. 1.0' in message  # the fix


@pytest.mark.parametrize('field, value, pattern', [
    ('ncsn.sigma_min', 50., r'sigma_min=50.0 must be < sigma_max=50.0 .*allowed: 0 < sigma_min '
                            r'< sigma_max.*Fix'),
    ('ncsn.sigma_min', 80., r'sigma_min=80.0 must be < sigma_max=50.0'),
    ('ncsn.num_scales', 1, r'num_scales=1 is invalid: need an integer L >= 2.*Fix'),
    ('ncsn.n_steps_each', 0, r'n_steps_each=0 is invalid: .*T >= 1.*Fix'),
    ('ncsn.step_lr', 0., r'step_lr=0.0 is invalid: .*> 0 \(allowed range.*Fix'),
    ('ncsn.step_lr', -1e-5, r'step_lr=-1e-05 is invalid'),
], ids=['sigma_min_eq_max', 'sigma_min_gt_max', 'L_lt_2', 'T_lt_1', 'eps_zero', 'eps_negative'])
def test_invalid_ncsn_noise_hyperparameters(tmp_path, compiled, field, value, pattern):
  config = helpers.tiny_ncsn_config()
  config.ncsn.sigma_max = 50.
  _set(config, field, value)
  workdir = str(tmp_path / 'ncsn')
  os.makedirs(workdir)
  _fails_early(config, workdir, compiled, ValueError, pattern)
  assert os.listdir(workdir) == []


def test_image_size_not_divisible_by_patch_size(existing_workdir, compiled):
  config = helpers.tiny_rin_config()
  config.data.image_size = 18  # patch_size 4
  _fails_early(config, existing_workdir, compiled, ValueError,
               r'image_size=18 is not divisible by config.model.patch_size=4; pick a patch size')


# ----------------------------------------------------------------------------------------------
# Checks against the devices, the data and the workdir (runtime.check_against_workdir)
# ----------------------------------------------------------------------------------------------

def test_global_batch_not_divisible_by_devices(existing_workdir, compiled):
  config = helpers.tiny_rin_config()
  config.train.batch_size = 12  # 8 devices
  _fails_early(config, existing_workdir, compiled, ValueError,
               r'batch_size=12 must be a positive multiple of the number of devices \(8\); use '
               r'e.g. --config.train.batch_size=8 or --config.train.batch_size=16')


def test_missing_tfds_data_set(existing_workdir, compiled, tmp_path):
  config = helpers.tiny_rin_config()
  config.data.name = 'cifar10'
  config.data.data_dir = str(tmp_path / 'no_tfds_here')
  message = _fails_early(config, existing_workdir, compiled, FileNotFoundError,
                         r"TFDS data set 'cifar10' is not prepared: looked for .*no_tfds_here")
  assert 'download_and_prepare()' in message and '--config.data.download=True' in message


def test_missing_manual_download_directory(existing_workdir, compiled, tmp_path):
  config = helpers.tiny_rin_config()
  config.data.name = 'imagenet2012'
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.download = True
  config.data.manual_dir = str(tmp_path / 'no_manual_dir')
  message = _fails_early(config, existing_workdir, compiled, FileNotFoundError,
                         r"manual_dir='.*no_manual_dir' lacks ILSVRC2012_img_train.tar, "
                         r"ILSVRC2012_img_val.tar")
  assert 'image-net.org' in message
  assert not os.path.exists(tmp_path / 'tfds' / 'imagenet2012')  # TFDS never started preparing


def test_missing_image_folder(existing_workdir, compiled, tmp_path):
  config = helpers.tiny_rin_config()
  config.data.name = 'image_folder'
  config.data.image_folder = str(tmp_path / 'no_images')
  _fails_early(config, existing_workdir, compiled, FileNotFoundError,
               r"image_folder: folder '.*no_images' not found")


def test_workdir_not_writable(tmp_path, compiled):
  blocker = tmp_path / 'a_file'
  blocker.write_text('keep me')
  config = helpers.tiny_rin_config()
  with pytest.raises(PermissionError, match=r"--workdir='.*a_file/run' is not writable .*pass a "
                                            r"directory you can write to"):
    runtime.run('train', config, str(blocker / 'run'))
  assert blocker.read_text() == 'keep me'
  assert not compiled


@pytest.mark.parametrize('mode', ['train', 'sample'])
def test_checkpoint_from_a_different_model_shape(existing_workdir, compiled, mode):
  config = helpers.tiny_rin_config()
  config.model.latent_dim = 64  # the checkpoint has 32
  message = _fails_early(config, existing_workdir, compiled, checkpoints.CheckpointShapeError,
                         r'checkpoint step 5 in .* was written by a different model shape',
                         mode=mode)
  assert 'checkpoint (32,) vs model (64,)' in message
  assert 'Use a new --workdir' in message and 'config.json' in message


def test_same_model_shape_passes_the_workdir_checks(existing_workdir, compiled):
  runtime.check_against_workdir('train', helpers.tiny_rin_config(), existing_workdir)
  assert not compiled
