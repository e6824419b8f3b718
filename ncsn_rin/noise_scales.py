"""Noise-scale design for NCSNv2 (Song & Ermon 2020, "Improved Techniques ...").

Implements the paper's hyper-parameter recipes:

* Technique 1 (initial noise scale): sigma_1 = the largest Euclidean distance
  between two training examples -> `max_pairwise_distance`.
* Technique 2 (other noise scales): a geometric sequence whose ratio
  gamma = sigma_{i-1}/sigma_i makes consecutive Gaussian shells overlap by a
  target probability (0.5 in the paper) -> `overlap`, `num_noise_scales`,
  `geometric_sigmas`.
* Technique 4 (step size eps for T steps per level): Proposition 3's variance
  ratio s_T^2/sigma_i^2, driven to ~1 -> `langevin_variance_ratio`,
  `choose_step_lr`.

`derive_noise_config` chains them and `format_config_snippet` renders the
result as `config.ncsn.*` lines.
"""

import functools
import math
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.stats import norm
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# ----------------------------------------------------------------------------
# Validation.
# ----------------------------------------------------------------------------


def validate_sigma(name: str, value: float) -> None:
  """Raises ValueError unless `value` is a finite noise scale > 0."""
  if not (math.isfinite(float(value)) and float(value) > 0):
    raise ValueError(
        f'{name}={value!r} is invalid: noise scales must be finite and > 0 '
        '(allowed range (0, inf)). Fix: use a positive sigma, e.g. sigma_min='
        '0.01 for images in [0, 1] and sigma_max = max pairwise distance '
        '(NCSNv2 Technique 1).')


def validate_sigmas(sigma_max: float, sigma_min: float) -> None:
  """Checks 0 < sigma_min < sigma_max (the sequence must decrease)."""
  validate_sigma('sigma_max', sigma_max)
  validate_sigma('sigma_min', sigma_min)
  if float(sigma_min) >= float(sigma_max):
    raise ValueError(
        f'sigma_min={sigma_min!r} must be < sigma_max={sigma_max!r} '
        '(allowed: 0 < sigma_min < sigma_max). Fix: swap them, or set '
        'sigma_max to the largest pairwise distance of the training data '
        '(NCSNv2 Technique 1, `max_pairwise_distance`).')


def validate_num_scales(num_scales: int) -> None:
  """Checks L >= 2 (a geometric sequence needs both endpoints)."""
  if isinstance(num_scales, bool) or int(num_scales) != num_scales or num_scales < 2:
    raise ValueError(
        f'num_scales={num_scales!r} is invalid: need an integer L >= 2 so the '
        'geometric sequence contains both sigma_max and sigma_min (allowed '
        'range [2, inf)). Fix: use `num_noise_scales` (Technique 2), e.g. '
        'L=232 for CIFAR-10.')


def validate_n_steps(n_steps: int, name: str = 'n_steps_each') -> None:
  """Checks T >= 1 Langevin steps per noise level."""
  if isinstance(n_steps, bool) or int(n_steps) != n_steps or n_steps < 1:
    raise ValueError(
        f'{name}={n_steps!r} is invalid: need an integer number of Langevin '
        'steps T >= 1 (allowed range [1, inf)). Fix: NCSNv2 uses T=5 per '
        'noise level.')


def validate_step_lr(step_lr: float, sigma_min: float | None = None) -> None:
  """Checks eps > 0 and, given sigma_L, eps < 2 sigma_L^2 (so |a| < 1).

  With a = 1 - eps / sigma_L^2 (Proposition 3), |a| >= 1 makes the Langevin
  iteration diverge even for a Gaussian.
  """
  if not (math.isfinite(float(step_lr)) and float(step_lr) > 0):
    raise ValueError(
        f'step_lr={step_lr!r} is invalid: the Langevin step size eps must be '
        'finite and > 0 (allowed range (0, 2*sigma_min**2)). Fix: use '
        '`choose_step_lr` (Technique 4), e.g. 6.2e-6 for CIFAR-10.')
  if sigma_min is not None:
    limit = 2.0 * float(sigma_min) ** 2
    if float(step_lr) >= limit:
      raise ValueError(
          f'step_lr={step_lr!r} is too large for sigma_min={sigma_min!r}: '
          f'need eps < 2*sigma_min**2 = {limit:g} so that |1 - eps/sigma_min'
          '**2| < 1 (allowed range (0, 2*sigma_min**2)). Fix: use '
          '`choose_step_lr` (Technique 4).')


