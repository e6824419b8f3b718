"""Tests for the NCSNv2 denoising score matching loss (ncsn_rin/score_matching.py).

Gaussian data x ~ N(0, S² I_D) has the exact perturbed score −x̃/(S² + σ²), at which the loss per
level is ½ D S² σ^(p−2)/(S² + σ²) (derived in the module docstring) and its gradient vanishes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncsn_rin import score_matching as sm

S, DIM, NUM = 0.7, 6, 30000
SIGMAS = np.array([3.0, 1.0, 0.3, 0.1], np.float32)


def optimal_score(x_noisy, sigma):
  """Score of N(0, (S² + σ²) I): x̃ [B, DIM], σ [B] -> [B, DIM]."""
  return -x_noisy / (S ** 2 + sigma[:, None] ** 2)


def analytic_loss(sigma, anneal_power=2.0):
  return 0.5 * DIM * S ** 2 * sigma ** (anneal_power - 2.0) / (S ** 2 + sigma ** 2)


@pytest.fixture(scope='module')
def data():
  rng = np.random.default_rng(0)
  x = (S * rng.normal(size=(NUM, DIM))).astype(np.float32)
  labels = (np.arange(NUM) % len(SIGMAS)).astype(np.int32)  # Every level equally often.
  noise = rng.normal(size=(NUM, DIM)).astype(np.float32)
  return x, labels, noise


def test_dsm_loss_hand_computed():
  x = jnp.array([[1.0, 2.0], [0.0, -1.0]])
  score_fn = lambda x_noisy, sigma: -x_noisy  # s(x̃, σ) = −x̃.
  # Example 0: σ = 2, z = (0.5, −1): x̃ = (2, 0), s = (−2, 0), target −z/σ = (−0.25, 0.5):
  #   ½ · 4 · ((−1.75)² + (−0.5)²) = 6.625.
  # Example 1: σ = 0.5, z = (2, 0): x̃ = (1, −1), s = (−1, 1), target = (−4, 0):
  #   ½ · 0.25 · 10 = 1.25.
  loss, aux = jax.jit(sm.dsm_loss_given_noise, static_argnums=0)(
      score_fn, x, jnp.array([2.0, 0.5]), jnp.array([0, 1]), jnp.array([[0.5, -1.0], [2.0, 0.0]]))
  np.testing.assert_allclose(aux['per_example_loss'], [6.625, 1.25], rtol=1e-6)
  np.testing.assert_allclose(aux['sigmas'], [2.0, 0.5])
  assert float(loss) == pytest.approx((6.625 + 1.25) / 2)


@pytest.mark.parametrize('anneal_power', [2.0, 0.0])
def test_loss_at_the_optimal_score_is_analytic(data, anneal_power):
  x, labels, noise = data
  _, aux = jax.jit(sm.dsm_loss_given_noise, static_argnums=0)(optimal_score, x, SIGMAS, labels,
                                                             noise, anneal_power)
  per_level = [float(np.mean(aux['per_example_loss'][labels == i])) for i in range(len(SIGMAS))]
  np.testing.assert_allclose(per_level, analytic_loss(SIGMAS, anneal_power), rtol=0.03)


def test_dsm_loss_draws_uniform_levels_and_standard_noise(data):
  x = data[0]
  loss, aux = jax.jit(sm.dsm_loss, static_argnums=0)(optimal_score, x, SIGMAS,
                                                     jax.random.PRNGKey(1))
  counts = np.bincount(np.asarray(aux['labels']), minlength=len(SIGMAS))
  assert np.all(np.abs(counts - NUM / 4) < 5 * np.sqrt(NUM * 3 / 16))  # Binomial(N, 1/4).
  np.testing.assert_allclose(aux['sigmas'], SIGMAS[aux['labels']])
  assert float(loss) == pytest.approx(np.mean(analytic_loss(SIGMAS[aux['labels']])), rel=0.02)


def test_dsm_gradient_vanishes_only_at_the_optimal_score(data):
  """d loss / d(c, m) for s = −c(x̃ − m)/(S² + σ²): zero within noise at (1, 0), not elsewhere."""
  x, labels, noise = data

  def per_example_loss(params, xi, li, zi):
    c, m = params
    score = lambda x_noisy, sigma: c * optimal_score(x_noisy - m, sigma)
    return sm.dsm_loss_given_noise(score, xi[None], SIGMAS, li[None], zi[None])[0]

  @jax.jit
  def grad_mean_and_stderr(params):
    per = jax.vmap(jax.grad(per_example_loss), in_axes=(None, 0, 0, 0))(params, x, labels, noise)
    per = jnp.concatenate([per[0][:, None], per[1]], axis=1)  # [N, 1 + DIM]
    return per.mean(axis=0), per.std(axis=0) / np.sqrt(NUM)

  grad, stderr = grad_mean_and_stderr((1.0, jnp.zeros(DIM)))
  assert np.all(np.abs(grad) < 4.5 * stderr), (grad, stderr)
  grad, stderr = grad_mean_and_stderr((1.2, jnp.full(DIM, 0.2)))
  assert np.all(np.abs(grad) > 10 * stderr), (grad, stderr)
