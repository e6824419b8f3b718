"""Training: main.py end to end, resume, SIGTERM, sharded == single device, early errors."""

import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncsn_rin import checkpoints
from ncsn_rin import input_pipeline
from ncsn_rin import sharding as sharding_lib
from ncsn_rin import train
from tests import helpers

RIN_DIGITS = os.path.join(helpers.ROOT, 'configs', 'rin_digits.py')
NCSN_DIGITS = os.path.join(helpers.ROOT, 'configs', 'ncsnv2_digits.py')


def test_main_trains_writes_checkpoint_and_grid_then_resumes(tmp_path):
  workdir = str(tmp_path / 'run')
  flags = helpers.TINY_RIN_FLAGS + ['--config.train.log_every=1',
                                    '--config.train.checkpoint_every=3',
                                    '--config.train.sample_every=3']
  first = helpers.run_main(RIN_DIGITS, workdir, '--config.train.num_steps=3', *flags)
  assert first.returncode == 0, first.stdout[-3000:]
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '3'))
  assert os.path.exists(os.path.join(workdir, 'samples_step0000003.png'))
  assert os.path.exists(os.path.join(workdir, 'config.json'))
  assert 'steps/s' in first.stdout and 'ETA' in first.stdout
  second = helpers.run_main(RIN_DIGITS, workdir, '--config.train.num_steps=5', *flags)
  assert second.returncode == 0, second.stdout[-3000:]
  assert 'resumed from checkpoint step 3' in second.stdout
  assert 'step 4/5' in second.stdout and 'step 1/5' not in second.stdout
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '5'))
  tb = os.listdir(os.path.join(workdir, 'tensorboard'))
  assert any(name.startswith('events.out') for name in tb)


def test_misspelt_override_fails_before_compiling(tmp_path):
  start = time.time()
  result = helpers.run_main(RIN_DIGITS, str(tmp_path / 'w'), '--config.train.batch_sise=64')
  assert result.returncode != 0
  assert 'batch_sise' in result.stdout
  assert time.time() - start < 60
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')


def test_batch_not_divisible_by_devices_fails_before_compiling():
  config = helpers.tiny_rin_config()
  config.train.batch_size = 12  # 8 devices
  with pytest.raises(ValueError, match=r'batch_size=12 .*multiple of the number of devices \(8\)'):
    train.Experiment(config)


def _two_steps(config, mesh):
  exp = train.Experiment(config, mesh=mesh)
  state = exp.init_state()
  step_fn = exp.compiled_train_step()
  local = input_pipeline.make_train_iterator(config, start_step=0)
  losses = []
  for _ in range(2):
    batch = input_pipeline.global_batch(next(local), exp.batch_sharding)
    state, metrics = step_fn(state, batch)
    losses.append(float(metrics['loss']))
  return losses, jax.device_get(state['params'])