def validate_target_overlap(target_overlap: float) -> None:
  """Checks the Technique 2 overlap probability lies in (0, 1)."""
  if not 0.0 < float(target_overlap) < 1.0:
    raise ValueError(
        f'target_overlap={target_overlap!r} is invalid: it is a probability '
        'in the open interval (0, 1). Fix: use 0.5 as in NCSNv2 Technique 2.')


def validate_dim(dim: int) -> None:
  """Checks the data dimension D >= 1."""
  if isinstance(dim, bool) or int(dim) != dim or dim < 1:
    raise ValueError(
        f'dim={dim!r} is invalid: the data dimension D must be an integer >= 1'
        ' (allowed range [1, inf)). Fix: pass the number of values per '
        'example, e.g. 32*32*3 = 3072 for CIFAR-10.')


def validate_ncsn_hyperparameters(sigma_max: float, sigma_min: float,
                                  num_scales: int, n_steps_each: int,
                                  step_lr: float) -> None:
  """Validates a full NCSNv2 sampling setting; raises ValueError on the first bad value."""
  validate_sigmas(sigma_max, sigma_min)
  validate_num_scales(num_scales)
  validate_n_steps(n_steps_each)
  validate_step_lr(step_lr, sigma_min)


# ----------------------------------------------------------------------------
# Technique 1: sigma_1 = max pairwise Euclidean distance.
# ----------------------------------------------------------------------------


def _default_mesh() -> Mesh:
  return Mesh(np.array(jax.devices()), ('data',))


@functools.lru_cache(maxsize=None)
def _block_kernel(mesh: Mesh):
  """Jitted best-partner update for one (row block, column block) pair.

  Rows [bm, D] are split over the mesh's 'data' axis, columns [bn, D] are
  replicated; the running per-row best squared distance [bm] and partner
  index [bm] are sharded like the rows.
  """
  rows_sharding = NamedSharding(mesh, PartitionSpec('data', None))
  vec_sharding = NamedSharding(mesh, PartitionSpec('data'))
  replicated = NamedSharding(mesh, PartitionSpec())

  def kernel(rows, cols, n_rows, n_cols, col_offset, best, best_idx):
    row_sq = jnp.sum(rows * rows, axis=1)
    col_sq = jnp.sum(cols * cols, axis=1)
    cross = jnp.matmul(rows, cols.T, precision=lax.Precision.HIGHEST)
    d2 = jnp.maximum(row_sq[:, None] + col_sq[None, :] - 2.0 * cross, 0.0)
    valid = ((jnp.arange(rows.shape[0]) < n_rows)[:, None]
             & (jnp.arange(cols.shape[0]) < n_cols)[None, :])
    d2 = jnp.where(valid, d2, -1.0)
    block_best = jnp.max(d2, axis=1)
    block_idx = jnp.argmax(d2, axis=1).astype(jnp.int32) + col_offset
    take = block_best > best
    return jnp.where(take, block_best, best), jnp.where(take, block_idx, best_idx)

  return jax.jit(
      kernel,
      in_shardings=(rows_sharding, replicated, replicated, replicated,
                    replicated, vec_sharding, vec_sharding),
      out_shardings=(vec_sharding, vec_sharding))


