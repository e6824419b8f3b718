"""--mode=eval / fid_stats / sample: checkpoint sweeps (one row per checkpoint, a plot, resumable
rows and batches), the run's config left alone, labels in sample files, and the three FID
protocols end to end on the digits with the real Inception network."""

import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

from ncsn_rin import checkpoints
from ncsn_rin import evaluation
from ncsn_rin import experiment
from ncsn_rin import input_pipeline
from ncsn_rin import runtime
from ncsn_rin import sharding
from ncsn_rin.metrics import fid
from tests import helpers


class _Killed(Exception):
  pass


def _fake_inception(monkeypatch, kill_after=None):
  """A cheap deterministic 'Inception' (a fixed random projection to 2048-d) that counts its
  calls; with kill_after=k the (k+1)-th call raises, as if the process died there."""
  calls = []

  def feature_fn_for(config, mesh):
    del config, mesh

    def feature_fn(images):
      if kill_after is not None and len(calls) >= kill_after:
        raise _Killed(f'killed after {len(calls)} batches')
      calls.append(len(images))
      x = np.asarray(sharding.to_host(images), np.float64)
      x = x.reshape(len(x), -1) / 255.
      proj = np.random.default_rng(0).standard_normal((x.shape[1], 2048)) / np.sqrt(x.shape[1])
      return np.tanh(x @ proj)

    return feature_fn

  monkeypatch.setattr(evaluation, 'feature_fn_for', feature_fn_for)
  return calls


def _record_statistics(monkeypatch):
  """Replaces the Fréchet distance (two 2048² sqrtm: a minute on 2 cores) by a cheap stand-in and
  records the sample statistics it is given, so runs can be compared exactly."""
  seen = []

  def distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    del eps
    seen.append((np.array(mu1), np.array(sigma1)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) - np.trace(sigma2))

  monkeypatch.setattr(fid, 'frechet_distance', distance)
  return seen


def _workdir_with_checkpoints(tmp_path, config, steps):
  """Checkpoints at `steps` whose EMA parameters differ (so their FIDs differ), and a reference."""
  workdir = str(tmp_path / 'run')
  exp = experiment.Experiment(config)
  state = exp.init_state()
  manager = checkpoints.make_manager(os.path.join(workdir, 'checkpoints'), max_to_keep=10)
  for step in steps:
    state = dict(state, ema_params=jax.tree.map(lambda p: p * 1.05, state['ema_params']))
    checkpoints.save(manager, step, state)
  manager.wait_until_finished()
  manager.close()
  rng = np.random.default_rng(1)
  a = rng.standard_normal((2048, 2048)) * 0.05
  fid.save_statistics(os.path.join(workdir, 'fid_stats.npz'), rng.standard_normal(2048) * 0.1,
                      a @ a.T + np.eye(2048) * 0.01, 1000, 'test reference', protocol='tfgan')
  return workdir, exp


def _eval_config(num_batches=2):
  config = helpers.tiny_rin_config()
  config.eval.batch_size = 8
  config.eval.num_samples = num_batches * 8
  return config


