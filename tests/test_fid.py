"""Tests for ncsn_rin/metrics/fid.py (FID of Heusel et al. 2017; TTUR reference implementation)."""
import numpy as np
import pytest

from ncsn_rin.metrics import fid


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
  features = np.random.default_rng(2).standard_normal((500, 64)) * 3 + 1
  stats = fid.statistics_of_features(features)
  assert abs(fid.fid_from_statistics(stats, stats)) < 1e-6


def test_singular_covariances_use_eps_offset():
  """Rank-deficient covariances (fewer samples than dims) stay finite and ~0 against themselves."""
  features = np.random.default_rng(3).standard_normal((10, 32))
  stats = fid.statistics_of_features(features)
  value = fid.frechet_distance(stats.mu, stats.sigma, stats.mu, stats.sigma)
  assert np.isfinite(value) and abs(value) < 1e-3
  zeros = np.zeros((4, 4))
  # TTUR adds eps to the covariances only inside the square root: 4 - 2 * 4 * eps.
  assert fid.frechet_distance(np.ones(4), zeros, np.zeros(4), zeros) == pytest.approx(4.0, abs=1e-4)


def test_large_imaginary_component_raises():
  with pytest.raises(ValueError, match='imaginary'):
    fid.frechet_distance(np.zeros(2), np.diag([1.0, 1.0]), np.zeros(2), np.diag([-1.0, 1.0]))


def test_streaming_statistics_equal_one_shot():
  rng = np.random.default_rng(4)
  features = rng.standard_normal((1000, 48)) * rng.uniform(0.1, 5, 48) + rng.standard_normal(48)
  running = fid.RunningStatistics()
  for start in range(0, 1000, 128):  # uneven last batch
    running.update(features[start:start + 128].astype(np.float32))
  mu, sigma = running.mean_and_cov()
  f32 = features.astype(np.float32).astype(np.float64)
  np.testing.assert_allclose(mu, f32.mean(axis=0), rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(f32, rowvar=False), rtol=1e-9, atol=1e-10)
  assert running.count == 1000 and mu.dtype == sigma.dtype == np.float64


def test_merge_equals_single_stream():
  features = np.random.default_rng(5).standard_normal((300, 8))
  whole = fid.RunningStatistics().update(features)
  merged = fid.RunningStatistics().update(features[:100]).merge(
      fid.RunningStatistics().update(features[100:]))
  for x, y in zip(whole.mean_and_cov(), merged.mean_and_cov()):
    np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


def test_state_dict_roundtrip_resumes_the_stream(tmp_path):
  features = np.random.default_rng(8).standard_normal((90, 6))
  first = fid.RunningStatistics(6).update(features[:40])
  np.savez(tmp_path / 'progress.npz', **first.state_dict())
  with np.load(tmp_path / 'progress.npz') as f:
    resumed = fid.RunningStatistics(6).load_state_dict({k: f[k] for k in f.files})
  resumed.update(features[40:])
  whole = fid.RunningStatistics().update(features)
  assert resumed.count == 90
  for x, y in zip(whole.mean_and_cov(), resumed.mean_and_cov()):
    np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12)


def test_compute_statistics_streams_batches_through_feature_fn():
  rng = np.random.default_rng(6)
  images = rng.integers(0, 256, (70, 4, 4, 3), dtype=np.uint8)
  feature_fn = lambda batch: batch.reshape(batch.shape[0], -1)[:, :10].astype(np.float32) / 255
  batches = (images[i:i + 16] for i in range(0, 70, 16))
  stats = fid.compute_statistics(batches, feature_fn, description='toy')
  expected = fid.statistics_of_features(feature_fn(images))
  assert stats.n == 70 and stats.description == 'toy'
  np.testing.assert_allclose(stats.mu, expected.mu, rtol=1e-12)
  np.testing.assert_allclose(stats.sigma, expected.sigma, rtol=1e-9, atol=1e-12)


def test_save_and_load_statistics_roundtrip(tmp_path):
  rng = np.random.default_rng(7)
  mu, sigma = rng.standard_normal(5), np.cov(rng.standard_normal((20, 5)), rowvar=False)
  path = tmp_path / 'sub' / 'cifar10_train.npz'
  fid.save_statistics(str(path), mu, sigma, 20, 'cifar10 train, 50k')
  stats = fid.load_statistics(str(path))
  np.testing.assert_array_equal(stats.mu, mu)
  np.testing.assert_array_equal(stats.sigma, sigma)
  assert stats.n == 20 and stats.description == 'cifar10 train, 50k'
  assert sorted(p.name for p in path.parent.iterdir()) == ['cifar10_train.npz']  # no temp files


def test_missing_statistics_names_how_to_create_them(tmp_path):
  with pytest.raises(FileNotFoundError, match='--mode=fid_stats'):
    fid.load_statistics(str(tmp_path / 'missing.npz'))


def test_inception_score_is_unavailable():
  with pytest.raises(NotImplementedError, match='logits'):
    fid.inception_score(np.zeros((2, 32, 32, 3), np.uint8))
