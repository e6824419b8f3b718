"""Tests for the NCSNv2 denoising score matching loss (ncsn_rin/score_matching.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncsn_rin import score_matching as sm


def test_dsm_loss_hand_computed():
  x = jnp.array([[1.0, 2.0], [0.0, -1.0]])
  sigmas = jnp.array([2.0, 0.5])
  labels = jnp.array([0, 1])
  noise = jnp.array([[0.5, -1.0], [2.0, 0.0]])
  score_fn = lambda x_noisy, sigma: -x_noisy  # s(x~, sigma) = -x~.
  # Example 0: sigma=2, x~ = (2, 0), s = (-2, 0), target = -z/sigma = (-0.25, 0.5):
  #   1/2 * 4 * ((-1.75)^2 + (-0.5)^2) = 2 * 3.3125 = 6.625.
  # Example 1: sigma=0.5, x~ = (1, -1), s = (-1, 1), target = (-4, 0):
  #   1/2 * 0.25 * (3^2 + 1^2) = 1.25.
  loss, aux = jax.jit(sm.dsm_loss_given_noise, static_argnums=0)(score_fn, x, sigmas, labels, noise)
  np.testing.assert_allclose(aux['per_example_loss'], [6.625, 1.25], rtol=1e-6)
  np.testing.assert_allclose(aux['sigmas'], [2.0, 0.5])
  assert float(loss) == pytest.approx((6.625 + 1.25) / 2)


def test_dsm_loss_with_key_uses_sample_dsm_noise():
  x = np.random.default_rng(0).normal(size=(64, 3, 4, 4)).astype(np.float32)
  sigmas = np.geomspace(10.0, 0.1, 7).astype(np.float32)
  score_fn = lambda x_noisy, sigma: -x_noisy / (1.0 + sigma[:, None, None, None] ** 2)
  key = jax.random.PRNGKey(1)

  @jax.jit
  def loss_and_reference(key):
    loss, aux = sm.dsm_loss(score_fn, x, sigmas, key)
    labels, noise = sm.sample_dsm_noise(key, x, 7)
    return loss, aux, sm.dsm_loss_given_noise(score_fn, x, sigmas, labels, noise)[0]

  loss, aux, want = loss_and_reference(key)
  assert float(loss) == pytest.approx(float(want), rel=1e-5)
  assert aux['labels'].shape == (64,) and int(aux['labels'].min()) >= 0
  assert int(aux['labels'].max()) <= 6 and len(np.unique(aux['labels'])) > 3


def test_dsm_gradient_vanishes_at_exact_score():
  """At the exact perturbed score of Gaussian data the expected gradient is 0."""
  dim, n = 4, 20000
  mean, std = np.array([1.0, -2.0, 0.5, 3.0], np.float32), 0.7
  sigmas = np.array([2.0, 0.5, 0.1], np.float32)
  rng = np.random.default_rng(0)
  x = (mean + std * rng.normal(size=(n, dim))).astype(np.float32)
  labels = rng.integers(0, 3, size=n).astype(np.int32)  # As sample_dsm_noise: uniform levels.
  noise = rng.normal(size=(n, dim)).astype(np.float32)

  def score_fn(params, x_noisy, sigma):
    # Exact score of N(mean, (std^2 + sigma^2) I) when params = (mean, 1).
    m, c = params
    return -c * (x_noisy - m) / (std ** 2 + sigma[:, None] ** 2)

  def per_example_loss(params, xi, li, zi):
    score = lambda xn, s: score_fn(params, xn, s)
    return sm.dsm_loss_given_noise(score, xi[None], sigmas, li[None], zi[None])[0]

  @jax.jit
  def grads(params):
    full = jax.grad(lambda p: sm.dsm_loss_given_noise(
        lambda xn, s: score_fn(p, xn, s), x, sigmas, labels, noise)[0])(params)
    per = jax.vmap(jax.grad(per_example_loss), in_axes=(None, 0, 0, 0))(params, x, labels, noise)
    return full, per

  def grad_stats(params):
    full, per = grads(params)
    full = np.concatenate([np.ravel(full[0]), np.ravel(full[1])])
    per = np.concatenate([per[0], per[1][:, None]], axis=1)
    np.testing.assert_allclose(full, per.mean(axis=0), rtol=1e-3, atol=1e-6)
    return full, per.std(axis=0) / np.sqrt(n)

  grad, stderr = grad_stats((mean, np.float32(1.0)))
  assert np.all(np.abs(grad) < 4.5 * stderr), (grad, stderr)
  wrong_grad, wrong_stderr = grad_stats((mean + 0.3, np.float32(1.3)))
  assert np.all(np.abs(wrong_grad) > 10 * wrong_stderr), (wrong_grad, wrong_stderr)
