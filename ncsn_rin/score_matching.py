"""Denoising score matching loss of NCSNv2 (Song & Ermon 2020).

For noise levels {σ_i}_{i=1}^L the objective (Song & Ermon 2019, Eq. 6; NCSNv2 Technique 3
conditions the network on σ) is

  (1/L) Σ_i λ(σ_i) E_{x, x̃} [ ½ || s(x̃, σ_i) + (x̃ − x)/σ_i² ||² ],   λ(σ) = σ².

Writing x̃ = x + σz, the target is −z/σ. As in the official `losses/dsm.py::
anneal_dsm_score_estimation` (anneal_power = 2): one level per example, drawn uniformly; per-example
loss ½ σ² Σ_pixels (s − target)²; mean over the batch.

Its minimum, for Gaussian data x ~ N(0, s² I_D): the optimal score is the score of the perturbed
law N(0, (s² + σ²) I), s*(x̃) = −x̃/(s² + σ²). Then σ s* + z = (s² z − σ x)/(s² + σ²), whose
squared norm has mean D (s⁴ + σ² s²)/(s² + σ²)² = D s²/(s² + σ²), so the per-level loss is
½ D s²/(s² + σ²) (times σ^(p−2) for λ(σ) = σ^p), and its gradient in the score vanishes there.
"""

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def dsm_loss_given_noise(score_fn: ScoreFn, x: jax.Array, sigmas: jax.Array,
                         labels: jax.Array, noise: jax.Array,
                         anneal_power: float = 2.0) -> tuple[jax.Array, dict[str, Any]]:
  """The loss of `dsm_loss` for given levels labels [B] (indices into sigmas [L]) and standard
  normal noise z [B, ...] (deterministic). score_fn: (x̃ [B, ...], σ [B]) -> score [B, ...];
  x [B, ...] clean data; anneal_power: p of λ(σ) = σ^p (2 in NCSNv2). Returns (scalar loss, aux)
  with aux = {'per_example_loss' [B], 'labels' [B], 'sigmas' [B]}.
  """
  batch = x.shape[0]
  used = jnp.asarray(sigmas, x.dtype)[labels]  # [B]
  sigma_b = used.reshape((batch,) + (1,) * (x.ndim - 1))  # [B, 1, ...]
  scores = score_fn(x + sigma_b * noise, used)
  sq_err = jnp.sum(((scores + noise / sigma_b) ** 2).reshape(batch, -1), axis=-1)  # [B]
  per_example = 0.5 * sq_err * used ** anneal_power
  aux = {'per_example_loss': per_example, 'labels': labels, 'sigmas': used}
  return jnp.mean(per_example), aux


def dsm_loss(score_fn: ScoreFn, x: jax.Array, sigmas: jax.Array, key: jax.Array,
             *, anneal_power: float = 2.0) -> tuple[jax.Array, dict[str, Any]]:
  """NCSNv2 annealed denoising score matching loss (pure, jittable).

  σ_b drawn uniformly from the L levels per example, x̃ = x + σ_b z, target −z/σ_b,
  loss = mean_b ½ σ_b^p ||s(x̃_b, σ_b) − target_b||² (sum over pixels). x [B, ...], sigmas [L];
  returns (scalar loss, aux) as in `dsm_loss_given_noise`. z is drawn flat [B, prod(...)] and
  reshaped: the same law, far cheaper for XLA:CPU to compile than a rank-4 normal.
  """
  label_key, noise_key = jax.random.split(key)
  labels = jax.random.randint(label_key, (x.shape[0],), 0, jnp.shape(sigmas)[0])
  flat = jax.random.normal(noise_key, (x.shape[0], math.prod(x.shape[1:])), x.dtype)
  noise = flat.reshape(x.shape)
  return dsm_loss_given_noise(score_fn, x, sigmas, labels, noise, anneal_power)