class _HostStore:
  """Growable [N, D] host buffer of every example seen so far (capacity doubling)."""

  def __init__(self):
    self._buf = None
    self.size = 0

  def append(self, batch: np.ndarray) -> None:
    if self._buf is None:
      self._buf = batch  # Adopt the first batch without copying.
    elif self.size + len(batch) > len(self._buf):
      capacity = max(2 * len(self._buf), self.size + len(batch))
      grown = np.empty((capacity, batch.shape[1]), self._buf.dtype)
      grown[:self.size] = self._buf[:self.size]
      self._buf = grown
    if self._buf is not batch:
      self._buf[self.size:self.size + len(batch)] = batch
    self.size += len(batch)

  def rows(self, start: int, stop: int) -> np.ndarray:
    return self._buf[start:stop]


def _as_host_batch(batch: Any, dim: int | None) -> np.ndarray:
  """Flattens one batch to a host [n, D] array of at least float32 precision."""
  batch = np.asarray(batch)
  if batch.ndim < 1:
    raise ValueError(f'a batch must have shape [n, ...]; got a scalar {batch!r}')
  dtype = np.float64 if batch.dtype == np.float64 else np.float32
  flat = batch.reshape(len(batch), -1).astype(dtype, copy=False)
  if dim is not None and flat.shape[1] != dim:
    raise ValueError(
        f'every batch must have the same number of features; got {flat.shape[1]}'
        f' after {dim}. Fix: stream batches of one data set.')
  return flat


def _padded_block(store: _HostStore, start: int, stop: int, size: int,
                  shift: np.ndarray) -> np.ndarray:
  """Rows [start, stop) minus `shift`, zero-padded to `size` rows, float32."""
  block = np.zeros((size, store.rows(start, stop).shape[1]), np.float32)
  block[:stop - start] = store.rows(start, stop) - shift
  return block


def _iter_batches(x: Any) -> Iterable[Any]:
  if isinstance(x, (np.ndarray, jax.Array)):
    return (x,)
  return x


