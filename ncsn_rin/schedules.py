"""Noise schedules γ(t) of Chen 2023, "On the Importance of Noise Scheduling for Diffusion Models".

Conventions (Chen 2023, Sec. 2 and Algorithm 1):

* t ∈ [0, 1] is continuous time; γ(t) is the signal variance of the forward process
  x_t = sqrt(γ(t)) · (b · x0) + sqrt(1 − γ(t)) · ε, so γ(0) = 1 is clean data and γ(1) ≈ 0 is noise.
* b is the input scale factor (Chen 2023, Sec. 3.2); it multiplies the data, not the noise.

Every schedule is a pure `jnp` function, vectorised over t of any shape, returning γ of the same
shape clipped to [clip_min, 1]. `get_gamma_fn` turns the config string used by pix2seq
('cosine@0.2,1,1', 'sigmoid@-3,3,0.9', ...) into such a function of t.
"""

import functools
import math
from typing import Callable

import jax.numpy as jnp

GammaFn = Callable[[jnp.ndarray], jnp.ndarray]

SCHEDULE_NAMES = ('linear', 'cosine', 'sigmoid')
_DEFAULT_PARAMS = {'cosine': (0., 1., 1.), 'sigmoid': (-3., 3., 1.)}
_EXAMPLE_SPECS = {'linear': 'linear', 'cosine': 'cosine@0.2,1,1', 'sigmoid': 'sigmoid@-3,3,0.9'}


def linear_gamma(t, clip_min: float = 1e-9):
  """Linear schedule γ(t) = clip(1 − t, clip_min, 1) (Chen 2023, Alg. 1 `simple_linear_schedule`).

  t in [0, 1], any shape -> γ(t), same shape; clip_min keeps logSNR finite at t = 1.
  """
  t = jnp.asarray(t, dtype=jnp.result_type(float))
  return jnp.clip(1. - t, clip_min, 1.)


def _cos_power(x, tau):
  """f(x) = cos(x · π/2)^(2τ) of Chen 2023, Algorithm 1 (cosine branch); x ∈ [0, 1], any shape."""
  return jnp.cos(x * (math.pi / 2.)) ** (2. * tau)


def cosine_gamma(t, start: float = 0., end: float = 1., tau: float = 1., clip_min: float = 1e-9):
  """Normalised cosine schedule (Chen 2023, Algorithm 1 `cosine_schedule`).

  γ(t) = (f(t·(end − start) + start) − v_e) / (v_s − v_e), f(x) = cos(x·π/2)^(2τ), v_s = f(start),
  v_e = f(end); equivalently (v_e − f(·)) / (v_e − v_s). [start, end] is the window of the
  cosine's x-axis mapped onto t ∈ [0, 1], τ the temperature. Requires 0 ≤ start < end ≤ 1, τ > 0
  (checked by `get_gamma_fn`, not here, so that this stays traceable). t in [0, 1], any shape ->
  γ(t), same shape, in [clip_min, 1].
  """
  t = jnp.asarray(t, dtype=jnp.result_type(float))
  v_start = _cos_power(jnp.asarray(start, t.dtype), tau)
  v_end = _cos_power(jnp.asarray(end, t.dtype), tau)
  value = _cos_power(t * (end - start) + start, tau)
  return jnp.clip((v_end - value) / (v_end - v_start), clip_min, 1.)


def sigmoid_gamma(t, start: float = -3., end: float = 3., tau: float = 1., clip_min: float = 1e-9):
  """Normalised sigmoid schedule (Chen 2023, Algorithm 1 `sigmoid_schedule`).

  γ(t) = (v_e − f(t·(end − start) + start)) / (v_e − v_s), f(x) = sigmoid(x / τ), v_s = f(start),
  v_e = f(end); [start, end] is the window of the sigmoid's x-axis mapped onto t ∈ [0, 1], τ the
  temperature. Requires start < end, τ > 0 (checked by `get_gamma_fn`). t in [0, 1], any shape ->
  γ(t), same shape, in [clip_min, 1].
  """
  t = jnp.asarray(t, dtype=jnp.result_type(float))
  sigmoid = lambda x: 1. / (1. + jnp.exp(-x / tau))
  v_start = sigmoid(jnp.asarray(start, t.dtype))
  v_end = sigmoid(jnp.asarray(end, t.dtype))
  value = sigmoid(t * (end - start) + start)
  return jnp.clip((v_end - value) / (v_end - v_start), clip_min, 1.)


