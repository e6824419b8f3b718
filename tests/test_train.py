"""Training: the optimiser recipe (pix2seq), EMA, label dropout, remat, sharded == single device,
non-finite steps, main.py end to end with its progress lines, resume and SIGTERM."""

import math
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ncsn_rin import checkpoints
from ncsn_rin import experiment
from ncsn_rin import input_pipeline
from ncsn_rin import sharding as sharding_lib
from ncsn_rin import train
from tests import helpers


# ----------------------------------------------------------------------------------------------
# Optimiser recipe
# ----------------------------------------------------------------------------------------------

def _pix2seq_lr(step, peak, warmup, total, fraction):
  """pix2seq WarmUpAndDecay with 'cosine@f': tf CosineDecay(peak, (total − W)/f, alpha=0)."""
  if step < warmup:
    return step / warmup * peak
  decay_steps = (total - warmup) / fraction
  return peak * 0.5 * (1 + math.cos(math.pi * min(step - warmup, decay_steps) / decay_steps))


@pytest.mark.parametrize('fraction, end_factor', [(0.8, 0.0955), (0.7, 0.2061), (1.0, 0.0)])
def test_learning_rate_schedule_is_pix2seq_warmup_then_part_of_a_cosine(fraction, end_factor):
  schedule = train.learning_rate_schedule(3e-3, warmup_steps=10_000, num_steps=150_000,
                                          decay='cosine', cosine_fraction=fraction)
  for step in (0, 1, 5_000, 10_000, 10_001, 80_000, 149_999, 150_000):
    np.testing.assert_allclose(float(schedule(step)),
                               _pix2seq_lr(step, 3e-3, 10_000, 150_000, fraction), rtol=1e-5,
                               atol=1e-10, err_msg=str(step))
  assert float(schedule(0)) == 0.  # the first update (count 0) has lr 0, as Keras' iterations
  np.testing.assert_allclose(float(schedule(150_000)) / 3e-3, end_factor, atol=1e-4)


def test_constant_schedule_with_warmup():
  schedule = train.learning_rate_schedule(1e-4, warmup_steps=10, num_steps=100, decay='constant')
  np.testing.assert_allclose([float(schedule(s)) for s in (0, 5, 10, 99)],
                             [0., 5e-5, 1e-4, 1e-4], rtol=1e-6)


def _tiny_rin_params():
  return experiment.Experiment(helpers.tiny_rin_config()).abstract_state['params']


def _tiny_ncsn_params():
  return experiment.Experiment(helpers.tiny_ncsn_config()).abstract_state['params']


@pytest.mark.parametrize('params_fn', [_tiny_rin_params, _tiny_ncsn_params])
def test_weight_decay_mask_excludes_every_bias_and_norm_parameter(params_fn):
  params = params_fn()
  mask = train.weight_decay_mask(params)
  excluded = {jax.tree_util.keystr(p) for p, m in jax.tree_util.tree_leaves_with_path(mask)
              if not m}
  names = {jax.tree_util.keystr(p): p[-1].key for p, _ in
           jax.tree_util.tree_leaves_with_path(params)}
  norm_or_bias = {k for k, last in names.items()
                  if last in ('bias', 'scale', 'alpha', 'beta', 'gamma')}
  assert excluded == norm_or_bias and excluded
  decayed = set(names) - excluded
  assert all(names[k] in ('kernel', 'latent_pos', 'tape_pos') for k in decayed), decayed
  if params_fn is _tiny_rin_params:
    # 2-D attention biases [heads, key_dim]: the old `ndim >= 2` mask decayed these.
    assert "['block_0']['read']['attn']['query']['bias']" in excluded
    assert "['latent_pos']" in decayed  # pix2seq decays position embeddings (not in its list)


