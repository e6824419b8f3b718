"""Tests for NCSNv2 Techniques 1, 2 and 4 (ncsn_rin/noise_scales.py)."""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from scipy.spatial.distance import pdist
from scipy.stats import norm
from sklearn.datasets import load_digits

from ncsn_rin import langevin
from ncsn_rin import noise_scales as ns

CIFAR10 = dict(sigma_max=50.0, sigma_min=0.01, dim=32 * 32 * 3)
CELEBA64 = dict(sigma_max=90.0, sigma_min=0.01, dim=64 * 64 * 3)


@pytest.fixture(scope='module')
def digits():
  return load_digits().data  # [1797, 64] float64 integers in [0, 16].


# ---------------------------------------------------------------- Technique 1


def test_max_pairwise_distance_digits_default_mesh(digits):
  assert len(jax.devices()) == 8  # conftest: rows are sharded over 8 CPU devices.
  got = ns.max_pairwise_distance(digits, block_size=512)
  np.testing.assert_allclose(got, pdist(digits).max(), rtol=1e-12)


def test_max_pairwise_distance_random_sharded_and_single_device():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(333, 3, 7)).astype(np.float32) * 3.0 + 100.0  # offset: tests centring.
  want = pdist(x.reshape(len(x), -1).astype(np.float64)).max()
  mesh8 = Mesh(np.array(jax.devices()), ('data',))
  mesh1 = Mesh(np.array(jax.devices()[:1]), ('data',))
  for got in [ns.max_pairwise_distance(x, block_size=64, mesh=mesh8),
              ns.max_pairwise_distance(x, block_size=100, mesh=mesh1),
              ns.max_pairwise_distance(jnp.asarray(x), block_size=64)]:
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_max_pairwise_distance_stream_with_uneven_last_batch(digits):
  batches = (digits[i:i + 250] for i in range(0, len(digits), 250))  # last batch: 47 rows.
  got = ns.max_pairwise_distance(batches, block_size=128)
  np.testing.assert_allclose(got, pdist(digits).max(), rtol=1e-12)


def test_max_pairwise_distance_stream_finds_cross_batch_pair():
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(130, 5))
  x[3] = 10.0  # The farthest pair straddles the first and last batches.
  x[128] = -10.0
  got = ns.max_pairwise_distance([x[:40], x[40:100], x[100:]], block_size=16)
  np.testing.assert_allclose(got, pdist(x).max(), rtol=1e-12)


def test_max_pairwise_distance_needs_two_examples():
  with pytest.raises(ValueError, match='at least 2'):
    ns.max_pairwise_distance(np.zeros((1, 4)))


# ---------------------------------------------------------------- Technique 2


def test_overlap_matches_scipy_formula():
  for gamma, dim in [(1.04, 3072), (1.02, 12288), (1.5, 10)]:
    c = math.sqrt(2 * dim) * (gamma - 1)
    want = norm.cdf(c + 3 * gamma) - norm.cdf(c - 3 * gamma)
    np.testing.assert_allclose(float(ns.overlap(gamma, dim)), want, atol=5e-6)


def test_num_noise_scales_cifar10_and_celeba():
  # Smallest L with overlap >= 0.5 is 220 (CIFAR-10) and 473 (CelebA-64); the
  # official 232 and 500 correspond to overlap 0.5670 / 0.5669, i.e. a more
  # conservative rounding of "C ~ 0.5". Tolerance: within 6% below official.
  num_scales, gamma = ns.num_noise_scales(**CIFAR10, target_overlap=0.5)
  assert num_scales == 220 and 232 - 15 <= num_scales <= 232
  assert gamma == pytest.approx(5000.0 ** (1 / 219))
  assert ns.num_noise_scales(**CELEBA64)[0] == 473
  assert ns.num_noise_scales(**CIFAR10, target_overlap=0.5669)[0] == 232
  assert ns.num_noise_scales(**CELEBA64, target_overlap=0.5669)[0] == 500


@pytest.mark.parametrize('target', [0.3, 0.5, 0.9])
def test_num_noise_scales_is_smallest(target):
  num_scales, gamma = ns.num_noise_scales(20.0, 0.05, 784, target)
  ratio = 20.0 / 0.05
  assert float(ns.overlap(gamma, 784)) >= target
  assert float(ns.overlap(ratio ** (1 / (num_scales - 2)), 784)) < target


def test_geometric_sigmas():
  sigmas = np.asarray(ns.geometric_sigmas(50.0, 0.01, 232))
  assert sigmas.shape == (232,)
  assert sigmas[0] == np.float32(50.0) and sigmas[-1] == np.float32(0.01)
  np.testing.assert_allclose(sigmas[:-1] / sigmas[1:], 5000.0 ** (1 / 231), rtol=1e-5)


# ---------------------------------------------------------------- Technique 4


def test_variance_ratio_matches_recursion():
  gamma, sigma_min, sigma_i, n_steps = 1.3, 0.01, 0.7, 7
  for step_lr in [1e-6, 3e-5, 1.5e-4]:  # a = 0.99, 0.7, -0.5.
    alpha = step_lr * sigma_i ** 2 / sigma_min ** 2
    a = 1 - alpha / sigma_i ** 2
    v = gamma ** 2 * sigma_i ** 2
    for _ in range(n_steps):
      v = a * a * v + 2 * alpha
    got = float(ns.langevin_variance_ratio(step_lr, n_steps, gamma, sigma_min))
    assert got == pytest.approx(v / sigma_i ** 2, rel=1e-5)


