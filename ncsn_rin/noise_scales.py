"""Noise-scale design for NCSNv2 (Song & Ermon 2020, "Improved Techniques for Training Score-Based
Generative Models").

* Technique 1 (initial noise scale): σ_1 = the largest Euclidean distance between two training
  examples -> `max_pairwise_distance`.
* Technique 2 (other noise scales): a geometric sequence whose ratio γ = σ_{i-1}/σ_i makes the
  Gaussian shells of consecutive levels overlap with probability C (≈ 0.5) -> `overlap`,
  `num_noise_scales`, `geometric_sigmas`.
* Technique 4 (step size ε for T steps per level): Proposition 3's variance ratio s_T²/σ_i²,
  driven as close to 1 as it gets -> `langevin_variance_ratio`, `choose_step_lr`.

`derive_noise_config` chains them; `format_config_snippet` renders the result as lines to paste
into a config file. Every function assumes valid input (0 < σ_L < σ_1, L >= 2, T >= 1,
0 < C < Φ(3) − Φ(−3) ≈ 0.9973, 0 < ε < 2σ_L²); the config gate (`ncsn_rin/validation.py`) holds
the checks. The two scalar problems are solved in float64 with `scipy.optimize`.
"""

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from scipy import optimize
from scipy.stats import norm

# ------------------------------------------------------------------------------------------------
# Technique 1: σ_1 = the largest pairwise Euclidean distance.


def _as_matrix(x: Any) -> np.ndarray:
  """An [N, ...] array, or an iterable of [n_b, ...] batches -> host [N, D] (float32 or float64)."""
  batches = [x] if isinstance(x, (np.ndarray, jax.Array)) else list(x)
  flat = [np.asarray(b).reshape(len(b), -1) for b in batches]
  dtype = np.float64 if all(f.dtype == np.float64 for f in flat) else np.float32
  return np.concatenate(flat).astype(dtype, copy=False)


@jax.jit
def _farthest_update(rows, columns, col_offset, num_valid, best, partner):
  """Folds one column block into each row's farthest partner so far (float32).

  rows: [b, D] (split over devices); columns: [b, D] (replicated), rows col_offset.. of the data,
  of which those < num_valid are real; best [b] float32, partner [b] int32: running maximum
  squared distance and its column. ||a − b||² = ||a||² + ||b||² − 2a·b with a HIGHEST-precision
  matmul, clamped at 0 against round-off.
  """
  cross = jnp.matmul(rows, columns.T, precision=lax.Precision.HIGHEST)  # [b, b]
  d2 = jnp.sum(rows * rows, axis=1)[:, None] + jnp.sum(columns * columns, axis=1)[None] - 2 * cross
  index = col_offset + jnp.arange(columns.shape[0])  # [b]
  d2 = jnp.where(index[None] < num_valid, jnp.maximum(d2, 0.0), -1.0)
  take = jnp.max(d2, axis=1) > best
  return (jnp.where(take, jnp.max(d2, axis=1), best),
          jnp.where(take, index[jnp.argmax(d2, axis=1)], partner))