@pytest.mark.parametrize('fsdp', [False, True])
def test_sharded_step_matches_single_device(fsdp):
  config = helpers.tiny_rin_config()
  config.sharding.fsdp = fsdp
  # Adam divides by sqrt(v) + eps: with the default eps a gradient that is zero up to round-off
  # (e.g. the zero-initialised self-conditioning LayerNorm) becomes a full-size update of random
  # sign, which would amplify reduction-order noise; a larger eps keeps the comparison meaningful.
  config.optim.eps = 1e-3
  one = sharding_lib.make_mesh(jax.devices()[:1])
  eight = sharding_lib.make_mesh(jax.devices()[:8])
  losses1, params1 = _two_steps(config, one)
  losses8, params8 = _two_steps(config, eight)
  np.testing.assert_allclose(losses1, losses8, rtol=2e-5)
  for a, b in zip(jax.tree.leaves(params1), jax.tree.leaves(params8)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


def test_fsdp_shards_large_parameters():
  config = helpers.tiny_rin_config()
  config.model.latent_dim = 128
  config.sharding.fsdp = True
  exp = train.Experiment(config)
  specs = [s.spec for s in jax.tree.leaves(exp.state_sharding['params'])]
  assert any('data' in tuple(spec) for spec in specs)


def test_nonfinite_loss_keeps_state_and_names_step():
  params = {'w': jnp.ones((3,))}

  def loss_fn(p, batch, key):
    del key
    loss = jnp.sum(p['w'] * batch['x'])
    return loss, {}

  import optax  # pylint: disable=g-import-not-at-top
  opt = optax.sgd(0.1)
  step = jax.jit(train.make_train_step(loss_fn, opt, 0.9))
  state = {'step': jnp.zeros((), jnp.int32), 'params': params, 'ema_params': params,
           'opt_state': opt.init(params), 'rng': jax.random.PRNGKey(0),
           'nonfinite_step': jnp.full((), -1, jnp.int32)}
  state, _ = step(state, {'x': jnp.ones((3,))})
  good = jax.device_get(state['params'])
  state, _ = step(state, {'x': jnp.array([1., jnp.nan, 1.])})
  state, _ = step(state, {'x': jnp.ones((3,))})  # a later finite step does not hide it
  np.testing.assert_array_equal(jax.device_get(state['params'])['w'], good['w'] - 0.1)
  with pytest.raises(train.NonFiniteLossError, match='step 1'):
    train.check_finite(state, 3)


def test_nonfinite_training_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = helpers.tiny_rin_config()
  config.train.num_steps = 6
  config.train.checkpoint_every = 2
  config.train.log_every = 2
  config.train.sample_every = 0
  workdir = str(tmp_path)
  train.train_and_evaluate(config, workdir)  # 6 good steps
  config.train.num_steps = 10
  config.optim.learning_rate = float('inf')   # the first update is non-finite
  with pytest.raises(train.NonFiniteLossError, match='step 6'):
    train.train_and_evaluate(config, workdir)
  manager = checkpoints.make_manager(os.path.join(workdir, 'checkpoints'))
  assert max(manager.all_steps()) == 6
  exp = train.Experiment(config)
  state, step = checkpoints.restore_latest(manager, exp.abstract_sharded_state)
  assert step == 6
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state['params']))


def test_sigterm_saves_restorable_checkpoint_and_exits_zero(tmp_path):
  workdir = str(tmp_path / 'run')
  log = str(tmp_path / 'log.txt')
  proc = helpers.start_main(RIN_DIGITS, workdir, '--config.train.num_steps=100000',
                            '--config.train.log_every=1', '--config.train.checkpoint_every=100000',
                            '--config.train.sample_every=0', *helpers.TINY_RIN_FLAGS,
                            log_path=log)
  try:
    assert helpers.wait_for_text(log, 'step 2/', timeout=300, proc=proc), open(log).read()[-3000:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, open(log).read()[-3000:]
  finally:
    if proc.poll() is None:
      proc.kill()
  text = open(log).read()
  assert 'preempted: saved checkpoint at step' in text
  manager = checkpoints.make_manager(os.path.join(workdir, 'checkpoints'))
  steps = manager.all_steps()
  assert len(steps) == 1 and steps[0] >= 2
  config = helpers.tiny_rin_config()
  state, step = checkpoints.restore_latest(manager, train.Experiment(config).abstract_sharded_state)
  assert step == steps[0] and int(state['step']) == step


def test_ncsn_main_trains_and_samples(tmp_path):
  workdir = str(tmp_path / 'ncsn')
  flags = ['--config.data.image_size=16', '--config.model.ngf=8', '--config.ncsn.num_scales=4',
           '--config.ncsn.n_steps_each=2', '--config.train.batch_size=16',
           '--config.train.num_steps=2', '--config.train.log_every=1',
           '--config.train.checkpoint_every=2', '--config.train.sample_every=0',
           '--config.sample.num_samples=8', '--config.sample.batch_size=8']
  result = helpers.run_main(NCSN_DIGITS, workdir, *flags)
  assert result.returncode == 0, result.stdout[-3000:]
  result = helpers.run_main(NCSN_DIGITS, workdir, *flags, mode='sample')
  assert result.returncode == 0, result.stdout[-3000:]
  files = os.listdir(workdir)
  png = [f for f in files if f.startswith('samples_langevin') and f.endswith('.png')]
  npz = [f for f in files if f.startswith('samples_langevin') and f.endswith('.npz')]
  assert png and npz
  images = np.load(os.path.join(workdir, npz[0]))['images']
  assert images.shape == (8, 16, 16, 1) and images.dtype == np.uint8