def test_lamb_step_equals_the_tfa_lamb_formula():
  """One step of tfa `LAMB` as pix2seq builds it (wd 0.1, exclude 'bias' from decay and from the
  trust ratio), computed by hand in float64."""
  params = {'dense': {'kernel': jnp.array([[0.5, -1.], [2., 0.25]]), 'bias': jnp.array([0.1, -0.2])}}
  grads = {'dense': {'kernel': jnp.array([[0.3, 0.1], [-0.2, 0.4]]), 'bias': jnp.array([0.05, 0.5])}}
  lr, wd, eps = 0.01, 0.1, 1e-6
  opt = train.make_optimizer('lamb', lambda step: lr, b1=0.9, b2=0.999, eps=eps,
                             weight_decay=wd, grad_clip=0.)
  updates, _ = opt.update(grads, opt.init(params), params)
  new = optax.apply_updates(params, updates)
  for name, decay in (('kernel', True), ('bias', False)):
    w, g = np.asarray(params['dense'][name], np.float64), np.asarray(grads['dense'][name], np.float64)
    m_hat, v_hat = g, g * g                       # bias-corrected first moments at step 1
    update = m_hat / (np.sqrt(v_hat) + eps)
    ratio = 1.
    if decay:
      update = update + wd * w
      ratio = np.linalg.norm(w) / np.linalg.norm(update)
    np.testing.assert_allclose(np.asarray(new['dense'][name]), w - lr * ratio * update,
                               rtol=1e-5, err_msg=name)


def test_train_step_updates_ema_with_optax_incremental_update():
  params = {'w': jnp.ones((3,))}
  loss_fn = lambda p, batch, key: (jnp.sum(p['w'] * batch['x']), {})
  opt = optax.sgd(0.5)
  step = jax.jit(train.make_train_step(loss_fn, opt, 0.9, lambda s: 0.5))
  state = {'step': jnp.zeros((), jnp.int32), 'params': params,
           'ema_params': {'w': jnp.zeros((3,))}, 'opt_state': opt.init(params),
           'rng': jax.random.PRNGKey(0), 'nonfinite_step': jnp.full((), -1, jnp.int32)}
  state, metrics = step(state, {'x': jnp.array([1., 2., 3.])})
  new_w = np.array([0.5, 0., -0.5])
  np.testing.assert_allclose(state['params']['w'], new_w)
  np.testing.assert_allclose(state['ema_params']['w'], 0.9 * 0. + 0.1 * new_w, rtol=1e-6)
  assert float(metrics.compute()['loss']) == 6.


def test_nonfinite_loss_keeps_state_and_names_step():
  params = {'w': jnp.ones((3,))}
  loss_fn = lambda p, batch, key: (jnp.sum(p['w'] * batch['x']), {})
  opt = optax.sgd(0.1)
  step = jax.jit(train.make_train_step(loss_fn, opt, 0.9, lambda s: 0.1))
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


# ----------------------------------------------------------------------------------------------
# What the Experiment wires: label dropout to the null label, remat into both networks
# ----------------------------------------------------------------------------------------------

class _RecordingModel:
  """Stands in for RIN: records the labels of each pass, predicts zeros."""
  self_cond = True

  def __init__(self):
    self.labels = []

  def latent_shape(self, batch):
    return (batch, 2, 4)

  def apply(self, variables, x, gamma, labels, latent_prev, train, rngs):
    del variables, gamma, latent_prev, train, rngs
    self.labels.append(np.asarray(labels))
    return jnp.zeros_like(x), jnp.zeros((x.shape[0], 2, 4))


def test_label_dropout_reaches_the_null_label_independently_per_pass():
  config = helpers.tiny_rin_config()
  config.diffusion.label_dropout = 0.3
  model = _RecordingModel()
  loss_fn = experiment._diffusion_loss_fn(config, model)  # pylint: disable=protected-access
  labels = np.arange(4000, dtype=np.int32) % 10
  batch = {'image': jnp.zeros((4000, 4, 4, 1), jnp.uint8), 'label': jnp.asarray(labels)}
  loss_fn({}, batch, jax.random.PRNGKey(0))
  first, second = model.labels  # self-conditioning pass, then the predicting pass
  for seen in (first, second):
    dropped = seen == 10  # the null label K
    assert abs(dropped.mean() - 0.3) < 0.03
    np.testing.assert_array_equal(seen[~dropped], labels[~dropped])
  assert (first != second).any()  # independent draws per pass, as pix2seq


