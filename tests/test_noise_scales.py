"""Tests for NCSNv2 Techniques 1, 2 and 4 (ncsn_rin/noise_scales.py).

Expected values come from independent derivations in this file (pdist, scipy.stats.norm, the
variance recursion, a simulation) and from the official NCSNv2 configs (ermongroup/ncsnv2
configs/*.yml: sigma_begin, num_classes = L, step_lr = ε, n_steps_each = T, sigma_end = 0.01).
"""

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

SIGMA_MIN = 0.01
# name: (σ_1, L, ε, T, D at the paper's resolution).
OFFICIAL = {
    'cifar10': (50.0, 232, 6.2e-6, 5, 32 * 32 * 3),
    'celeba64': (90.0, 500, 3.3e-6, 5, 64 * 64 * 3),
    'church96': (140.0, 788, 4.9e-6, 4, 96 * 96 * 3),
    'bedroom128': (190.0, 1086, 1.8e-6, 3, 128 * 128 * 3),
    'ffhq256': (348.0, 2311, 9e-7, 3, 256 * 256 * 3),
}


def paper_overlap(gamma, dim):
  """Technique 2's C(γ, D) written out from the paper with scipy."""
  centre = np.sqrt(2.0 * dim) * (gamma - 1.0)
  return norm.cdf(centre + 3.0 * gamma) - norm.cdf(centre - 3.0 * gamma)


def ratio_of(sigma_max, num_scales):
  return (sigma_max / SIGMA_MIN) ** (1.0 / (np.asarray(num_scales) - 1.0))


def brute_force_num_scales(sigma_max, dim, target):
  """The smallest L in [2, 10^4) with C(γ_L, D) >= target, by trying every L."""
  levels = np.arange(2, 10_000)
  return int(levels[np.argmax(paper_overlap(ratio_of(sigma_max, levels), dim) >= target)])


def recursion_ratio(step_lr, n_steps, gamma):
  """s_T²/σ_i² by running v <- a²v + 2α from v = γ²σ_i² (σ_i = 0.3), vectorised over step_lr."""
  sigma_i = 0.3
  alpha = np.asarray(step_lr) * sigma_i ** 2 / SIGMA_MIN ** 2
  a = 1.0 - alpha / sigma_i ** 2
  v = np.full_like(alpha, (gamma * sigma_i) ** 2)
  for _ in range(n_steps):
    v = a * a * v + 2.0 * alpha
  return v / sigma_i ** 2


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
  x = rng.normal(size=(333, 3, 7)).astype(np.float32) * 3.0 + 100.0  # Offset: tests centring.
  want = pdist(x.reshape(len(x), -1).astype(np.float64)).max()
  mesh8 = Mesh(np.array(jax.devices()), ('data',))
  mesh1 = Mesh(np.array(jax.devices()[:1]), ('data',))
  for got in [ns.max_pairwise_distance(x, block_size=64, mesh=mesh8),
              ns.max_pairwise_distance(x, block_size=100, mesh=mesh1),
              ns.max_pairwise_distance(jnp.asarray(x), block_size=1000)]:
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_max_pairwise_distance_stream_with_uneven_last_batch(digits):
  batches = (digits[i:i + 250] for i in range(0, len(digits), 250))  # Last batch: 47 rows.
  got = ns.max_pairwise_distance(batches, block_size=128)
  np.testing.assert_allclose(got, pdist(digits).max(), rtol=1e-12)


def test_max_pairwise_distance_finds_pair_across_batches_and_blocks():
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(130, 5))
  x[3], x[128] = 10.0, -10.0  # The farthest pair straddles the first and last batches/blocks.
  got = ns.max_pairwise_distance([x[:40], x[40:100], x[100:]], block_size=16)
  np.testing.assert_allclose(got, pdist(x).max(), rtol=1e-12)
  assert got == pytest.approx(np.sqrt(5) * 20.0)


def test_max_pairwise_distance_of_identical_examples_is_zero():
  assert ns.max_pairwise_distance(np.ones((3, 4))) == 0.0  # 3 rows, 5 padding rows (8 devices).


# ---------------------------------------------------------------- Technique 2


@pytest.mark.parametrize('gamma,dim', [(1.04, 3072), (1.02, 12288), (1.5, 10), (1.0, 100)])
def test_overlap_is_the_papers_formula(gamma, dim):
  np.testing.assert_allclose(ns.overlap(gamma, dim), paper_overlap(gamma, dim), rtol=1e-12)
  np.testing.assert_allclose(ns.overlap(1.0, dim), norm.cdf(3) - norm.cdf(-3), rtol=1e-12)


@pytest.mark.parametrize('name', OFFICIAL)
def test_official_num_scales_are_the_smallest_for_their_overlap(name):
  """Every official L has C ≈ 0.567 and is the smallest L reaching its own C."""
  sigma_max, num_scales, _, _, dim = OFFICIAL[name]
  achieved = paper_overlap(ratio_of(sigma_max, num_scales), dim)
  assert 0.566 < achieved < 0.5671
  assert paper_overlap(ratio_of(sigma_max, num_scales - 1), dim) < achieved
  got, gamma = ns.num_noise_scales(sigma_max, SIGMA_MIN, dim, achieved - 1e-12)
  assert got == num_scales and gamma == pytest.approx(ratio_of(sigma_max, num_scales), rel=1e-14)


