"""Langevin samplers for noise-conditional score networks.

`annealed_langevin` is Algorithm 1 of Song & Ermon (2019) with NCSNv2's
choices (Song & Ermon 2020): start from U[0, 1], T steps per level with
alpha_i = eps sigma_i^2 / sigma_L^2, and a final denoising step
x + sigma_L^2 s(x, sigma_L) (official `anneal_Langevin_dynamics`,
denoise=True). `langevin` is plain Langevin dynamics at one sigma.
"""

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


def uniform_init(key: jax.Array, shape: Sequence[int], minval: float = 0.0,
                 maxval: float = 1.0, dtype=jnp.float32) -> jax.Array:
  """NCSNv2 sampler initialisation: x_0 ~ U[minval, maxval]^shape (default U[0, 1])."""
  return jax.random.uniform(key, tuple(shape), dtype, minval, maxval)


def _langevin_step(score_fn: ScoreFn, x: jax.Array, sigma_b: jax.Array,
                   alpha: jax.Array, key: jax.Array) -> jax.Array:
  """One update x + alpha s(x, sigma) + sqrt(2 alpha) z, z ~ N(0, I).

  z is drawn flat [B, prod(...)] and reshaped (same law; a rank-4 normal is far
  slower for XLA:CPU to compile).
  """
  z = jax.random.normal(key, (x.shape[0], math.prod(x.shape[1:])), x.dtype).reshape(x.shape)
  return x + alpha * score_fn(x, sigma_b) + jnp.sqrt(2.0 * alpha) * z


def _run_steps(score_fn, x, sigma, alpha, key, n_steps):
  """n_steps Langevin updates at one sigma inside a fori_loop; returns (x, key)."""
  sigma_b = jnp.full((x.shape[0],), sigma, x.dtype)

  def body(_, state):
    x, key = state
    key, sub = jax.random.split(key)
    return _langevin_step(score_fn, x, sigma_b, alpha, sub), key

  return lax.fori_loop(0, n_steps, body, (x, key))


def langevin(score_fn: ScoreFn, x_init: jax.Array, sigma: float, key: jax.Array,
             *, n_steps: int, step_size: float) -> jax.Array:
  """Plain (non-annealed) Langevin dynamics at a single noise level.

  x <- x + alpha s(x, sigma) + sqrt(2 alpha) z for `n_steps` steps, alpha =
  step_size (Song & Ermon 2019, Eq. 4), in one compiled fori_loop.
  Returns x [B, ...].
  """
  if int(n_steps) != n_steps or n_steps < 1:
    raise ValueError(f'n_steps={n_steps!r} must be an integer >= 1.')
  return _langevin_jit(score_fn, x_init, sigma, key, step_size, int(n_steps))


@functools.partial(jax.jit, static_argnums=(0, 5))
def _langevin_jit(score_fn, x_init, sigma, key, step_size, n_steps):
  dtype = x_init.dtype
  x, _ = _run_steps(score_fn, x_init, jnp.asarray(sigma, dtype),
                    jnp.asarray(step_size, dtype), key, n_steps)
  return x


def _keep_slots(keep_levels: Sequence[int] | None, num_levels: int) -> np.ndarray | None:
  """[L] int32: output slot of each level's end state, -1 where not kept."""
  if keep_levels is None:
    return None
  slots = np.full((num_levels,), -1, np.int32)
  for slot, level in enumerate(keep_levels):
    level = int(level)
    if not -num_levels <= level < num_levels:
      raise ValueError(
          f'keep_levels entry {level} is out of range for {num_levels} levels '
          f'(allowed [-{num_levels}, {num_levels})).')
    level %= num_levels
    if slots[level] >= 0:
      raise ValueError(f'keep_levels repeats level {level}: {tuple(keep_levels)}.')
    slots[level] = slot
  return slots