class _BlockwiseFarthest:
  """Streams examples in and tracks each row's float32 farthest earlier partner.

  Rows are processed in full [bm]-row blocks (the tail when `finish` is
  called); a row block is compared with every column before its end, in
  [bn]-column blocks, by the sharded `_block_kernel`.
  """

  def __init__(self, mesh: Mesh, block_size: int):
    self.mesh, self.block_size = mesh, block_size
    self.kernel = _block_kernel(mesh)
    self.store, self.shift, self.done = _HostStore(), None, 0
    self.best_parts, self.idx_parts = [], []

  def _start(self, batch: np.ndarray, is_array: bool) -> None:
    """Fixes the centring shift and the block shapes from the first batch."""
    self.shift = batch.mean(axis=0).astype(np.float32)
    size = min(self.block_size, len(batch)) if is_array else self.block_size
    n_dev = self.mesh.shape['data']
    self.bm, self.bn = -(-size // n_dev) * n_dev, size

  def add(self, batch: np.ndarray, is_array: bool = False) -> None:
    if self.shift is None:
      self._start(batch, is_array)
    self.store.append(batch)
    while self.store.size - self.done >= self.bm:
      self._process_rows(self.done, self.done + self.bm)

  def finish(self) -> tuple[np.ndarray, np.ndarray]:
    """Returns per-row approximate max squared distance [N] and partner [N]."""
    if self.done < self.store.size:
      self._process_rows(self.done, self.store.size)
    if self.store.size < 2:
      raise ValueError(
          f'max_pairwise_distance needs at least 2 examples; got {self.store.size}.')
    return np.concatenate(self.best_parts), np.concatenate(self.idx_parts)

  def _put(self, start: int, stop: int, size: int, spec: PartitionSpec) -> jax.Array:
    block = _padded_block(self.store, start, stop, size, self.shift)
    return jax.device_put(block, NamedSharding(self.mesh, spec))

  def _process_rows(self, r0: int, r1: int) -> None:
    """Compares rows [r0, r1) with every column < r1; one host sync per row block."""
    vec = NamedSharding(self.mesh, PartitionSpec('data'))
    rows = self._put(r0, r1, self.bm, PartitionSpec('data', None))
    best = jax.device_put(np.full((self.bm,), -1.0, np.float32), vec)
    best_idx = jax.device_put(np.zeros((self.bm,), np.int32), vec)
    for c0 in range(0, r1, self.bn):
      c1 = min(c0 + self.bn, r1)
      cols = self._put(c0, c1, self.bn, PartitionSpec())
      best, best_idx = self.kernel(rows, cols, np.int32(r1 - r0), np.int32(c1 - c0),
                                   np.int32(c0), best, best_idx)
    self.best_parts.append(np.asarray(best)[:r1 - r0])
    self.idx_parts.append(np.asarray(best_idx)[:r1 - r0])
    self.done = r1


def max_pairwise_distance(x: Any, *, block_size: int = 2048,
                          mesh: Mesh | None = None,
                          num_candidates: int = 64) -> float:
  """Exact largest Euclidean distance between two examples (NCSNv2 Technique 1).

  Technique 1 sets sigma_1 to this distance so that the largest noise scale
  lets Langevin dynamics move between any two training points.

  Algorithm: the examples (flattened to [N, D], centred on the first batch's
  mean; distances are translation-invariant and centring reduces round-off)
  are compared blockwise. For a row block [bm, D] and a column block [bn, D]
  a jitted kernel computes ||a||^2 + ||b||^2 - 2 a.b^T in float32 with a
  HIGHEST-precision matmul, clamps it at 0 against round-off, and keeps the
  best partner per row. Row i is compared with every column j < end of its own
  block, so each unordered pair is seen at least once; the N x N matrix is
  never formed (device memory: one [bm, bn] block plus the two [b, D] blocks).
  The `num_candidates` rows with the largest float32 maxima are then
  re-evaluated exactly on the host as ||x_i - x_j|| in float64 from the
  uncentred data, so the result is the true distance of a real pair. It is the
  exact maximum unless a row's float32 argmax confused two partners whose
  squared distances differ by less than float32 round-off (then it is within
  that round-off).

  Sharding: rows of each block are split over the 'data' axis of `mesh`
  (default: a 1-D mesh over all `jax.devices()`), columns are replicated.

  Streaming: `x` may be an iterable of [n_b, ...] batches (n_b may vary, e.g.
  an uneven last batch). Each new batch is compared with itself and with all
  previous batches; incoming rows are buffered into full [bm]-row blocks so
  small batches waste no padded compute. Host memory: every example seen is
  kept in a numpy buffer (N x D x 4 bytes for float32, up to 2x transiently
  while the buffer grows; ~0.6 GB for CIFAR-10's 50k x 3072), plus N
  floats/ints of per-row maxima.

  Args:
    x: [N, ...] array (numpy or jax), or an iterable of [n_b, ...] batches.
    block_size: rows per block (rounded up to a multiple of the device count).
    mesh: optional `jax.sharding.Mesh` with a 'data' axis.
    num_candidates: rows re-evaluated exactly on the host.

  Returns:
    The maximum pairwise distance as a Python float.
  """
  if block_size < 1:
    raise ValueError(f'block_size={block_size} must be >= 1.')
  mesh = _default_mesh() if mesh is None else mesh
  if 'data' not in mesh.axis_names:
    raise ValueError(f"mesh axes {mesh.axis_names} lack a 'data' axis to shard rows over.")
  scanner, dim = _BlockwiseFarthest(mesh, block_size), None
  is_array = isinstance(x, (np.ndarray, jax.Array))
  for batch in _iter_batches(x):
    batch = _as_host_batch(batch, dim)
    if len(batch):
      dim = batch.shape[1]
      scanner.add(batch, is_array)
  approx, partner = scanner.finish()
  return _exact_refinement(scanner.store, approx, partner, num_candidates)


def _exact_refinement(store: _HostStore, approx: np.ndarray, partner: np.ndarray,
                      num_candidates: int) -> float:
  """Recomputes ||x_i - x_partner(i)|| in float64 for the top float32 rows."""
  k = min(max(num_candidates, 1), len(approx))
  rows = np.argpartition(-approx, k - 1)[:k]
  a = store.rows(0, store.size)[rows].astype(np.float64)
  b = store.rows(0, store.size)[partner[rows]].astype(np.float64)
  return float(np.sqrt(np.max(np.sum((a - b) ** 2, axis=1))))


# ----------------------------------------------------------------------------
# Technique 2: number of noise scales / geometric ratio.
# ----------------------------------------------------------------------------


@jax.jit
def overlap(gamma: jax.typing.ArrayLike, dim: jax.typing.ArrayLike) -> jax.Array:
  """Technique 2 overlap C(gamma, D) = Phi(sqrt(2D)(g-1) + 3g) - Phi(sqrt(2D)(g-1) - 3g).

  ||x|| for x ~ N(0, sigma_i^2 I_D) is approx N(sqrt(D) sigma_i, sigma_i^2/2);
  C is the probability that it falls within 3 standard deviations of the shell
  of the next-larger level sigma_{i-1} = gamma sigma_i. Broadcasts over arrays;
  float32 (absolute error ~1e-6).
  """
  return _overlap_log(jnp.log(jnp.asarray(gamma, jnp.float32)), dim)


@jax.jit
def _overlap_log(log_gamma: jax.Array, dim: jax.typing.ArrayLike) -> jax.Array:
  """`overlap` parametrised by log gamma (uses expm1 for gamma - 1 precision)."""
  gamma = jnp.exp(log_gamma)
  centre = jnp.sqrt(2.0 * jnp.asarray(dim, jnp.float32)) * jnp.expm1(log_gamma)
  return norm.cdf(centre + 3.0 * gamma) - norm.cdf(centre - 3.0 * gamma)


@functools.partial(jax.jit, static_argnames=('num_iters',))
def _largest_log_gamma(log_ratio, dim, target, num_iters: int = 64):
  """Bisection for the largest log gamma in [0, log_ratio] with C >= target.

  C(gamma) rises very slightly above C(1) = Phi(3) - Phi(-3) and then falls
  monotonically to 0 (for D > 4.5), so {gamma >= 1 : C >= target} is [1, g*].
  """

  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    ok = _overlap_log(mid, dim) >= target
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

  lo, _ = lax.fori_loop(0, num_iters, body,
                        (jnp.float32(0.0), jnp.asarray(log_ratio, jnp.float32)))
  return lo


def _overlap_for_num_scales(sigma_max, sigma_min, dim, num_scales) -> float:
  log_gamma = math.log(sigma_max / sigma_min) / (num_scales - 1)
  return float(_overlap_log(jnp.float32(log_gamma), dim))


def num_noise_scales(sigma_max: float, sigma_min: float, dim: int,
                     target_overlap: float = 0.5) -> tuple[int, float]:
  """Smallest L whose geometric ratio keeps the Technique 2 overlap >= target.

  Solves C(gamma*, D) = target by bisection on log gamma, sets
  L = ceil(1 + log(sigma_max/sigma_min) / log gamma*), then re-checks L and
  L - 1 against float round-off. The achieved ratio
  gamma = (sigma_max/sigma_min)^(1/(L-1)) <= gamma*.

  Versus the official configs: this returns L=220 for CIFAR-10 (sigma_1=50,
  sigma_L=0.01, D=3072) and L=473 for CelebA 64x64 (sigma_1=90, D=12288),
  while NCSNv2 uses 232 and 500. Their L give C = 0.5670 / 0.5669, i.e. the
  official runs were slightly more conservative than "C ~ 0.5" (the paper
  only asks for C ~ 0.5 and does not say how L was rounded);
  `num_noise_scales(..., target_overlap=0.5669)` reproduces 232 and 500.
  For D <= 4 the normal approximation of ||x|| breaks down (C no longer tends
  to 0 as gamma grows) and L=2 may be returned.

  Returns:
    (L, gamma) with L an int >= 2 and gamma the achieved ratio (float).
  """
  validate_sigmas(sigma_max, sigma_min)
  validate_dim(dim)
  validate_target_overlap(target_overlap)
  sigma_max, sigma_min = float(sigma_max), float(sigma_min)
  log_ratio = math.log(sigma_max / sigma_min)
  if _overlap_for_num_scales(sigma_max, sigma_min, dim, 2) >= target_overlap:
    return 2, sigma_max / sigma_min
  if float(_overlap_log(jnp.float32(0.0), dim)) < target_overlap:
    raise ValueError(
        f'target_overlap={target_overlap!r} is unreachable for dim={dim}: even '
        'gamma -> 1 only gives Phi(3) - Phi(-3) = 0.9973. Fix: use a target in '
        '(0, 0.997), e.g. 0.5.')
  log_gamma = float(_largest_log_gamma(log_ratio, dim, target_overlap))
  num_scales = max(2, math.ceil(1.0 + log_ratio / max(log_gamma, 1e-30)))
  while _overlap_for_num_scales(sigma_max, sigma_min, dim, num_scales) < target_overlap:
    num_scales += 1
  while (num_scales > 2 and _overlap_for_num_scales(
      sigma_max, sigma_min, dim, num_scales - 1) >= target_overlap):
    num_scales -= 1
  return num_scales, math.exp(log_ratio / (num_scales - 1))


def geometric_sigmas(sigma_max: float, sigma_min: float, num_scales: int) -> jax.Array:
  """[L] float32 descending geometric sequence sigma_1 = sigma_max ... sigma_L = sigma_min.

  As in NCSNv2's `get_sigmas` (exp of a linspace in log space, computed in
  float64 on the host); the endpoints are set exactly.
  """
  validate_sigmas(sigma_max, sigma_min)
  validate_num_scales(num_scales)
  sigmas = np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), int(num_scales)))
  sigmas[0], sigmas[-1] = sigma_max, sigma_min
  return jnp.asarray(sigmas, jnp.float32)