@pytest.mark.parametrize('name', ['rin_digits', 'ncsnv2_digits'])
def test_sharding_remat_reaches_the_network(name):
  config = getattr(__import__(f'configs.{name}').__dict__[name], 'get_config')('tiny')
  config.sharding.remat = True
  assert experiment.build_model(config).remat


# ----------------------------------------------------------------------------------------------
# Sharding
# ----------------------------------------------------------------------------------------------

def _two_steps(config, mesh):
  exp = experiment.Experiment(config, mesh=mesh)
  state = exp.init_state()
  step_fn = exp.jitted_train_step()
  local = input_pipeline.make_train_iterator(config, start_step=0)
  losses = []
  for _ in range(2):
    batch = input_pipeline.global_batch(next(local), exp.batch_sharding)
    state, metrics = step_fn(state, batch)
    losses.append(float(metrics.compute()['loss']))
  return losses, jax.device_get(state['params'])


@pytest.mark.parametrize('fsdp', [False, True])
def test_sharded_step_matches_single_device(fsdp):
  config = helpers.tiny_rin_config()
  config.sharding.fsdp = fsdp
  # Adam divides by sqrt(v) + eps: with the default eps a gradient that is zero up to round-off
  # (e.g. the zero-initialised self-conditioning LayerNorm) becomes a full-size update of random
  # sign, which would amplify reduction-order noise; a larger eps keeps the comparison meaningful.
  config.optim.eps = 1e-3
  losses1, params1 = _two_steps(config, sharding_lib.make_mesh(jax.devices()[:1]))
  losses8, params8 = _two_steps(config, sharding_lib.make_mesh(jax.devices()[:8]))
  np.testing.assert_allclose(losses1, losses8, rtol=2e-5)
  for a, b in zip(jax.tree.leaves(params1), jax.tree.leaves(params8)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


def test_fsdp_shards_large_parameters():
  config = helpers.tiny_rin_config()
  config.model.latent_dim = 128
  config.sharding.fsdp = True
  exp = experiment.Experiment(config)
  specs = [s.spec for s in jax.tree.leaves(exp.state_sharding['params'])]
  assert any('data' in tuple(spec) for spec in specs)


# ----------------------------------------------------------------------------------------------
# The loop: main.py end to end, non-finite stop, SIGTERM
# ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_main_trains_logs_progress_and_artefacts_then_resumes(tmp_path):
  workdir = str(tmp_path / 'run')
  flags = ['--config.train.log_every=1', '--config.train.checkpoint_every=3',
           '--config.train.sample_every=3']
  first = helpers.run_main(helpers.RIN_TINY, workdir, '--config.train.num_steps=3', *flags)
  assert first.returncode == 0, first.stdout[-3000:]
  log = first.stdout
  for line in ('compiling the train step (first step only)', 'compiled the train step in',
               'step 3/3: ', 'steps/s, ETA', 'saving checkpoint step 3 to',
               'samples_step0000003.png', 'train finished: '):
    assert line in log, line
  assert "Unable to initialize backend 'tpu'" not in log
  closing = log[log.index('train finished: '):]
  for artefact in ('checkpoints/3', 'samples_step0000003.png', 'tensorboard'):
    assert artefact in closing, artefact
  assert os.path.exists(os.path.join(workdir, 'samples_step0000003.png'))
  assert os.path.exists(os.path.join(workdir, 'config.json'))
  second = helpers.run_main(helpers.RIN_TINY, workdir, '--config.train.num_steps=5', *flags)
  assert second.returncode == 0, second.stdout[-3000:]
  assert 'resumed from checkpoint step 3' in second.stdout
  assert 'step 4/5' in second.stdout and 'step 1/5' not in second.stdout
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '5'))
  assert any(n.startswith('events.out') for n in os.listdir(os.path.join(workdir, 'tensorboard')))


