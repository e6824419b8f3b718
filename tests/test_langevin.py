"""Tests for ncsn_rin/langevin.py against exact scores: a Gaussian and a two-mode mixture."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncsn_rin import langevin
from ncsn_rin import noise_scales

# Gaussian data N(MU, S² I) in 2-D.
MU, S = np.array([1.0, -2.0], np.float32), 0.5
# Two-mode mixture 0.2 N(-5·1, I) + 0.8 N(5·1, I) in 2-D (Song & Ermon 2019, Fig. 3).
MEANS = jnp.array([[-5.0, -5.0], [5.0, 5.0]])
LOG_WEIGHTS = jnp.log(jnp.array([0.2, 0.8]))


def gaussian_score(x, sigma):
  """Exact score of the σ-perturbed data N(MU, (S² + σ²) I): x [B, 2], σ [B] -> [B, 2]."""
  return -(x - MU) / (S ** 2 + sigma[:, None] ** 2)


def mixture_score(x, sigma):
  """Exact score of the σ-perturbed mixture Σ_k π_k N(μ_k, (1 + σ²) I): x [B, 2], σ [B] -> [B, 2].

  Σ_k r_k(x) (μ_k − x)/(1 + σ²) with responsibilities r = softmax(log π_k − |x − μ_k|²/(2(1 + σ²))).
  """
  var = 1.0 + sigma[:, None] ** 2
  diff = MEANS[None] - x[:, None]  # [B, 2 components, 2 dims].
  logits = LOG_WEIGHTS[None] - jnp.sum(diff ** 2, axis=-1) / (2.0 * var)
  resp = jax.nn.softmax(logits, axis=-1)
  return jnp.sum(resp[..., None] * diff, axis=1) / var


def predicted_moments(mean, var, sigmas, n_steps_each, step_lr, denoise):
  """Exact per-dimension mean and variance of annealed Langevin on Gaussian data.

  With the score −(x − μ)/v_i, v_i = S² + σ_i², a step is the affine map x <- a x + (1 − a)μ +
  √(2α) z with a = 1 − α/v_i, so mean <- a·mean + (1 − a)μ and var <- a²·var + 2α, whatever the
  law of the start. α_i = ε σ_i²/σ_L². Denoising x + σ_L² s(x) = μ + c(x − μ), c = S²/v_L.
  """
  for sigma in sigmas:
    alpha = step_lr * (sigma / sigmas[-1]) ** 2
    a = 1.0 - alpha / (S ** 2 + sigma ** 2)
    for _ in range(n_steps_each):
      mean, var = a * mean + (1.0 - a) * MU, a * a * var + 2.0 * alpha
  if denoise:
    c = S ** 2 / (S ** 2 + sigmas[-1] ** 2)
    mean, var = MU + c * (mean - MU), c * c * var
  return mean, var


@pytest.mark.parametrize('denoise', [True, False])
def test_annealed_langevin_moments_on_gaussian_data(denoise):
  sigmas = np.array([2.0, 1.0, 0.5, 0.25])
  x0 = langevin.uniform_init(jax.random.PRNGKey(0), (40000, 2), 4.0, 6.0)  # Mean 5, var 1/3.
  x = np.asarray(langevin.annealed_langevin(gaussian_score, x0, sigmas, jax.random.PRNGKey(1),
                                            n_steps_each=3, step_lr=0.01, denoise=denoise))
  mean, var = predicted_moments(5.0, 1.0 / 3.0, sigmas, 3, 0.01, denoise)
  np.testing.assert_allclose(x.mean(axis=0), mean, atol=4 * np.sqrt(var / len(x)))
  np.testing.assert_allclose(x.var(axis=0), [var, var], rtol=0.03)


def test_annealed_langevin_reaches_the_discrete_stationary_law():
  """Long chains at σ_L: Var = v·2/(2 − ε/v) (the Prop. 3 limit r), then denoised by S²/v."""
  sigmas, step_lr = np.array([0.2, 0.1]), 0.05
  x0 = langevin.uniform_init(jax.random.PRNGKey(2), (40000, 2))
  x = np.asarray(langevin.annealed_langevin(gaussian_score, x0, sigmas, jax.random.PRNGKey(3),
                                            n_steps_each=300, step_lr=step_lr))
  v = S ** 2 + 0.1 ** 2
  want = v * 2.0 / (2.0 - step_lr / v) * (S ** 2 / v) ** 2  # 10% above S² = 0.25.
  np.testing.assert_allclose(x.var(axis=0), [want, want], rtol=0.03)
  np.testing.assert_allclose(x.mean(axis=0), MU, atol=0.02)


def test_annealed_langevin_inside_an_outer_jit_is_the_same_program():
  sigmas = noise_scales.geometric_sigmas(1.0, 0.1, 3)
  x0, key = langevin.uniform_init(jax.random.PRNGKey(4), (8, 2)), jax.random.PRNGKey(5)
  run = functools.partial(langevin.annealed_langevin, n_steps_each=2, step_lr=0.01)

  @jax.jit
  def outer(x0, key):
    score = lambda x, sigma: gaussian_score(x, sigma)  # A closure, as sampling.py builds it.
    return run(score, x0, sigmas, key)

  np.testing.assert_allclose(outer(x0, key), run(gaussian_score, x0, sigmas, key), rtol=1e-6)


def weight_of_first_mode(x):
  return float(np.mean(np.asarray(x).sum(axis=1) < 0.0))


@pytest.fixture(scope='module')
def uniform_start():
  return langevin.uniform_init(jax.random.PRNGKey(0), (10000, 2), -8.0, 8.0)


@pytest.mark.slow
def test_annealed_langevin_recovers_mode_weights(uniform_start):
  # Song & Ermon (2019) Fig. 3 setting: σ geometric 20 -> 1, L = 10, T = 100, ε = 0.1.
  sigmas = noise_scales.geometric_sigmas(20.0, 1.0, 10)
  x = langevin.annealed_langevin(mixture_score, uniform_start, sigmas, jax.random.PRNGKey(1),
                                 n_steps_each=100, step_lr=0.1)
  assert x.shape == (10000, 2)
  assert weight_of_first_mode(x) == pytest.approx(0.2, abs=0.05)


def test_plain_langevin_gets_mode_weights_wrong(uniform_start):
  x = langevin.langevin(mixture_score, uniform_start, 0.1, jax.random.PRNGKey(2),
                        n_steps=300, step_size=0.1)
  weight = weight_of_first_mode(x)
  # Samples stay in the mode nearest to where they start: ~ half/half, far from 0.2.
  assert weight == pytest.approx(0.5, abs=0.1)
  assert np.asarray(x).std(axis=0) == pytest.approx([5.0, 5.0], rel=0.2)  # Both modes populated.