# ----------------------------------------------------------------------------
# Technique 4: step size via Proposition 3.
# ----------------------------------------------------------------------------


def _variance_ratio_from_u(u, n_steps, gamma):
  """Prop. 3 ratio with u = eps / sigma_L^2, a = 1 - u.

  Uses the identity r = 2 eps / (sigma_L^2 (1 - a^2)) = 2 / (2 - u), which
  avoids the cancellation in 1 - a^2 for small u.
  """
  a2 = (1.0 - u) ** 2
  r = 2.0 / (2.0 - u)
  return a2 ** n_steps * (gamma ** 2 - r) + r


def langevin_variance_ratio(step_lr, n_steps, gamma, sigma_min) -> jax.Array:
  """Proposition 3: s_T^2 / sigma_i^2 after T Langevin steps at level i.

  Setting: data is a point (at 0), so the sigma_i-perturbed density is
  N(0, sigma_i^2 I) with exact score -x/sigma_i^2; the chain starts from the
  previous level, x_0 ~ N(0, gamma^2 sigma_i^2 I), and takes
  x <- x + alpha s(x) + sqrt(2 alpha) z with alpha = eps sigma_i^2/sigma_L^2,
  i.e. x <- a x + sqrt(2 alpha) z with a = 1 - eps/sigma_L^2. The per-dim
  variance obeys v <- a^2 v + 2 alpha; dividing by sigma_i^2 and solving the
  linear recursion gives

    s_T^2/sigma_i^2 = a^{2T} (gamma^2 - r) + r,  r = 2 eps / (sigma_L^2 (1 - a^2)),

  independent of i. Since r = 2/(2 - eps/sigma_L^2) > 1 and gamma > 1, the
  ratio always exceeds 1 for |a| < 1. Broadcasts over array arguments.
  """
  return _variance_ratio(jnp.asarray(step_lr, jnp.float32), jnp.asarray(n_steps, jnp.float32),
                         jnp.asarray(gamma, jnp.float32), jnp.asarray(sigma_min, jnp.float32))


