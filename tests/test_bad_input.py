"""Bad input fails early — before anything compiles, loads or is written — with one line that
names the flag, the value, the allowed range and the fix; main.py prints it with exit status 2 and
no traceback; what is already in the workdir stays byte for byte as it was.

Each bad-input row goes through `runtime.run` (the path of main.py) on an existing workdir (a
config copy, a checkpoint and a sample grid) or on a new one that must not be created; a few rows
also run main.py itself as a process to check the exit status, the single stderr line and the
time to fail.
"""

import os
import shutil
import subprocess
import time

import jax
import numpy as np
import pytest

from ncsn_rin import checkpoints
from ncsn_rin import experiment
from ncsn_rin import runtime
from ncsn_rin import validation
from tests import helpers


# ----------------------------------------------------------------------------------------------
# Fixtures: an existing workdir, its snapshot, and a compile detector
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope='module')
def _template_workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('existing') / 'run')
  os.makedirs(workdir)
  config = helpers.tiny_rin_config()
  runtime.save_config_copy(workdir, config)
  state = jax.device_get(experiment.Experiment(config).init_state())
  manager = checkpoints.make_manager(os.path.join(workdir, 'checkpoints'), async_save=False)
  checkpoints.save(manager, 5, state)
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


def _fails_early(config, workdir, compiled, match, mode='train', error=validation.UserError):
  """runtime.run(mode) raises a one-line `error` matching `match`, compiles none of the model's
  programs and leaves `workdir` as it was (or, if it did not exist, not created)."""
  existed = os.path.exists(workdir)
  before = _snapshot(workdir) if existed else None
  with pytest.raises(error, match=match) as info:
    runtime.run(mode, config, workdir)
  message = str(info.value)
  assert '\n' not in message, message
  assert not [n for n in compiled if any(k in n for k in ('_init', 'train_step', 'sample'))], compiled
  if existed:
    assert _snapshot(workdir) == before
  else:
    assert not os.path.exists(workdir)
  return message


def _set(config, dotted, value):
  *path, leaf = dotted.split('.')
  node = config
  for key in path:
    node = node[key]
  node[leaf] = value


# ----------------------------------------------------------------------------------------------
# Config values: the gate (validation.validate)
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('field, value, pattern', [
    ('diffusion.train_schedule', 'sigmoid@3,-3,1',
     r"--config.diffusion.train_schedule: schedule 'sigmoid@3,-3,1': start \(3.0\) must be < end"),
    ('diffusion.train_schedule', 'quadratic', r"unknown schedule 'quadratic'.*must be one of"),
    ('diffusion.sample_schedule', 'sigmoid@-3,3,0', r"sigmoid@-3,3,0.*tau"),
    ('diffusion.input_scale', 0., r'--config.diffusion.input_scale=0.0 is invalid: allowed a '
                                  r'number in \(0, inf\); b = 1 is no scaling'),
    ('diffusion.input_scale', float('nan'), r'input_scale=nan is invalid'),
    ('diffusion.pred_target', 'score', r"pred_target='score' is invalid: allowed one of 'eps'"),
    ('model.patch_size', 3, r"--config.model.patch_size=3 is invalid: allowed a positive divisor "
                            r"of config.data.image_size=16"),
    ('model.latent_dim', 36, r'latent_dim=36 is invalid: allowed a positive multiple of 8'),
    ('model.latent_slots', 2, r'latent_slots=2 is invalid: allowed an integer > 2: it counts the '
                              r'time and class tokens'),
    ('data.name', 'mnist', r"--config.data.name='mnist' is invalid: allowed one of 'digits'"),
    ('data.num_channels', 2, r'num_channels=2 is invalid: allowed 1 or 3'),
    ('optim.cosine_fraction', 0., r'cosine_fraction=0.0 is invalid: allowed a number in \(0, 1\]'),
    ('sample.method', 'euler', r"sample.method='euler' is invalid: allowed one of 'ddpm', 'ddim'"),
    ('sample.guidance_scale', 1.5, r'guidance_scale=1.5 is invalid: .*label_dropout > 0 \(now 0.0\)'),
    ('eval.protocol', 'tf', r"eval.protocol='tf' is invalid: allowed one of 'tfgan', 'pytorch_fid'"),
    ('eval.checkpoints', 'best', r"eval.checkpoints='best' is invalid: allowed 'latest', 'all'"),
    ('train.batch_size', 12, r'--config.train.batch_size=12 is invalid: allowed a positive multiple '
                             r'of the number of devices \(8\); use --config.train.batch_size=8 or 16'),
])
def test_bad_rin_config_value(existing_workdir, compiled, field, value, pattern):
  config = helpers.tiny_rin_config()
  _set(config, field, value)
  _fails_early(config, existing_workdir, compiled, pattern, error=validation.ConfigError)


