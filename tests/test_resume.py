"""Preemption and faults: SIGKILL at random moments, exact resumption, corrupt checkpoints.

SIGTERM (save + exit 0 + resume) is covered by tests/test_train.py and a killed `--mode=eval` by
tests/test_evaluation.py; this file covers what a hard kill or a damaged disk leave behind.
"""

import glob
import os
import random
import shutil
import signal
import subprocess
import time

from absl import logging
import jax
import numpy as np
import pytest

from ncsn_rin import checkpoints
from ncsn_rin import experiment
from tests import helpers

RIN_DIGITS = helpers.RIN_TINY

# ----------------------------------------------------------------------------------------------
# SIGKILL at random moments, restart, compare with an uninterrupted run
# ----------------------------------------------------------------------------------------------

_KILL_NUM_STEPS = 10
_KILL_FLAGS = [
    f'--config.train.num_steps={_KILL_NUM_STEPS}', '--config.train.log_every=1',
    '--config.train.checkpoint_every=1', '--config.train.sample_every=0',
    '--config.train.max_to_keep=2']
# Two devices: the batch is still split (sharded step, sharded save) while compiling and saving
# stay cheap on a 2-core machine.
_KILL_DEVICES = 2


def _env(cache_dir=None):
  """The subprocess environment, optionally with a persistent compilation cache.

  The restarts load the executables the reference run compiled, which keeps the test fast; the
  reference and the first launch compile independently (and concurrently, one core each), so
  cached and freshly compiled programs are mixed in the comparison.
  """
  env = helpers.subprocess_env(_KILL_DEVICES)
  env['XLA_FLAGS'] += ' --xla_backend_optimization_level=0'  # half the compile time
  env.pop('JAX_COMPILATION_CACHE_DIR', None)  # not the suite's cache (tests/conftest.py)
  if cache_dir:
    env['JAX_COMPILATION_CACHE_DIR'] = cache_dir
    env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
    env['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  return env


def _launch(workdir, env, log_path, *extra_flags):
  log = open(log_path, 'w')
  proc = subprocess.Popen(helpers.main_command(RIN_DIGITS, workdir, *_KILL_FLAGS, *extra_flags),
                          cwd=helpers.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
  log.close()
  return proc


def _restore_all(manager, abstract):
  """{step: host state} for every step the manager lists (each must restore)."""
  return {s: jax.device_get(checkpoints.restore(manager, s, abstract)) for s in manager.all_steps()}


def _tmp_dirs(ckpt_dir):
  return sorted(glob.glob(os.path.join(ckpt_dir, '*orbax-checkpoint-tmp*')))


def _tail(path):
  return open(path).read()[-3000:]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
  abstract = experiment.Experiment(helpers.tiny_rin_config()).abstract_sharded_state
  cache = str(tmp_path / 'xla_cache')
  ref_log = str(tmp_path / 'ref.log')
  # The uninterrupted reference runs in the background, beside the interrupted run; it saves only
  # its final state (checkpoint_every does not change the compiled program or the training).
  ref = _launch(str(tmp_path / 'ref'), _env(cache), ref_log,
                f'--config.train.checkpoint_every={_KILL_NUM_STEPS}')
  try:
    # Three SIGKILLs, each a random moment (seeded) after a random step of its third of the run
    # was logged: the step's checkpoint save starts right after its log line, so kills land
    # before, during or after saves (a left-over *.orbax-checkpoint-tmp directory shows one
    # landed mid-save).
    rng = random.Random(7)
    kill_steps = [rng.randint(2, 3), rng.randint(4, 6), rng.randint(7, _KILL_NUM_STEPS - 2)]
    workdir = str(tmp_path / 'killed')
    ckpt_dir = os.path.join(workdir, 'checkpoints')
    tmp_seen = []
    for i, kill_step in enumerate(kill_steps):
      if i == 1:  # from now on, load what the reference compiled (written before its step 1)
        assert helpers.wait_for_text(ref_log, 'step 1/', timeout=600, proc=ref), _tail(ref_log)
      log_path = str(tmp_path / f'killed_{i}.log')
      proc = _launch(workdir, _env(cache if i else None), log_path)
      try:
        seen = helpers.wait_for_text(log_path, f'step {kill_step}/', timeout=600, proc=proc)
        assert seen and proc.poll() is None, _tail(log_path)
        time.sleep(rng.uniform(0., 0.5))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
      finally:
        if proc.poll() is None:
          proc.kill()
      # A half-written step is a tmp directory, never a listed step; every listed step restores.
      tmp = _tmp_dirs(ckpt_dir)
      tmp_seen += tmp
      manager = checkpoints.make_manager(ckpt_dir, max_to_keep=2)
      steps = manager.all_steps()
      assert not {int(os.path.basename(t).split('.')[0]) for t in tmp} & set(steps), (tmp, steps)
      assert steps, tmp  # step 1's save had finished before step 3 was logged
      for step, state in _restore_all(manager, abstract).items():
        assert int(state['step']) == step
      manager.close()

    final_log = str(tmp_path / 'final.log')
    last = _launch(workdir, _env(cache), final_log)
    assert last.wait(timeout=600) == 0, _tail(final_log)
    assert 'resumed from checkpoint step' in open(final_log).read()
    assert ref.wait(timeout=600) == 0, _tail(ref_log)
  finally:
    if ref.poll() is None:
      ref.kill()
  logging.info('killed after steps %s; half-written checkpoints left by kills: %s', kill_steps,
               tmp_seen)

  assert _tmp_dirs(ckpt_dir) == []
  killed_mgr = checkpoints.make_manager(ckpt_dir)
  ref_mgr = checkpoints.make_manager(str(tmp_path / 'ref' / 'checkpoints'))
  assert max(killed_mgr.all_steps()) == max(ref_mgr.all_steps()) == _KILL_NUM_STEPS
  killed_states = _restore_all(killed_mgr, abstract)
  ref_state = jax.device_get(checkpoints.restore(ref_mgr, _KILL_NUM_STEPS, abstract))
  # Bit-identical: params, EMA params, optimiser moments and counts, RNG key, step.
  jax.tree.map(np.testing.assert_array_equal, killed_states[_KILL_NUM_STEPS], ref_state)


# ----------------------------------------------------------------------------------------------
# A corrupt latest checkpoint: fall back to the previous one, with a warning naming both steps
# ----------------------------------------------------------------------------------------------

def _small_state(value):
  return {'step': np.asarray(value, np.int32),
          'params': {'w': np.full((64, 32), value, np.float32), 'b': np.arange(32.) + value}}


def _abstract_small():
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _small_state(0))


def _data_files(step_dir):
  out = []
  for root, _, files in os.walk(step_dir):
    out += [os.path.join(root, f) for f in files
            if '/d/' in os.path.join(root, f) or '/ocdbt.process' in root]
  return out


def _truncate_data(step_dir):
  files = _data_files(step_dir)
  assert files, os.listdir(step_dir)
  for path in files:
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)


