"""Denoising score matching loss of NCSNv2 (Song & Ermon 2020).

For noise levels {sigma_i}_{i=1}^L the objective (Song & Ermon 2019, Eq. 6;
NCSNv2 Technique 3 conditions the network on sigma) is

  (1/L) sum_i lambda(sigma_i) E_{x, x~} [ 1/2 || s(x~, sigma_i) + (x~ - x)/sigma_i^2 ||^2 ]

with lambda(sigma) = sigma^2. Writing x~ = x + sigma z, the target is -z/sigma.
Matches the official `losses/dsm.py::anneal_dsm_score_estimation`
(anneal_power=2): one level per example drawn uniformly, per-example loss
1/2 * sum_pixels (s - target)^2 * sigma^2, mean over the batch.
"""

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def sample_dsm_noise(key: jax.Array, x: jax.Array,
                     num_levels: int) -> tuple[jax.Array, jax.Array]:
  """Draws the level index [B] (uniform over L levels) and z ~ N(0, I) [B, ...]."""
  label_key, noise_key = jax.random.split(key)
  labels = jax.random.randint(label_key, (x.shape[0],), 0, num_levels)
  # Drawn flat [B, prod(...)] and reshaped: same distribution, and far cheaper
  # for XLA:CPU to compile than a rank-4 random.normal.
  flat = jax.random.normal(noise_key, (x.shape[0], math.prod(x.shape[1:])), x.dtype)
  return labels, flat.reshape(x.shape)


def dsm_loss_given_noise(score_fn: ScoreFn, x: jax.Array, sigmas: jax.Array,
                         labels: jax.Array, noise: jax.Array,
                         anneal_power: float = 2.0) -> tuple[jax.Array, dict[str, Any]]:
  """Deterministic core of `dsm_loss` for given levels and standard-normal noise.

  Args:
    score_fn: (x_noisy [B, ...], sigma [B]) -> score [B, ...].
    x: clean data [B, ...].
    sigmas: [L] noise levels.
    labels: [B] int level indices into `sigmas`.
    noise: [B, ...] standard normal z.
    anneal_power: exponent of lambda(sigma) = sigma^power (2 in NCSNv2).

  Returns:
    (scalar loss, aux) with aux = {'per_example_loss' [B], 'labels' [B],
    'sigmas' [B]}.
  """
  batch = x.shape[0]
  used = jnp.asarray(sigmas, x.dtype)[labels]
  flat_x, flat_z = x.reshape(batch, -1), noise.reshape(batch, -1)
  perturbed = (flat_x + used[:, None] * flat_z).reshape(x.shape)
  target = -flat_z / used[:, None]
  scores = score_fn(perturbed, used).reshape(batch, -1)
  sq_err = jnp.sum((scores - target) ** 2, axis=-1)
  per_example = 0.5 * sq_err * used ** anneal_power
  aux = {'per_example_loss': per_example, 'labels': labels, 'sigmas': used}
  return jnp.mean(per_example), aux


def dsm_loss(score_fn: ScoreFn, x: jax.Array, sigmas: jax.Array, key: jax.Array,
             *, anneal_power: float = 2.0) -> tuple[jax.Array, dict[str, Any]]:
  """NCSNv2 annealed denoising score matching loss (pure, jittable).

  sigma_i is drawn uniformly from the L levels per example, x~ = x + sigma z,
  target -z/sigma, loss = mean_b 1/2 sigma_b^2 ||s(x~_b, sigma_b) - target_b||^2
  (sum over pixels).

  Args:
    score_fn: (x_noisy [B, ...], sigma [B]) -> score [B, ...].
    x: clean data [B, ...].
    sigmas: [L] noise levels.
    key: PRNG key; split by `sample_dsm_noise` into level and noise keys.
    anneal_power: exponent of lambda(sigma) = sigma^power.

  Returns:
    (scalar loss, aux) as in `dsm_loss_given_noise`.
  """
  labels, noise = sample_dsm_noise(key, x, jnp.shape(sigmas)[0])
  return dsm_loss_given_noise(score_fn, x, sigmas, labels, noise, anneal_power)