@pytest.mark.parametrize('field, value, pattern', [
    ('ncsn.sigma_min', 60., r'--config.ncsn.sigma_max=8.54 is invalid: allowed a number in '
                            r'\(60, inf\).*tune_noise'),
    ('ncsn.num_scales', 1, r'--config.ncsn.num_scales=1 is invalid: allowed an integer >= 2'),
    ('ncsn.n_steps_each', 0, r'n_steps_each=0 is invalid: allowed an integer >= 1; NCSNv2 uses T'),
    ('ncsn.step_lr', 0., r'step_lr=0.0 is invalid: allowed a number in \(0, 0.0002\)'),
    ('ncsn.step_lr', 1e-3, r'step_lr=0.001 is invalid: allowed a number in \(0, 0.0002\)'),
    ('ncsn.target_overlap', 0.999, r'target_overlap=0.999 is invalid.*0.9973'),
    ('data.image_size', 17, r'image_size=17 is invalid: allowed a multiple of 2'),
    ('data.num_classes', 10, r'num_classes=10 is invalid: allowed 0 for NCSNv2'),
], ids=['sigma_min_gt_max', 'L_lt_2', 'T_lt_1', 'eps_zero', 'eps_too_large', 'overlap',
        'size_odd', 'classes'])
def test_bad_ncsn_config_value(tmp_path, compiled, field, value, pattern):
  config = helpers.tiny_ncsn_config()
  _set(config, field, value)
  _fails_early(config, str(tmp_path / 'new_run'), compiled, pattern, error=validation.ConfigError)


# ----------------------------------------------------------------------------------------------
# Checks against the data, the workdir and its checkpoints
# ----------------------------------------------------------------------------------------------

def test_missing_tfds_data_set(tmp_path, compiled):
  config = helpers.tiny_rin_config()
  config.data.name = 'cifar10'
  config.data.data_dir = str(tmp_path / 'no_tfds_here')
  message = _fails_early(config, str(tmp_path / 'run'), compiled,
                         r"TFDS data set 'cifar10' is not prepared: looked for .*no_tfds_here")
  assert 'download_and_prepare()' in message and '--config.data.download=True' in message


def test_missing_manual_download_directory(existing_workdir, compiled, tmp_path):
  config = helpers.tiny_rin_config()
  config.data.name = 'imagenet2012'
  config.data.num_classes = 1000
  config.data.data_dir = str(tmp_path / 'tfds')
  config.data.download = True
  config.data.manual_dir = str(tmp_path / 'no_manual_dir')
  message = _fails_early(config, existing_workdir, compiled,
                         r"manual_dir='.*no_manual_dir' lacks ILSVRC2012_img_train.tar, "
                         r"ILSVRC2012_img_val.tar")
  assert 'image-net.org' in message
  assert not os.path.exists(tmp_path / 'tfds' / 'imagenet2012')  # TFDS never started preparing


def test_missing_image_folder(existing_workdir, compiled, tmp_path):
  config = helpers.tiny_rin_config()
  config.data.name = 'image_folder'
  config.data.image_folder = str(tmp_path / 'no_images')
  _fails_early(config, existing_workdir, compiled, r"image_folder: folder '.*no_images' not found")


def test_workdir_not_writable(tmp_path, compiled):
  blocker = tmp_path / 'a_file'
  blocker.write_text('keep me')
  _fails_early(helpers.tiny_rin_config(), str(blocker / 'run'), compiled,
               r"--workdir='.*a_file/run' is not writable .*pass a directory you can write to")
  assert blocker.read_text() == 'keep me'