def test_eval_resumes_after_kill_with_identical_fid(tmp_path, monkeypatch):
  config = _eval_config(num_batches=7)  # progress is saved after batch 5
  first, exp = _workdir_with_checkpoints(tmp_path, config, [3])
  second = str(tmp_path / 'second')
  shutil.copytree(first, second)

  _fake_inception(monkeypatch)
  uninterrupted_stats = _record_statistics(monkeypatch)
  uninterrupted = evaluation.evaluate_fid(exp, first)

  _fake_inception(monkeypatch, kill_after=6)
  with pytest.raises(_Killed):
    evaluation.evaluate_fid(exp, second)
  progress = [f for f in os.listdir(second) if f.startswith('eval_progress_step0000003_')]
  with np.load(os.path.join(second, progress[0])) as f:
    assert int(f['next_batch']) == 5
  calls = _fake_inception(monkeypatch)
  resumed_stats = _record_statistics(monkeypatch)
  resumed = evaluation.evaluate_fid(exp, second)
  assert calls == [8, 8]  # only batches 5 and 6 were generated again
  assert resumed['best_fid'] == pytest.approx(uninterrupted['best_fid'], rel=1e-10)
  (mu_a, sigma_a), = uninterrupted_stats
  (mu_b, sigma_b), = resumed_stats
  np.testing.assert_allclose(mu_b, mu_a, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(sigma_b, sigma_a, rtol=1e-10, atol=1e-14)
  assert not [f for f in os.listdir(second) if f.startswith('eval_progress')]  # cleaned up


def test_checkpoint_sweep_writes_a_row_per_checkpoint_and_a_plot_and_resumes_by_row(
    tmp_path, monkeypatch):
  config = _eval_config(num_batches=1)
  config.eval.checkpoints = 'all'
  workdir, exp = _workdir_with_checkpoints(tmp_path, config, [2, 4, 6])
  results = os.path.join(workdir, 'eval_results.json')
  older = [{'fid': 99., 'checkpoint_step': 2, 'settings_id': 'an older run'}]
  with open(results, 'w') as f:
    json.dump(older, f)
  _record_statistics(monkeypatch)
  _fake_inception(monkeypatch, kill_after=1)  # dies inside the second checkpoint's row
  with pytest.raises(_Killed):
    evaluation.evaluate_fid(exp, workdir)
  with open(results) as f:
    rows = json.load(f)
  assert rows[0] == older[0] and [r['checkpoint_step'] for r in rows[1:]] == [2]
  calls = _fake_inception(monkeypatch)
  result = evaluation.evaluate_fid(exp, workdir)
  assert len(calls) == 2  # rows 4 and 6 only: the finished row of step 2 was not recomputed
  with open(results) as f:
    rows = json.load(f)
  assert rows[0] == older[0]  # appended, never overwritten
  new = rows[1:]
  assert [r['checkpoint_step'] for r in new] == [2, 4, 6]
  assert len({r['fid'] for r in new}) == 3
  best = min(new, key=lambda r: r['fid'])
  assert result['best_step'] == best['checkpoint_step'] and result['rows'] == 3
  for row in new:
    assert row['num_samples'] == 8 and row['protocol'] == 'tfgan' and row['sampler'] == 'ddpm'
  with open(os.path.join(workdir, 'fid_vs_step.png'), 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  # Listed steps score only those; a step that is not kept is named in a one-line error.
  config.eval.checkpoints = '4'
  calls = _fake_inception(monkeypatch)
  evaluation.evaluate_fid(experiment.Experiment(config), workdir)
  assert not calls  # same settings: already there
  config.eval.checkpoints = '5'
  with pytest.raises(runtime.validation.UserError, match=r'steps \[5\].*keeps \[2, 4, 6\].*'
                                                         r'keep_every'):
    evaluation.evaluate_fid(experiment.Experiment(config), workdir)


def test_eval_and_sample_leave_the_run_config_alone_and_samples_carry_labels(
    tmp_path, monkeypatch):
  config = _eval_config(num_batches=1)
  workdir, _ = _workdir_with_checkpoints(tmp_path, config, [2])
  runtime.save_config_copy(workdir, config)
  with open(os.path.join(workdir, 'config.json'), 'rb') as f:
    record = f.read()
  _fake_inception(monkeypatch)
  _record_statistics(monkeypatch)
  config.eval.num_samples = 9  # an evaluation override
  config.sample.num_samples = 12
  runtime.run('eval', config, workdir)
  result = runtime.run('sample', config, workdir)
  with open(os.path.join(workdir, 'config.json'), 'rb') as f:
    assert f.read() == record
  assert sorted(os.listdir(workdir)).count('config.json') == 1
  assert not [n for n in os.listdir(workdir) if n.startswith('config.') and n != 'config.json']
  with open(os.path.join(workdir, 'eval_results.json')) as f:
    assert json.load(f)[-1]['num_samples'] == 9  # the override is recorded with the result
  with np.load(result['npz']) as f:
    images, labels = f['images'], f['labels']
  assert images.shape == (12, 16, 16, 1) and labels.shape == (12,)
  assert labels.dtype == np.int32 and labels.max() < 10
  # The samples come from the EMA parameters (pix2seq's denoiser_ema), not the raw ones.
  exp = experiment.Experiment(config)
  manager = checkpoints.make_manager(os.path.join(workdir, 'checkpoints'))
  state = checkpoints.restore(manager, 2, exp.abstract_sharded_state)
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 2), 0)
  first_batch = exp.sample_fn(config.sample.batch_size)  # batch 0 of the two (8 + 4 kept)
  from_ema, ema_labels = first_batch(state['ema_params'], key)
  from_raw, _ = first_batch(state['params'], key)
  np.testing.assert_array_equal(images[:8], np.asarray(from_ema))
  np.testing.assert_array_equal(labels[:8], np.asarray(ema_labels))
  assert (np.asarray(from_raw) != np.asarray(from_ema)).any()


# ------------------------------------------------------------------------------------------------
# The real Inception network
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_fid_stats_and_eval_on_digits_under_each_protocol(tmp_path):
  """fid_stats then eval (16 reference digits, 16 samples of an untrained tiny RIN, one checkpoint)
  under tfgan, pytorch_fid and clean: the statistics are those of the digits' features, each
  protocol gives its own (reproducible) FID."""
  config = _eval_config(num_batches=2)
  config.eval.fid_stats_num = 16
  workdir, exp = _workdir_with_checkpoints(tmp_path, config, [2])
  os.remove(os.path.join(workdir, 'fid_stats.npz'))
  local = [b for b in input_pipeline.make_eval_iterator(config, num_examples=16, batch_size=8)]
  digits = np.concatenate([b['image'] for b in local])
  fids = {}
  for protocol in ('tfgan', 'pytorch_fid', 'clean'):
    config.eval.protocol = protocol
    config.eval.ref_stats = os.path.join(workdir, f'fid_stats_{protocol}.npz')
    stats = runtime.run('fid_stats', config, workdir)
    assert stats['n'] == 16 and stats['protocol'] == protocol
    ref = fid.load_statistics(stats['path'], protocol)
    features = evaluation.feature_fn_for(config, sharding.make_mesh())(digits).astype(np.float64)
    np.testing.assert_allclose(ref.mu, features.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ref.sigma, np.cov(features, rowvar=False), rtol=1e-3, atol=1e-5)
    result = runtime.run('eval', config, workdir)
    fids[protocol] = result['best_fid']
    assert math.isfinite(fids[protocol]) and fids[protocol] > 10.  # noise is far from digits
  assert len({round(v, 3) for v in fids.values()}) == 3, fids  # the convention moves the number
  # Reproducible: each protocol again gives the same statistics, bit for bit.
  for protocol in fids:
    config.eval.protocol = protocol
    config.eval.ref_stats = os.path.join(workdir, f'again_{protocol}.npz')
    runtime.run('fid_stats', config, workdir)
    again = fid.load_statistics(config.eval.ref_stats, protocol)
    first = fid.load_statistics(os.path.join(workdir, f'fid_stats_{protocol}.npz'), protocol)
    np.testing.assert_array_equal(again.mu, first.mu)
    np.testing.assert_array_equal(again.sigma, first.sigma)
  with pytest.raises(ValueError, match='tfgan'):
    fid.load_statistics(config.eval.ref_stats, 'tfgan')