def test_progress_rate_is_an_ema_that_starts_after_compiling():
  class Writer:
    def write_scalars(self, step, scalars):
      pass
  progress = train.Progress(num_train_steps=100, every_steps=1, writer=Writer())
  times = iter([0., 1., 2., 12., 13.])  # steps 1-4: 1 step/s, then one slow interval of 10 s
  for step in range(1, 6):
    progress(step, next(times))
  # EMA over intervals: rates 1, 1, 0.1, 1 -> 1, 1, 0.73, 0.811 (weight 0.3 on the newest).
  np.testing.assert_allclose(progress.rate, 0.7 * (0.7 * 1 + 0.3 * 0.1) + 0.3 * 1., rtol=1e-6)


def test_nonfinite_training_stops_and_keeps_last_good_checkpoint(tmp_path):
  config = helpers.tiny_rin_config()
  config.train.num_steps = 6
  config.train.checkpoint_every = 2
  config.train.log_every = 2
  config.train.sample_every = 0
  workdir = str(tmp_path)
  train.train_and_evaluate(experiment.Experiment(config), workdir)  # 6 good steps
  config.train.num_steps = 10
  config.optim.learning_rate = float('inf')   # the first update is non-finite
  exp = experiment.Experiment(config)
  with pytest.raises(train.NonFiniteLossError, match='step 6'):
    train.train_and_evaluate(exp, workdir)
  manager = checkpoints.make_manager(os.path.join(workdir, 'checkpoints'))
  assert max(manager.all_steps()) == 6
  state, step = checkpoints.restore_latest(manager, exp.abstract_sharded_state)
  assert step == 6
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state['params']))


@pytest.mark.slow
def test_sigterm_saves_restorable_checkpoint_and_exits_zero(tmp_path):
  workdir = str(tmp_path / 'run')
  log = str(tmp_path / 'log.txt')
  proc = helpers.start_main(helpers.RIN_TINY, workdir, '--config.train.num_steps=100000',
                            '--config.train.log_every=1', '--config.train.checkpoint_every=100000',
                            '--config.train.sample_every=0', log_path=log)
  try:
    assert helpers.wait_for_text(log, 'step 2/', timeout=300, proc=proc), open(log).read()[-3000:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, open(log).read()[-3000:]
  finally:
    if proc.poll() is None:
      proc.kill()
  assert 'preempted: saved checkpoint step' in open(log).read()
  manager = checkpoints.make_manager(os.path.join(workdir, 'checkpoints'))
  steps = manager.all_steps()
  assert len(steps) == 1 and steps[0] >= 2
  exp = experiment.Experiment(helpers.tiny_rin_config())
  state, step = checkpoints.restore_latest(manager, exp.abstract_sharded_state)
  assert step == steps[0] and int(state['step']) == step


@pytest.mark.slow
def test_ncsn_main_trains_and_samples(tmp_path):
  workdir = str(tmp_path / 'ncsn')
  flags = ['--config.train.num_steps=2', '--config.train.log_every=1',
           '--config.train.checkpoint_every=2', '--config.train.sample_every=0']
  result = helpers.run_main(helpers.NCSN_TINY, workdir, *flags)
  assert result.returncode == 0, result.stdout[-3000:]
  result = helpers.run_main(helpers.NCSN_TINY, workdir, *flags, mode='sample')
  assert result.returncode == 0, result.stdout[-3000:]
  with np.load(os.path.join(workdir, 'samples_langevin_step0000002.npz')) as f:
    assert f['images'].shape == (8, 16, 16, 1) and f['images'].dtype == np.uint8
    assert 'labels' not in f.files  # unconditional
  assert os.path.exists(os.path.join(workdir, 'samples_langevin_step0000002.png'))