def max_pairwise_distance(x: Any, *, block_size: int = 1024, mesh: Mesh | None = None,
                          num_candidates: int = 64) -> float:
  """The largest Euclidean distance between two examples (NCSNv2 Technique 1), as a float.

  The examples are flattened to [N, D] and centred on their mean on the host (distances are
  translation-invariant; centring cuts float32 round-off). Blocks of b = `block_size` rows (split
  over the 'data' axis of `mesh`, default this host's devices) meet every column block up to their
  own, so each pair is compared once, in float32 (`_farthest_update`); device memory is
  O(b·D + b²), never N x N. The `num_candidates` rows with the largest float32 maxima are then
  re-measured exactly, ||x_i − x_partner(i)|| in float64 from the uncentred data: the result is the
  exact distance of a real pair, and the maximum unless float32 round-off reorders pairs whose
  distances agree to ~1e-7 relative. x: [N, ...] array (N >= 2), or an iterable of [n_b, ...]
  batches (e.g. an input pipeline; all examples are kept on the host: N·D·4 bytes, 0.6 GB for
  CIFAR-10); block_size is rounded up to a multiple of the device count.
  """
  data = _as_matrix(x)  # [N, D]
  n = len(data)
  mesh = Mesh(np.array(jax.local_devices()), ('data',)) if mesh is None else mesh
  b = -(-min(block_size, n) // mesh.shape['data']) * mesh.shape['data']
  centred = np.zeros((-(-n // b) * b, data.shape[1]), np.float32)  # [N padded to b, D]
  np.subtract(data, data.mean(axis=0, dtype=np.float64), out=centred[:n], casting='unsafe')
  split, replicated = (NamedSharding(mesh, PartitionSpec('data')),
                       NamedSharding(mesh, PartitionSpec()))
  best, partner = [], []
  for r0 in range(0, n, b):
    rows = jax.device_put(centred[r0:r0 + b], split)
    state = jax.device_put((np.full(b, -1.0, np.float32), np.zeros(b, np.int32)), split)
    for c0 in range(0, r0 + b, b):
      state = _farthest_update(rows, jax.device_put(centred[c0:c0 + b], replicated), c0, n, *state)
    best.append(np.asarray(state[0]))
    partner.append(np.asarray(state[1]))
  best, partner = np.concatenate(best)[:n], np.concatenate(partner)[:n]
  top = np.argsort(-best)[:num_candidates]
  diff = data[top].astype(np.float64) - data[partner[top]].astype(np.float64)
  return float(np.sqrt(np.max(np.sum(diff * diff, axis=1))))


# ------------------------------------------------------------------------------------------------
# Technique 2: L and the geometric ratio γ from the overlap C.


def overlap(gamma, dim) -> np.ndarray:
  """Technique 2: C(γ, D) = Φ(√(2D)(γ − 1) + 3γ) − Φ(√(2D)(γ − 1) − 3γ), float64, broadcasting.

  For x ~ N(0, σ_i² I_D), ||x|| ≈ N(√D σ_i, σ_i²/2). C is the probability that ||x|| falls in the
  high-density shell of the next-larger level σ_{i-1} = γσ_i: within three of that level's
  standard deviations, 3γσ_i/√2, of √D γσ_i. C(1) = Φ(3) − Φ(−3) ≈ 0.9973; C then falls to 0 as
  γ grows (for D > 4).
  """
  gamma = np.asarray(gamma, np.float64)
  centre = np.sqrt(2.0 * np.asarray(dim, np.float64)) * (gamma - 1.0)
  return norm.cdf(centre + 3.0 * gamma) - norm.cdf(centre - 3.0 * gamma)


def _ratio_for(sigma_max: float, sigma_min: float, num_scales: int) -> float:
  """γ of the geometric sequence of `num_scales` levels from sigma_max down to sigma_min."""
  return (sigma_max / sigma_min) ** (1.0 / (num_scales - 1))


def num_noise_scales(sigma_max: float, sigma_min: float, dim: int,
                     target_overlap: float = 0.5) -> tuple[int, float]:
  """Technique 2: the smallest L whose ratio γ_L = (σ_1/σ_L)^(1/(L−1)) has C(γ_L, D) >= C.

  Solves C(γ*, D) = target with `scipy.optimize.brentq` on [1, σ_1/σ_L] (C is decreasing there
  for D > 4), then L = ceil(1 + log(σ_1/σ_L) / log γ*). For CIFAR-10 (σ_1 = 50, σ_L = 0.01,
  D = 3072) C = 0.5 gives L = 220; the official L = 232 has C = 0.567, as do the official L of
  CelebA, LSUN and FFHQ: the paper's "C ≈ 0.5" was rounded up. Returns (L >= 2, achieved γ_L).
  """
  ratio = sigma_max / sigma_min
  if overlap(ratio, dim) >= target_overlap:
    return 2, ratio
  gamma_star = optimize.brentq(lambda g: overlap(g, dim) - target_overlap, 1.0, ratio,
                               xtol=1e-15, rtol=4 * np.finfo(float).eps)
  num_scales = math.ceil(1.0 + math.log(ratio) / math.log(gamma_star))
  if overlap(_ratio_for(sigma_max, sigma_min, num_scales), dim) < target_overlap:
    num_scales += 1  # γ* sits within round-off of an integer L.
  return num_scales, _ratio_for(sigma_max, sigma_min, num_scales)


def geometric_sigmas(sigma_max: float, sigma_min: float, num_scales: int) -> jax.Array:
  """[L] float32 σ_1 = sigma_max > ... > σ_L = sigma_min, geometric (NCSNv2 `get_sigmas`).

  exp of a float64 linspace in log space; the endpoints are set exactly.
  """
  sigmas = np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), num_scales))
  sigmas[0], sigmas[-1] = sigma_max, sigma_min
  return jnp.asarray(sigmas, jnp.float32)


# ------------------------------------------------------------------------------------------------
# Technique 4: ε from Proposition 3.


def _ratio_of_u(u, n_steps, gamma):
  """Proposition 3's s_T²/σ_i² as a function of u = ε/σ_L² (a = 1 − u), float64.

  Uses r = 2ε / (σ_L²(1 − a²)) = 2/(2 − u), free of the cancellation in 1 − a² for small u.
  """
  u = np.asarray(u, np.float64)
  r = 2.0 / (2.0 - u)
  return np.square(1.0 - u) ** np.asarray(n_steps, np.float64) * (np.square(gamma) - r) + r


def langevin_variance_ratio(step_lr, n_steps, gamma, sigma_min) -> np.ndarray:
  """Proposition 3 (Eq. 6): s_T²/σ_i² after T Langevin steps at level i; float64, broadcasting.

  The data is one point (at 0), so the σ_i-perturbed density is N(0, σ_i² I) with score −x/σ_i².
  Starting from the previous level, x_0 ~ N(0, γ²σ_i² I), each step
  x <- x + α s(x) + √(2α) z with α = ε σ_i²/σ_L² is x <- a x + √(2α) z, a = 1 − ε/σ_L², so the
  per-dimension variance obeys v <- a²v + 2α. Solving the linear recursion and dividing by σ_i²:

    s_T²/σ_i² = a^{2T} (γ² − r) + r,   r = 2ε / (σ_L² (1 − a²)),

  independent of i. For |a| < 1 (0 < ε < 2σ_L²) r > 1, so the ratio always exceeds 1.
  """
  return _ratio_of_u(np.asarray(step_lr, np.float64) / np.square(sigma_min), n_steps, gamma)


def choose_step_lr(n_steps: int, gamma: float, sigma_min: float) -> float:
  """Technique 4: the ε in (0, 2σ_L²) whose Proposition 3 ratio is closest to 1 (its minimum).

  The ratio depends on ε only through u = ε/σ_L² in (0, 2). A log-spaced grid of u brackets the
  minimum, which `scipy.optimize.minimize_scalar` (bounded Brent, float64) then refines in log u.
  CIFAR-10 (σ_L = 0.01, T = 5, γ of L = 232) gives 6.18e-6, the official 6.2e-6.
  """
  log_ratio = lambda log_u: float(_ratio_of_u(np.exp(log_u), n_steps, gamma))
  grid = np.linspace(math.log(1e-12), math.log(2.0 - 1e-9), 2001)
  k = int(np.argmin(_ratio_of_u(np.exp(grid), n_steps, gamma)))
  bounds = (grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)])
  best = optimize.minimize_scalar(log_ratio, bounds=bounds, method='bounded',
                                  options={'xatol': 1e-12})
  return math.exp(best.x) * sigma_min ** 2