@pytest.mark.parametrize('target', [0.3, 0.5, 0.9])
@pytest.mark.parametrize('name', ['cifar10', 'celeba64', 'ffhq256'])
def test_num_noise_scales_is_the_brute_force_smallest(name, target):
  sigma_max, _, _, _, dim = OFFICIAL[name]
  got, gamma = ns.num_noise_scales(sigma_max, SIGMA_MIN, dim, target)
  assert got == brute_force_num_scales(sigma_max, dim, target)
  assert gamma == pytest.approx(ratio_of(sigma_max, got), rel=1e-14)
  if name == 'cifar10' and target == 0.5:
    assert got == 220  # Smaller than the official 232: the paper rounded "C ≈ 0.5" up.


def test_num_noise_scales_two_levels_when_the_ends_already_overlap():
  assert ns.num_noise_scales(1.05, 1.0, 100) == (2, pytest.approx(1.05))


def test_geometric_sigmas():
  sigmas = np.asarray(ns.geometric_sigmas(50.0, 0.01, 232))
  assert sigmas.shape == (232,) and sigmas.dtype == np.float32
  assert sigmas[0] == np.float32(50.0) and sigmas[-1] == np.float32(0.01)
  np.testing.assert_allclose(sigmas[:-1] / sigmas[1:], 5000.0 ** (1 / 231), rtol=1e-5)


# ---------------------------------------------------------------- Technique 4


def test_variance_ratio_is_the_recursion():
  step_lrs = np.array([1e-6, 3e-5, 1.5e-4])  # a = 0.99, 0.7, -0.5.
  np.testing.assert_allclose(ns.langevin_variance_ratio(step_lrs, 7, 1.3, SIGMA_MIN),
                             recursion_ratio(step_lrs, 7, 1.3), rtol=1e-12)


def _gaussian_score(x, sigma):
  return -x / sigma[:, None] ** 2  # Exact score of N(0, sigma^2 I).


@jax.jit
def _simulated_ratio(key, sigma_i, alpha, gamma):
  """s_T²/σ_i² over 20000 x 64 chains started from N(0, γ²σ_i² I)."""
  key0, key1 = jax.random.split(key)
  x0 = gamma * sigma_i * jax.random.normal(key0, (20000, 64))
  x = langevin.langevin(_gaussian_score, x0, sigma_i, key1, n_steps=5, step_size=alpha)
  return jnp.mean(x ** 2) / sigma_i ** 2


@pytest.mark.parametrize('step_lr,sigma_i', [(2e-5, 0.01), (6.2e-6, 0.3), (1.5e-4, 2.0)])
def test_proposition3_against_simulation(step_lr, sigma_i):
  gamma = 1.5
  alpha = step_lr * sigma_i ** 2 / SIGMA_MIN ** 2
  simulated = float(_simulated_ratio(jax.random.PRNGKey(0), sigma_i, alpha, gamma))
  predicted = float(ns.langevin_variance_ratio(step_lr, 5, gamma, SIGMA_MIN))
  assert simulated == pytest.approx(predicted, rel=0.01)


@pytest.mark.parametrize('name', ['cifar10', 'celeba64', 'bedroom128', 'ffhq256'])
def test_choose_step_lr_reproduces_official_values(name):
  # (church96's ε = 4.9e-6 with T = 4 does not follow Technique 4: its ratio minimum is at 2.3e-6.)
  sigma_max, num_scales, official, n_steps, _ = OFFICIAL[name]
  gamma = ratio_of(sigma_max, num_scales)
  eps = ns.choose_step_lr(n_steps, gamma, SIGMA_MIN)
  assert eps == pytest.approx(official, rel=0.03)
  grid = np.geomspace(eps / 1.1, eps * 1.1, 20001)  # Independent: the recursion's argmin.
  assert eps == pytest.approx(grid[np.argmin(recursion_ratio(grid, n_steps, gamma))], rel=1e-4)


def test_derive_noise_config_and_snippet():
  derived = ns.derive_noise_config(50.0, 3072, SIGMA_MIN, 5)
  assert set(derived) == {'sigma_max', 'sigma_min', 'num_scales', 'gamma', 'overlap_achieved',
                          'step_lr', 'n_steps_each', 'ratio_achieved'}
  num_scales = brute_force_num_scales(50.0, 3072, 0.5)
  gamma = ratio_of(50.0, num_scales)
  assert derived['num_scales'] == num_scales
  assert derived['overlap_achieved'] == pytest.approx(paper_overlap(gamma, 3072), rel=1e-12)
  assert derived['step_lr'] == pytest.approx(ns.choose_step_lr(5, gamma, SIGMA_MIN))
  assert derived['ratio_achieved'] == pytest.approx(
      recursion_ratio(derived['step_lr'], 5, gamma), rel=1e-12)
  snippet = ns.format_config_snippet(derived, 'config.ncsn')
  config = types.SimpleNamespace(ncsn=types.SimpleNamespace())
  exec(snippet, {'config': config})  # pylint: disable=exec-used
  assert config.ncsn.sigma_max == 50.0 and config.ncsn.num_scales == num_scales
  assert config.ncsn.n_steps_each == 5 and config.ncsn.sigma_min == SIGMA_MIN
  assert config.ncsn.step_lr == pytest.approx(derived['step_lr'], rel=1e-2)