@jax.jit
def _variance_ratio(step_lr, n_steps, gamma, sigma_min):
  return _variance_ratio_from_u(step_lr / sigma_min ** 2, n_steps, gamma)


_U_MAX = 2.0 * (1.0 - 1e-6)  # keeps a = 1 - u strictly inside (-1, 1).


@functools.partial(jax.jit, static_argnames=('grid_size', 'golden_iters'))
def _best_log_u(n_steps, gamma, grid_size: int = 4096, golden_iters: int = 80):
  """argmin_{log u} |ratio - 1|: dense log grid, then golden-section refinement."""
  objective = lambda log_u: jnp.abs(_variance_ratio_from_u(jnp.exp(log_u), n_steps, gamma) - 1.0)
  grid = jnp.linspace(jnp.log(1e-12), jnp.log(_U_MAX), grid_size)
  k = jnp.argmin(objective(grid))
  lo = grid[jnp.maximum(k - 1, 0)]
  hi = grid[jnp.minimum(k + 1, grid_size - 1)]
  inv_phi = (math.sqrt(5.0) - 1.0) / 2.0

  def body(_, bounds):
    lo, hi = bounds
    c = hi - inv_phi * (hi - lo)
    d = lo + inv_phi * (hi - lo)
    left = objective(c) <= objective(d)
    return jnp.where(left, lo, c), jnp.where(left, d, hi)

  lo, hi = lax.fori_loop(0, golden_iters, body, (lo, hi))
  mid = 0.5 * (lo + hi)
  return jnp.where(objective(mid) <= objective(grid[k]), mid, grid[k])