def _delete_item(step_dir):
  shutil.rmtree(os.path.join(step_dir, 'default'))


def _delete_manifests(step_dir):
  paths = glob.glob(os.path.join(step_dir, 'default', '**', 'manifest.ocdbt'), recursive=True)
  assert paths
  for path in paths:
    os.remove(path)


class _Warnings(logging.logging.Handler):

  def __init__(self):
    super().__init__(logging.logging.WARNING)
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.mark.parametrize('corrupt', [_truncate_data, _delete_item, _delete_manifests],
                         ids=['truncated_data', 'deleted_item', 'deleted_manifests'])
def test_corrupt_latest_checkpoint_falls_back_with_warning(tmp_path, corrupt):
  manager = checkpoints.make_manager(str(tmp_path / 'ckpt'), max_to_keep=3, async_save=False)
  for step in (1, 2, 3):
    checkpoints.save(manager, step, _small_state(step))
  manager.wait_until_finished()
  corrupt(os.path.join(manager.directory, '3'))
  manager.close()

  warnings = _Warnings()
  logging.get_absl_logger().addHandler(warnings)
  try:
    reopened = checkpoints.make_manager(str(tmp_path / 'ckpt'), max_to_keep=3)
    state, step = checkpoints.restore_latest(reopened, _abstract_small())
  finally:
    logging.get_absl_logger().removeHandler(warnings)
  assert step == 2
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state), _small_state(2))
  fell_back = [m for m in warnings.messages if 'fell back' in m]
  assert fell_back, warnings.messages
  assert '3' in fell_back[0] and '2' in fell_back[0], fell_back


def test_all_checkpoints_corrupt_is_an_actionable_error(tmp_path):
  manager = checkpoints.make_manager(str(tmp_path / 'ckpt'), async_save=False)
  checkpoints.save(manager, 1, _small_state(1))
  manager.wait_until_finished()
  _delete_item(os.path.join(manager.directory, '1'))
  with pytest.raises(RuntimeError, match=r'tried steps \[1\].*move the directory aside'):
    checkpoints.restore_latest(manager, _abstract_small())