# ------------------------------------------------------------------------------------------------
# Putting it together.


def derive_noise_config(max_distance: float, dim: int, sigma_min: float, n_steps_each: int,
                        target_overlap: float = 0.5) -> dict[str, Any]:
  """Techniques 1, 2, 4: σ_1 = max pairwise distance, then L and γ, then ε; a dict of Python
  scalars."""
  num_scales, gamma = num_noise_scales(max_distance, sigma_min, dim, target_overlap)
  step_lr = choose_step_lr(n_steps_each, gamma, sigma_min)
  return {
      'sigma_max': float(max_distance),
      'sigma_min': float(sigma_min),
      'num_scales': int(num_scales),
      'gamma': float(gamma),
      'overlap_achieved': float(overlap(gamma, dim)),
      'step_lr': float(step_lr),
      'n_steps_each': int(n_steps_each),
      'ratio_achieved': float(langevin_variance_ratio(step_lr, n_steps_each, gamma, sigma_min)),
  }


def format_config_snippet(derived: Mapping[str, Any], target: str) -> str:
  """`derive_noise_config` output as lines `<target>.<field> = value` to paste into a config file
  (target: the experiment's NCSN section; ε to 3 significant digits), then a comment with γ, C and
  the Prop. 3 ratio."""
  values = dict(derived, step_lr=float('%.3g' % derived['step_lr']))
  lines = [f'{target}.{field} = {values[field]!r}'
           for field in ('sigma_max', 'sigma_min', 'num_scales', 'n_steps_each', 'step_lr')]
  lines.append(f"# gamma = {derived['gamma']:.6f}, overlap = {derived['overlap_achieved']:.4f}"
               f" (Technique 2), s_T^2/sigma_i^2 = {derived['ratio_achieved']:.4f} (Prop. 3)")
  return '\n'.join(lines) + '\n'
