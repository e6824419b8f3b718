"""Tests for ncsn_rin/metrics/fid.py (FID of Heusel et al. 2017; TTUR reference implementation)."""
import numpy as np
import pytest
import scipy.linalg

from ncsn_rin.metrics import fid


def _mean_and_cov(features):
  """TTUR's statistics of features [N, D]: np.mean and np.cov(rowvar=False)."""
  return features.mean(axis=0), np.cov(features, rowvar=False)


def test_frechet_distance_closed_form_diagonal():
  """Commuting (diagonal) covariances: d^2 = ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2."""
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
  a, b = rng.uniform(0.1, 3.0, 16), rng.uniform(0.1, 3.0, 16)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  actual = fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  np.testing.assert_allclose(actual, expected, rtol=1e-10)


def test_frechet_distance_rotated_gaussians():
  """Same diagonal spectra in a common random basis (still commuting): the distance is unchanged."""
  rng = np.random.default_rng(1)
  q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
  a, b = rng.uniform(0.1, 3.0, 8), rng.uniform(0.1, 3.0, 8)
  mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
  expected = fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  actual = fid.frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
  np.testing.assert_allclose(actual, expected, rtol=1e-8)


def test_fid_of_a_set_with_itself_is_zero():
  mu, sigma = _mean_and_cov(np.random.default_rng(2).standard_normal((500, 64)) * 3 + 1)
  assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def _ttur_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """TTUR's calculate_frechet_distance, transcribed: scipy sqrtm, eps offset when not finite."""
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    offset = np.eye(len(mu1)) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  diff = mu1 - mu2
  return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real)


@pytest.mark.parametrize('n, dim', [(400, 64), (40, 64)], ids=['full_rank', 'singular'])
def test_frechet_distance_equals_ttur_sqrtm(n, dim):
  """The eigenvalue form equals TTUR's sqrtm on non-commuting covariances (full rank, and rank
  deficient as with fewer samples than features); a wrong trace (e.g. Tr(Σ1Σ2) without the root,
  or the root taken elementwise on the diagonal of Σ1·Σ2) would not."""
  rng = np.random.default_rng(5)
  mix = rng.standard_normal((dim, dim)) / np.sqrt(dim)
  a = np.tanh(rng.standard_normal((n, dim)) @ mix)
  b = np.tanh(rng.standard_normal((n, dim)) @ mix.T + 0.2)
  (mu1, s1), (mu2, s2) = _mean_and_cov(a), _mean_and_cov(b)
  expected = _ttur_frechet_distance(mu1, s1, mu2, s2)
  np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-7)
  diff = mu1 - mu2
  wrong = diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(np.diag(s1 @ s2), 0, None)).sum()
  assert abs(wrong - expected) > 1e-3 * abs(expected)


def test_singular_covariances_use_eps_offset():
  """Rank-deficient covariances (fewer samples than dims) stay finite and ~0 against themselves."""
  mu, sigma = _mean_and_cov(np.random.default_rng(3).standard_normal((10, 32)))
  value = fid.frechet_distance(mu, sigma, mu, sigma)
  assert np.isfinite(value) and abs(value) < 1e-3
  zeros = np.zeros((4, 4))
  assert fid.frechet_distance(np.ones(4), zeros, np.zeros(4), zeros) == pytest.approx(4.0, abs=1e-4)


def test_large_imaginary_component_raises():
  with pytest.raises(ValueError, match='imaginary'):
    fid.frechet_distance(np.zeros(2), np.diag([1.0, 1.0]), np.zeros(2), np.diag([-1.0, 1.0]))


def test_streaming_statistics_equal_one_shot():
  rng = np.random.default_rng(4)
  features = rng.standard_normal((1000, 48)) * rng.uniform(0.1, 5, 48) + rng.standard_normal(48)
  running = fid.RunningStatistics(48)
  for start in range(0, 1000, 128):  # uneven last batch
    running.update(features[start:start + 128].astype(np.float32))
  mu, sigma = running.mean_and_cov()
  f32 = features.astype(np.float32).astype(np.float64)
  np.testing.assert_allclose(mu, f32.mean(axis=0), rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(f32, rowvar=False), rtol=1e-9, atol=1e-10)
  assert running.count == 1000 and mu.dtype == sigma.dtype == np.float64


def test_state_dict_roundtrip_resumes_the_stream(tmp_path):
  features = np.random.default_rng(8).standard_normal((90, 6))
  first = fid.RunningStatistics(6).update(features[:40])
  np.savez(tmp_path / 'progress.npz', **first.state_dict())
  with np.load(tmp_path / 'progress.npz') as f:
    resumed = fid.RunningStatistics(6).load_state_dict({k: f[k] for k in f.files})
  resumed.update(features[40:])
  whole = fid.RunningStatistics(6).update(features)
  assert resumed.count == 90
  for x, y in zip(whole.mean_and_cov(), resumed.mean_and_cov()):
    np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


def test_save_and_load_statistics_roundtrip(tmp_path):
  rng = np.random.default_rng(7)
  mu, sigma = rng.standard_normal(5), np.cov(rng.standard_normal((20, 5)), rowvar=False)
  path = tmp_path / 'sub' / 'cifar10_train.npz'
  fid.save_statistics(str(path), mu, sigma, 20, protocol='clean', description='cifar10 train, 50k')
  stats = fid.load_statistics(str(path), 'clean')
  np.testing.assert_array_equal(stats.mu, mu)
  np.testing.assert_array_equal(stats.sigma, sigma)
  assert (stats.n, stats.description, stats.protocol) == (20, 'cifar10 train, 50k', 'clean')
  assert sorted(p.name for p in path.parent.iterdir()) == ['cifar10_train.npz']  # no temp files


def test_missing_statistics_names_how_to_create_them(tmp_path):
  with pytest.raises(FileNotFoundError, match='--mode=fid_stats'):
    fid.load_statistics(str(tmp_path / 'missing.npz'), 'tfgan')


def test_statistics_of_another_protocol_are_refused(tmp_path):
  path = str(tmp_path / 'stats.npz')
  fid.save_statistics(path, np.zeros(3), np.eye(3), 10, protocol='pytorch_fid')
  with pytest.raises(ValueError) as info:
    fid.load_statistics(path, 'tfgan')
  message = str(info.value)
  assert "'pytorch_fid'" in message and "'tfgan'" in message and '\n' not in message
  assert '--config.eval.protocol=tfgan' in message


def test_files_without_protocol_are_tfgan(tmp_path):
  """Files written before the protocol field: every one was TF-GAN."""
  path = tmp_path / 'old.npz'
  np.savez(path, mu=np.zeros(3), sigma=np.eye(3), n=np.asarray(10))
  assert fid.load_statistics(str(path), 'tfgan').protocol == 'tfgan'
  with pytest.raises(ValueError, match='clean'):
    fid.load_statistics(str(path), 'clean')


def test_running_statistics_reject_wrong_dimension():
  with pytest.raises(ValueError, match=r'\[B, 4\]'):
    fid.RunningStatistics(4).update(np.zeros((2, 5)))