def choose_step_lr(n_steps: int, gamma: float, sigma_min: float) -> float:
  """Technique 4: the eps in (0, 2 sigma_L^2) that brings Prop. 3's ratio closest to 1.

  The ratio depends on eps only through u = eps/sigma_L^2 in (0, 2) (|a| < 1);
  searches log u on a dense grid and refines by golden section. CIFAR-10
  (sigma_L=0.01, T=5, gamma of L=232) gives 6.18e-6, the official 6.2e-6.
  """
  validate_n_steps(n_steps)
  validate_sigma('sigma_min', sigma_min)
  if not float(gamma) > 1.0:
    raise ValueError(
        f'gamma={gamma!r} is invalid: the geometric ratio sigma_(i-1)/sigma_i '
        'must be > 1 (allowed range (1, inf)). Fix: use `num_noise_scales`.')
  log_u = _best_log_u(jnp.float32(n_steps), jnp.float32(gamma))
  return float(np.exp(np.float64(log_u))) * float(sigma_min) ** 2


# ----------------------------------------------------------------------------
# Putting it together.
# ----------------------------------------------------------------------------


def derive_noise_config(max_distance: float, dim: int, sigma_min: float,
                        n_steps_each: int, target_overlap: float = 0.5) -> dict[str, Any]:
  """Techniques 1, 2, 4: sigma_1 = max pairwise distance, L and gamma, then eps.

  Returns:
    dict with sigma_max, sigma_min, num_scales, gamma, overlap_achieved,
    step_lr, n_steps_each, ratio_achieved (Python scalars).
  """
  validate_sigmas(max_distance, sigma_min)
  validate_n_steps(n_steps_each)
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


def format_config_snippet(derived: Mapping[str, Any]) -> str:
  """Renders `derive_noise_config` output as `config.ncsn.* = ...` lines to paste."""
  lines = [
      f"config.ncsn.sigma_max = {derived['sigma_max']!r}",
      f"config.ncsn.sigma_min = {derived['sigma_min']!r}",
      f"config.ncsn.num_scales = {derived['num_scales']!r}",
      f"config.ncsn.n_steps_each = {derived['n_steps_each']!r}",
      f"config.ncsn.step_lr = {float('%.3g' % derived['step_lr'])!r}",
      f"# gamma = {derived['gamma']:.6f}, overlap = {derived['overlap_achieved']:.4f}"
      f" (Technique 2), s_T^2/sigma_i^2 = {derived['ratio_achieved']:.4f} (Prop. 3)",
  ]
  return '\n'.join(lines) + '\n'
