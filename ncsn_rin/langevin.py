"""Langevin samplers for noise-conditional score networks.

`annealed_langevin` is Algorithm 1 of Song & Ermon (2019) with NCSNv2's choices (Song & Ermon
2020): start from U[0, 1], T steps per level with α_i = ε σ_i²/σ_L², and a final denoising step
x + σ_L² s(x, σ_L) (official `anneal_Langevin_dynamics`, denoise=True). `langevin` is plain
Langevin dynamics at one σ. Both are one compiled program: no host loop over steps.
"""

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def uniform_init(key: jax.Array, shape: Sequence[int], minval: float = 0.0,
                 maxval: float = 1.0, dtype=jnp.float32) -> jax.Array:
  """NCSNv2 sampler initialisation: x_0 ~ U[minval, maxval]^shape (default U[0, 1])."""
  return jax.random.uniform(key, tuple(shape), dtype, minval, maxval)


def _run_steps(score_fn: ScoreFn, x: jax.Array, sigma: jax.Array, alpha: jax.Array,
               key: jax.Array, n_steps: int) -> tuple[jax.Array, jax.Array]:
  """n_steps updates x <- x + α s(x, σ) + √(2α) z, z ~ N(0, I), in a fori_loop; -> (x, key).

  x: [B, ...]; σ and α scalars. z is drawn flat [B, prod(...)] and reshaped (same law; a rank-4
  normal is far slower for XLA:CPU to compile).
  """
  sigma_b = jnp.full((x.shape[0],), sigma, x.dtype)  # [B]

  def step(_, state):
    x, key = state
    key, sub = jax.random.split(key)
    z = jax.random.normal(sub, (x.shape[0], math.prod(x.shape[1:])), x.dtype).reshape(x.shape)
    return x + alpha * score_fn(x, sigma_b) + jnp.sqrt(2.0 * alpha) * z, key

  return lax.fori_loop(0, n_steps, step, (x, key))


@functools.partial(jax.jit, static_argnames=('score_fn', 'n_steps'))
def langevin(score_fn: ScoreFn, x_init: jax.Array, sigma: float, key: jax.Array, *,
             n_steps: int, step_size: float) -> jax.Array:
  """Plain (non-annealed) Langevin dynamics at one noise level (Song & Ermon 2019, Eq. 4).

  x <- x + α s(x, σ) + √(2α) z for `n_steps` steps, α = step_size. score_fn: (x [B, ...],
  σ [B]) -> [B, ...], hashable (it is a static argument). Returns x [B, ...].
  """
  dtype = x_init.dtype
  x, _ = _run_steps(score_fn, x_init, jnp.asarray(sigma, dtype), jnp.asarray(step_size, dtype),
                    key, n_steps)
  return x


@functools.partial(jax.jit, static_argnames=('score_fn', 'n_steps_each', 'denoise'))
def annealed_langevin(score_fn: ScoreFn, x_init: jax.Array, sigmas: jax.Array, key: jax.Array,
                      *, n_steps_each: int, step_lr: float, denoise: bool = True) -> jax.Array:
  """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1; NCSNv2 settings).

  For i = 1..L (σ descending) run T = `n_steps_each` steps x <- x + α_i s(x, σ_i) + √(2α_i) z
  with α_i = ε σ_i²/σ_L² (ε = `step_lr`, Technique 4), then, if `denoise`, take the Tweedie
  denoising step x <- x + σ_L² s(x, σ_L) (official NCSNv2). All L·T steps run in one compiled
  loop: lax.scan over levels, fori_loop over steps. score_fn, n_steps_each and denoise are
  static (score_fn must be hashable: a function, a functools.partial, or a lambda built inside an
  outer jit). score_fn: (x [B, ...], σ [B]) -> score [B, ...]; x_init [B, ...] (e.g.
  `uniform_init`), sigmas [L] descending -> x [B, ...] (not clipped; the official code clips to
  [0, 1] only to save images).
  """
  dtype = x_init.dtype
  sigmas = jnp.asarray(sigmas, dtype)  # [L]
  sigma_last = sigmas[-1]

  def level(carry, sigma):
    x, key = carry
    alpha = jnp.asarray(step_lr, dtype) * (sigma / sigma_last) ** 2
    return _run_steps(score_fn, x, sigma, alpha, key, n_steps_each), None

  (x, _), _ = lax.scan(level, (x_init, key), sigmas)
  if denoise:
    x = x + sigma_last ** 2 * score_fn(x, jnp.full((x.shape[0],), sigma_last, dtype))
  return x