def annealed_langevin(score_fn: ScoreFn, x_init: jax.Array, sigmas: jax.Array,
                      key: jax.Array, *, n_steps_each: int, step_lr: float,
                      denoise: bool = True, keep_levels: Sequence[int] | None = None,
                      clip: bool = False) -> tuple[jax.Array, jax.Array | None]:
  """Annealed Langevin dynamics (Song & Ermon 2019 Alg. 1; NCSNv2 settings).

  For i = 1..L (sigmas descending) run T = `n_steps_each` steps
  x <- x + alpha_i s(x, sigma_i) + sqrt(2 alpha_i) z with
  alpha_i = eps sigma_i^2 / sigma_L^2 (eps = `step_lr`, Technique 4), then, if
  `denoise`, x <- x + sigma_L^2 s(x, sigma_L) (Tweedie denoising, official
  NCSNv2). All L*T steps run in one compiled loop (lax.scan over levels with
  an inner fori_loop). The function jits itself with `score_fn`,
  `n_steps_each`, `denoise`, `keep_levels` and `clip` static (score_fn must be
  hashable, e.g. a function or functools.partial); it can also be wrapped in
  an outer jax.jit with the same static arguments.

  Args:
    score_fn: (x [B, ...], sigma [B]) -> score [B, ...].
    x_init: [B, ...] start, e.g. `uniform_init`.
    sigmas: [L] descending noise levels.
    key: PRNG key.
    n_steps_each: T >= 1 steps per level (Python int).
    step_lr: eps > 0.
    denoise: apply the final denoising step.
    keep_levels: optional level indices (negatives allowed) whose end-of-level
      states (before denoising) are returned; only these K states are stored.
    clip: clamp the returned states to [0, 1] (what the official code does
      before saving images; the dynamics are not clipped).

  Returns:
    (x_final [B, ...], kept [K, B, ...] in `keep_levels` order, or None).
  """
  if int(n_steps_each) != n_steps_each or n_steps_each < 1:
    raise ValueError(f'n_steps_each={n_steps_each!r} must be an integer >= 1.')
  if jnp.ndim(sigmas) != 1 or jnp.shape(sigmas)[0] < 1:
    raise ValueError(f'sigmas must have shape [L] with L >= 1; got {jnp.shape(sigmas)}.')
  keep_levels = None if keep_levels is None else tuple(int(i) for i in keep_levels)
  _keep_slots(keep_levels, jnp.shape(sigmas)[0])  # Validates early.
  return _annealed_jit(score_fn, x_init, sigmas, key, step_lr, int(n_steps_each),
                       bool(denoise), keep_levels, bool(clip))


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7, 8))
def _annealed_jit(score_fn, x_init, sigmas, key, step_lr, n_steps_each, denoise,
                  keep_levels, clip):
  """Compiled body of `annealed_langevin` (one XLA program for all L*T steps)."""
  dtype = x_init.dtype
  sigmas = jnp.asarray(sigmas, dtype)
  num_levels = sigmas.shape[0]
  slots = _keep_slots(keep_levels, num_levels)
  sigma_last = sigmas[-1]
  kept = None if slots is None else jnp.zeros((len(keep_levels),) + x_init.shape, dtype)

  def level(carry, inputs):
    x, key, kept = carry
    sigma, slot = inputs
    alpha = jnp.asarray(step_lr, dtype) * (sigma / sigma_last) ** 2
    x, key = _run_steps(score_fn, x, sigma, alpha, key, n_steps_each)
    if kept is not None:
      index = jnp.maximum(slot, 0)
      kept = kept.at[index].set(jnp.where(slot >= 0, x, kept[index]))
    return (x, key, kept), None

  slot_xs = jnp.asarray(np.zeros(num_levels, np.int32) if slots is None else slots)
  (x, _, kept), _ = lax.scan(level, (x_init, key, kept), (sigmas, slot_xs))
  if denoise:
    x = x + sigma_last ** 2 * score_fn(x, jnp.full((x.shape[0],), sigma_last, dtype))
  if clip:
    x = jnp.clip(x, 0.0, 1.0)
    kept = None if kept is None else jnp.clip(kept, 0.0, 1.0)
  return x, kept