@pytest.mark.parametrize('mode', ['sample', 'eval'])
def test_inference_mode_without_checkpoints(tmp_path, compiled, mode):
  _fails_early(helpers.tiny_rin_config(), str(tmp_path / 'never_trained'), compiled,
               rf'--mode={mode} needs a trained model but --workdir=.* has no checkpoints/; train '
               'first', mode=mode)


@pytest.mark.parametrize('mode', ['train', 'sample'])
def test_checkpoint_from_a_different_model_shape(existing_workdir, compiled, mode):
  config = helpers.tiny_rin_config()
  config.model.latent_dim = 64  # the checkpoint has 32
  message = _fails_early(config, existing_workdir, compiled,
                         r'checkpoint step 5 in .* was written by a network of a different shape',
                         mode=mode, error=checkpoints.CheckpointShapeError)
  assert 'checkpoint (32,) vs model (64,)' in message
  assert 'use a new --workdir' in message and 'config.json' in message


def test_checkpoint_of_the_pre_fidelity_rin_names_the_change(tmp_path):
  """A checkpoint with the old RIN's parameter names (LayerNorm-ed time token) is named as such."""
  manager = checkpoints.make_manager(str(tmp_path / 'checkpoints'), async_save=False)
  old = {'params': {'time_ln': {'scale': np.ones(32, np.float32)}}}
  checkpoints.save(manager, 7, old)
  manager.wait_until_finished()
  new = {'params': {'time_dense1': {'bias': jax.ShapeDtypeStruct((32,), np.float32)}}}
  with pytest.raises(checkpoints.CheckpointShapeError,
                     match=r'written by an older ncsn_rin RIN \(before the 2026-11-29 change to '
                           r'the official pix2seq time token.*retrain it'):
    checkpoints.check_compatible(manager, 7, new)


def test_same_model_shape_passes_the_checkpoint_check(existing_workdir, compiled):
  config = helpers.tiny_rin_config()
  runtime._check_checkpoint(experiment.Experiment(config), existing_workdir)  # pylint: disable=protected-access
  config.model.latent_dim = 64
  with pytest.raises(checkpoints.CheckpointShapeError):
    runtime._check_checkpoint(experiment.Experiment(config), existing_workdir)  # pylint: disable=protected-access
  assert not compiled


# ----------------------------------------------------------------------------------------------
# main.py: one line on stderr, exit status 2, no traceback, nothing created, fast
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize('flags, line', [
    (['--config.train.batch_sise=8'],
     "error: --config.train.batch_sise=8: the config has no field 'batch_sise' (did you mean "
     "'batch_size'?)"),
    (['--config.train.batch_size=abc'],
     "error: flag --config.train.batch_size=abc: invalid literal for int() with base 10: 'abc'"),
    (['--config.diffusion.input_scale=0'],
     'error: --config.diffusion.input_scale=0.0 is invalid: allowed a number in (0, inf)'),
    (['--config.data.name=cifar10', '--config.data.data_dir=/nonexistent/tfds'],
     "error: TFDS data set 'cifar10' is not prepared"),
], ids=['typo', 'type', 'value', 'data'])
def test_main_prints_one_line_and_exits_2(tmp_path, flags, line):
  workdir = str(tmp_path / 'run')
  start = time.time()
  result = subprocess.run(helpers.main_command(helpers.RIN_TINY, workdir, *flags),
                          cwd=helpers.ROOT, env=helpers.subprocess_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
  elapsed = time.time() - start
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert result.returncode == 2, result.stderr[-2000:]
  assert len(errors) == 1 and errors[0].startswith(line), result.stderr[-2000:]
  assert 'Traceback' not in result.stderr + result.stdout
  assert 'compiling' not in result.stderr
  assert not os.path.exists(workdir)
  assert elapsed < 60, elapsed  # imports only: ~5-10 s idle; 60 s leaves room for a busy machine


def test_debug_flag_restores_the_traceback(tmp_path):
  result = subprocess.run(
      helpers.main_command(helpers.RIN_TINY, str(tmp_path / 'run'),
                           '--config.diffusion.input_scale=0', '--debug'),
      cwd=helpers.ROOT, env=helpers.subprocess_env(), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, timeout=300)
  assert result.returncode != 0 and 'Traceback' in result.stderr
