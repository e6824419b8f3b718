"""Tests for ncsn_rin/langevin.py: annealed vs plain Langevin on the classic toy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncsn_rin import langevin
from ncsn_rin import noise_scales

MEANS = jnp.array([[-5.0, -5.0], [5.0, 5.0]])
LOG_WEIGHTS = jnp.log(jnp.array([0.2, 0.8]))
STATIC = ('score_fn', 'n_steps_each', 'denoise', 'keep_levels', 'clip')


def mixture_score(x, sigma):
  """Exact score of 0.2 N(mu1, I) + 0.8 N(mu2, I) perturbed by N(0, sigma^2 I).

  The perturbed density is 0.2 N(mu1, (1 + sigma^2) I) + 0.8 N(mu2, (1 + sigma^2) I);
  its score is sum_k pi_k(x) (mu_k - x) / v with softmax (logsumexp) weights pi.
  x: [B, 2], sigma: [B] -> [B, 2].
  """
  var = 1.0 + sigma[:, None] ** 2
  diff = MEANS[None] - x[:, None]  # [B, 2 components, 2 dims].
  logits = LOG_WEIGHTS[None] - jnp.sum(diff ** 2, axis=-1) / (2.0 * var)
  resp = jax.nn.softmax(logits, axis=-1)
  return jnp.sum(resp[..., None] * diff, axis=1) / var


def weight_of_first_mode(x):
  return float(np.mean(np.asarray(x).sum(axis=1) < 0.0))


@pytest.fixture(scope='module')
def uniform_start():
  return langevin.uniform_init(jax.random.PRNGKey(0), (10000, 2), -8.0, 8.0)


def test_annealed_langevin_recovers_mode_weights(uniform_start):
  # Song & Ermon (2019) Fig. 3 setting: sigma geometric 20 -> 1, L=10, T=100,
  # alpha_i = eps sigma_i^2 / sigma_L^2 with eps = 0.1.
  sigmas = noise_scales.geometric_sigmas(20.0, 1.0, 10)
  x, kept = langevin.annealed_langevin(mixture_score, uniform_start, sigmas,
                                       jax.random.PRNGKey(1), n_steps_each=100, step_lr=0.1)
  assert kept is None and x.shape == (10000, 2)
  assert weight_of_first_mode(x) == pytest.approx(0.2, abs=0.05)


def test_plain_langevin_gets_mode_weights_wrong(uniform_start):
  x = langevin.langevin(mixture_score, uniform_start, 0.1, jax.random.PRNGKey(2),
                        n_steps=300, step_size=0.1)
  weight = weight_of_first_mode(x)
  # Samples stay in the mode nearest to where they start: ~ half/half, far from 0.2.
  assert weight == pytest.approx(0.5, abs=0.1)
  assert abs(weight - 0.2) > 0.2
  assert np.asarray(x).std(axis=0) == pytest.approx([5.0, 5.0], rel=0.2)  # Both modes populated.


@jax.jit
def _reference_step(x, sigma, alpha, key):
  """x + alpha s(x, sigma) + sqrt(2 alpha) z with the split order of `annealed_langevin`."""
  key, sub = jax.random.split(key)
  z = jax.random.normal(sub, x.shape)
  return x + alpha * mixture_score(x, jnp.full((x.shape[0],), sigma)) + jnp.sqrt(2 * alpha) * z, key


def _reference_annealed(x, sigmas, key, n_steps_each, step_lr):
  """Python-loop transcription of the official anneal_Langevin_dynamics."""
  states = []
  for sigma in sigmas:
    alpha = step_lr * (sigma / sigmas[-1]) ** 2
    for _ in range(n_steps_each):
      x, key = _reference_step(x, np.float32(sigma), np.float32(alpha), key)
    states.append(np.asarray(x))
  return np.asarray(_reference_denoise(x, sigmas[-1])), states


@jax.jit
def _reference_denoise(x, sigma):
  return x + sigma ** 2 * mixture_score(x, jnp.full((x.shape[0],), sigma))


def test_annealed_langevin_matches_reference_loop_and_keeps_levels():
  sigmas = np.array([3.0, 1.0, 0.5, 0.2], np.float32)
  x0 = np.random.default_rng(3).uniform(size=(6, 2)).astype(np.float32)
  key = jax.random.PRNGKey(4)
  want, states = _reference_annealed(x0, sigmas, key, 3, 0.01)
  got, kept = langevin.annealed_langevin(mixture_score, x0, sigmas, key, n_steps_each=3,
                                         step_lr=0.01, keep_levels=(2, 0, -1))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert kept.shape == (3, 6, 2)
  for slot, level in enumerate((2, 0, 3)):
    np.testing.assert_allclose(kept[slot], states[level], rtol=1e-5, atol=1e-5)


def test_annealed_langevin_outer_jit_clip_no_denoise_and_bad_keep_levels():
  sigmas = jnp.array([1.0, 0.1])
  x0 = langevin.uniform_init(jax.random.PRNGKey(5), (4, 3))
  assert float(x0.min()) >= 0.0 and float(x0.max()) <= 1.0
  score = lambda x, sigma: jnp.full_like(x, 50.0)  # Pushes everything far above 1.
  sample = jax.jit(langevin.annealed_langevin, static_argnames=STATIC)
  x, kept = sample(score, x0, sigmas, jax.random.PRNGKey(6), n_steps_each=2, step_lr=0.01,
                   denoise=False, keep_levels=(1,), clip=True)
  assert float(x.max()) <= 1.0 and float(x.min()) >= 0.0
  assert float(kept.min()) == 1.0  # Clipping also applies to the kept states.
  np.testing.assert_array_equal(x, kept[0])  # Without denoising: final = last level's state.
  with pytest.raises(ValueError, match='out of range'):
    langevin.annealed_langevin(score, x0, sigmas, jax.random.PRNGKey(6), n_steps_each=2,
                               step_lr=0.01, keep_levels=(2,))
  with pytest.raises(ValueError, match='repeats'):
    langevin.annealed_langevin(score, x0, sigmas, jax.random.PRNGKey(6), n_steps_each=2,
                               step_lr=0.01, keep_levels=(1, -1))