def _gaussian_score(x, sigma):
  return -x / sigma[:, None] ** 2  # Exact score of N(0, sigma^2 I).


@jax.jit
def _simulated_ratio(key, sigma_i, alpha, gamma):
  """s_T^2 / sigma_i^2 over 20000 x 64 chains started from N(0, gamma^2 sigma_i^2 I)."""
  key0, key1 = jax.random.split(key)
  x0 = gamma * sigma_i * jax.random.normal(key0, (20000, 64))
  x = langevin.langevin(_gaussian_score, x0, sigma_i, key1, n_steps=5, step_size=alpha)
  return jnp.mean(x ** 2) / sigma_i ** 2


@pytest.mark.parametrize('step_lr,sigma_i', [(2e-5, 0.01), (6.2e-6, 0.3), (1.5e-4, 2.0)])
def test_proposition3_against_simulation(step_lr, sigma_i):
  gamma, sigma_min = 1.5, 0.01
  alpha = step_lr * sigma_i ** 2 / sigma_min ** 2
  simulated = float(_simulated_ratio(jax.random.PRNGKey(0), sigma_i, alpha, gamma))
  predicted = float(ns.langevin_variance_ratio(step_lr, 5, gamma, sigma_min))
  assert simulated == pytest.approx(predicted, rel=0.01)


def test_choose_step_lr_reproduces_official_values():
  eps = ns.choose_step_lr(5, 5000.0 ** (1 / 231), 0.01)  # CIFAR-10, L=232.
  assert eps == pytest.approx(6.2e-6, rel=0.05)
  celeba_eps = ns.choose_step_lr(5, 9000.0 ** (1 / 499), 0.01)  # CelebA, L=500.
  assert celeba_eps == pytest.approx(3.3e-6, rel=0.05)
  gamma = 5000.0 ** (1 / 231)
  best = float(ns.langevin_variance_ratio(eps, 5, gamma, 0.01))
  for factor in [0.5, 0.9, 1.1, 2.0]:
    assert float(ns.langevin_variance_ratio(eps * factor, 5, gamma, 0.01)) >= best - 1e-6


def test_derive_noise_config_and_snippet():
  derived = ns.derive_noise_config(50.0, 3072, 0.01, 5)
  assert set(derived) == {'sigma_max', 'sigma_min', 'num_scales', 'gamma', 'overlap_achieved',
                          'step_lr', 'n_steps_each', 'ratio_achieved'}
  assert derived['num_scales'] == 220 and derived['overlap_achieved'] >= 0.5
  assert derived['step_lr'] == pytest.approx(6.47e-6, rel=0.01)
  assert 1.0 < derived['ratio_achieved'] < 1.06
  snippet = ns.format_config_snippet(derived)
  config = types.SimpleNamespace(ncsn=types.SimpleNamespace())
  exec(snippet, {'config': config})  # pylint: disable=exec-used
  assert config.ncsn.sigma_max == 50.0 and config.ncsn.num_scales == 220
  assert config.ncsn.step_lr == pytest.approx(derived['step_lr'], rel=1e-2)
  assert 'config.ncsn.sigma_max = 50.0\n' in snippet


# ---------------------------------------------------------------- validation

_hparams = ns.validate_ncsn_hyperparameters


@pytest.mark.parametrize('call,match', [
    (lambda: _hparams(0.01, 50.0, 232, 5, 6.2e-6), 'sigma_min=50.0 must be < sigma_max'),
    (lambda: _hparams(50.0, 50.0, 232, 5, 6.2e-6), 'must be < sigma_max'),
    (lambda: _hparams(50.0, 0.0, 232, 5, 6.2e-6), r'sigma_min=0.0 .*\(0, inf\)'),
    (lambda: _hparams(-1.0, 0.01, 232, 5, 6.2e-6), r'sigma_max=-1.0'),
    (lambda: _hparams(50.0, 0.01, 1, 5, 6.2e-6), r'num_scales=1 .*\[2, inf\)'),
    (lambda: _hparams(50.0, 0.01, 232, 0, 6.2e-6), r'n_steps_each=0 .*\[1, inf\)'),
    (lambda: _hparams(50.0, 0.01, 232, 5, 0.0), r'step_lr=0.0 .*Fix'),
    (lambda: _hparams(50.0, 0.01, 232, 5, -1e-6), r'step_lr=-1e-06'),
    (lambda: _hparams(50.0, 0.01, 232, 5, 3e-4), r'too large'),
    (lambda: ns.num_noise_scales(50.0, 0.01, 3072, target_overlap=0.0),
     r'target_overlap=0.0 .*\(0, 1\)'),
    (lambda: ns.num_noise_scales(50.0, 0.01, 3072, target_overlap=1.0), r'target_overlap=1.0'),
    (lambda: ns.num_noise_scales(50.0, 0.01, 0), r'dim=0 .*\[1, inf\)'),
    (lambda: ns.num_noise_scales(0.01, 50.0, 3072), 'must be < sigma_max'),
    (lambda: ns.geometric_sigmas(50.0, 0.01, 1), 'num_scales=1'),
    (lambda: ns.choose_step_lr(0, 1.04, 0.01), 'n_steps_each=0'),
    (lambda: ns.choose_step_lr(5, 1.04, -0.01), 'sigma_min=-0.01'),
    (lambda: ns.choose_step_lr(5, 1.0, 0.01), r'gamma=1.0 .*\(1, inf\)'),
    (lambda: ns.derive_noise_config(50.0, 3072, 0.01, 5, target_overlap=1.5), 'target_overlap=1.5'),
])
def test_validation_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()