def _parse_params(spec: str, name: str, body: str):
  """Parses 'start,end,tau' of a schedule spec into three finite floats that give a decreasing γ
  (Chen 2023, Alg. 1 args); else raises ValueError naming the value and an example spec."""

  def error(problem):
    return ValueError(f'schedule {spec!r}: {problem}; use e.g. {_EXAMPLE_SPECS[name]!r}')

  parts = body.split(',')
  if len(parts) != 3:
    raise error(f"expected three comma-separated numbers 'start,end,tau' after '@', "
                f'got {len(parts)}')
  try:
    start, end, tau = (float(p) for p in parts)
  except ValueError:
    raise error(f"'start,end,tau' must be numbers, got {body!r}") from None
  if not all(math.isfinite(v) for v in (start, end, tau)):
    raise error(f'start, end and tau must be finite, got {(start, end, tau)}')
  if not start < end:
    raise error(f'start ({start}) must be < end ({end})')
  if not tau > 0:
    raise error(f'tau ({tau}) must be > 0')
  if name == 'cosine' and not (0. <= start and end <= 1.):
    raise error(f'cosine needs 0 <= start < end <= 1 (cos(x·π/2) must stay in [0, 1]), '
                f'got start={start}, end={end}')
  return start, end, tau


def get_gamma_fn(spec: str) -> GammaFn:
  """Parses a schedule spec (the pix2seq / Chen 2023 config syntax) into t -> γ(t), vectorised.

  Accepted: 'linear', 'cosine', 'sigmoid' (defaults start,end,tau = 0,1,1 and -3,3,1), and
  'cosine@start,end,tau', 'sigmoid@start,end,tau' (e.g. 'cosine@0.2,1,1', 'sigmoid@-3,3,0.9').
  Raises ValueError, naming the value and what is allowed, for an unknown name, malformed
  parameters, start >= end, tau <= 0, or (cosine) a window outside [0, 1].
  """
  if not isinstance(spec, str):
    raise ValueError(f'schedule must be a string, got {spec!r} ({type(spec).__name__}); '
                     f'allowed: {", ".join(_EXAMPLE_SPECS.values())}')
  name, sep, body = spec.strip().partition('@')
  name = name.strip()
  if name not in SCHEDULE_NAMES:
    raise ValueError(f'unknown schedule {spec!r}: name {name!r} must be one of {SCHEDULE_NAMES} '
                     "(optionally with '@start,end,tau' for cosine/sigmoid, "
                     "e.g. 'sigmoid@-3,3,0.9')")
  if name == 'linear':
    if sep:
      raise ValueError(f"schedule {spec!r}: 'linear' takes no parameters; use 'linear'")
    return linear_gamma
  start, end, tau = _parse_params(spec, name, body) if sep else _DEFAULT_PARAMS[name]
  fn = cosine_gamma if name == 'cosine' else sigmoid_gamma
  return functools.partial(fn, start=start, end=end, tau=tau)


def logsnr(gamma, b=1.):
  """logSNR of x_t = sqrt(γ)·b·x0 + sqrt(1−γ)·ε per unit data variance (Chen 2023, Sec. 3.2).

  logSNR = log(b² · γ / (1 − γ)); scaling the input by b shifts it by exactly 2·log b. gamma in
  (0, 1], any shape (γ = 1 gives +inf), b broadcastable to it -> logSNR, same shape.
  """
  gamma = jnp.asarray(gamma, dtype=jnp.result_type(float))
  return 2. * jnp.log(b) + jnp.log(gamma) - jnp.log1p(-gamma)


def gamma_from_logsnr(value, b=1.):
  """Inverse of `logsnr`: γ = sigmoid(logSNR − 2·log b) (Chen 2023, Sec. 3.2), value's shape."""
  value = jnp.asarray(value, dtype=jnp.result_type(float))
  return 1. / (1. + jnp.exp(-(value - 2. * jnp.log(b))))
