"""Tests of ncsn_rin.diffusion: parameterisations, the Chen 2023 loss and the DDPM / DDIM /
DPM-Solver++ samplers, checked against the closed-form answers of Gaussian data.

Gaussian data x0 ~ N(μ, diag(s²)), y = b·x0, x_t = sqrt(γ)·y + sqrt(1 − γ)·ε has
    E[ε | x_t] = sqrt(1 − γ)·(x_t − sqrt(γ)·b·μ) / (γ·b²·s² + 1 − γ),
    E[y | x_t] = b·μ + sqrt(γ)·b²·s²·(x_t − sqrt(γ)·b·μ) / (γ·b²·s² + 1 − γ),
which is the MSE-optimal predictor for every schedule (it is conditioned on γ).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncsn_rin import diffusion
from ncsn_rin import schedules

MU = jnp.array([0.3, -0.2, 0.1, -0.3])
STD = jnp.array([0.2, 0.25, 0.2, 0.22])
NUM_SAMPLES = 20_000
METHODS = ('ddpm', 'ddim', 'dpm_solver++')
TARGETS = ('eps', 'x', 'v')


def _denominator(gamma, b):
  """γ·b²·s² + 1 − γ, the variance of x_t per dimension; gamma [B] -> [B, D]."""
  g = gamma[:, None]
  return g * b * b * STD ** 2 + 1. - g


def optimal_eps(x_t, gamma, b):
  """E[ε | x_t] for Gaussian data; x_t [B, D], gamma [B]."""
  g = gamma[:, None]
  return jnp.sqrt(1. - g) * (x_t - jnp.sqrt(g) * b * MU) / _denominator(gamma, b)


def optimal_y(x_t, gamma, b):
  """E[y | x_t] = E[b·x0 | x_t] for Gaussian data; x_t [B, D], gamma [B]."""
  g = gamma[:, None]
  gain = jnp.sqrt(g) * b * b * STD ** 2 / _denominator(gamma, b)
  return b * MU + gain * (x_t - jnp.sqrt(g) * b * MU)


def optimal_pred(x_t, gamma, b, target):
  """E[target | x_t] for 'eps', 'x' (data units) and 'v'."""
  eps, y = optimal_eps(x_t, gamma, b), optimal_y(x_t, gamma, b)
  g = gamma[:, None]
  return {'eps': eps, 'x': y / b, 'v': jnp.sqrt(g) * eps - jnp.sqrt(1. - g) * y}[target]


def final_std_ratio(gamma_fn, num_steps, b):
  """Std of E[y | x_{t_last}] over std of y, t_last = 1/N: the exact output of an exact sampler.

  The sampler returns the last x0 prediction, a posterior mean, so even an exact solver is short
  of s by this factor; the configurations below are chosen so that it is >= 0.975.
  """
  g = float(gamma_fn(1. / num_steps))
  var = g * b * b * STD ** 2
  return np.sqrt(var / (var + 1. - g))


# --------------------------------------------------------------------------------------------------
# Samplers against the analytic answer.
# --------------------------------------------------------------------------------------------------

def ddpm_exact_std_ratio(gamma_fn, num_steps, b, variance):
  """Std of the DDPM output over s, propagated exactly through the discrete chain (per dimension).

  With the analytic denoiser every DDPM step is affine in x_t plus independent Gaussian noise
  (Ho et al. 2020, Eqs. 6-7), so Var(x_s) = A²·Var(x_t) + σ² and the returned y = c·x_t + const.
  This pins the sampler to the discrete algorithm, not just to the continuous-time limit.
  """
  t_now = 1. - np.arange(num_steps) / num_steps
  t_next = np.maximum(t_now - 1. / num_steps, 0.)
  g_now = np.asarray(gamma_fn(jnp.asarray(t_now, jnp.float32)), np.float64)
  g_next = np.asarray(gamma_fn(jnp.asarray(t_next, jnp.float32)), np.float64)
  data_var = b * b * np.asarray(STD, np.float64) ** 2
  var_x = 1.
  for g, gs in zip(g_now, g_next):
    c = np.sqrt(g) * data_var / (g * data_var + 1. - g)  # y = b·μ + c·(x_t − sqrt(γ)·b·μ)
    alpha = min(g / gs, 1.)
    beta = 1. - alpha
    a = np.sqrt(gs) * beta / (1. - g) * c + np.sqrt(alpha) * (1. - gs) / (1. - g)
    var_y = c * c * var_x
    var_x = a * a * var_x + (beta if variance == 'large' else (1. - gs) / (1. - g) * beta)
  return np.sqrt(var_y / data_var)


SAMPLER_CONFIGS = [
    # method, num_steps, sample schedule, ddpm_variance, clip_x0, input scales b (one compile/row)
    ('ddpm', 1000, 'linear', 'large', True, (1.0,)),
    ('ddpm', 1000, 'sigmoid@-3,3,0.9', 'large', False, (0.5,)),
    ('ddpm', 1000, 'cosine', 'small', False, (1.0, 0.5)),
    ('ddim', 250, 'cosine', 'large', False, (1.0, 0.5)),
    ('dpm_solver++', 50, 'cosine@0,1,0.5', 'large', True, (1.0, 0.5)),
]


@pytest.mark.parametrize('method, num_steps, spec, variance, clip, scales', SAMPLER_CONFIGS)
def test_sampler_reproduces_gaussian(method, num_steps, spec, variance, clip, scales):
  """The analytic ε predictor fed to the sampler reproduces N(μ, diag(s²)) (mean ±0.02, std ±5%).

  No schedule was "trained": the analytic denoiser is optimal for all of them, so any sampling
  schedule must work. b is a traced argument so that one compile serves every b. DDPM is also held
  to its exact discrete-chain variance (±1.5%).
  """
  gamma_fn = schedules.get_gamma_fn(spec)

  @jax.jit
  def run(key, b):
    return diffusion.sample(
        functools.partial(optimal_eps, b=b), (NUM_SAMPLES, MU.shape[0]), key, gamma_fn=gamma_fn,
        num_steps=num_steps, method=method, b=b, clip_x0=clip, ddpm_variance=variance)

  for b in scales:
    assert np.all(final_std_ratio(gamma_fn, num_steps, b) >= 0.975)
    x0 = np.asarray(run(jax.random.PRNGKey(1), jnp.float32(b)))
    assert x0.shape == (NUM_SAMPLES, MU.shape[0]) and np.all(np.isfinite(x0))
    np.testing.assert_allclose(x0.mean(0), MU, atol=0.02, err_msg=f'b={b}')
    np.testing.assert_allclose(x0.std(0) / STD, 1., atol=0.05, err_msg=f'b={b}')
    if method == 'ddpm':
      exact = ddpm_exact_std_ratio(gamma_fn, num_steps, b, variance)
      np.testing.assert_allclose(x0.std(0) / STD, exact, atol=0.015, err_msg=f'b={b}')


def test_sample_self_cond_is_carried():
  """denoise_fn counts its calls in self_cond and predicts y = b·count, so x0 = num_steps."""
  num_steps, batch, b = 7, 4, 0.5

  def denoise_fn(x_t, gamma, self_cond):
    count = self_cond['count'] + 1.
    g = gamma[:, None]
    eps = (x_t - jnp.sqrt(g) * b * count[:, None]) / jnp.sqrt(1. - g)
    return eps, {'count': count, 'extra': (self_cond['extra'][0] + 2.,)}

  init = {'count': jnp.zeros((batch,)), 'extra': (jnp.zeros((batch, 2)),)}
  for method in METHODS:
    x0 = diffusion.sample(denoise_fn, (batch, 3), jax.random.PRNGKey(0),
                          gamma_fn=schedules.cosine_gamma, num_steps=num_steps, method=method, b=b,
                          clip_x0=False, self_cond_init=init)
    np.testing.assert_allclose(x0, float(num_steps), rtol=1e-3, err_msg=method)


def test_sample_traces_once_under_jit():
  """The step loop is one lax.scan: denoise_fn is traced once, not num_steps times."""
  traces = []

  def denoise_fn(x_t, gamma):
    traces.append(1)
    return optimal_eps(x_t, gamma, 1.)

  counts = []
  for num_steps in (5, 100):
    for method in METHODS:
      traces.clear()
      jaxpr = str(jax.make_jaxpr(functools.partial(
          diffusion.sample, denoise_fn, (8, 4), gamma_fn=schedules.cosine_gamma,
          num_steps=num_steps, method=method))(jax.random.PRNGKey(0)))
      assert jaxpr.count('scan[') == 1
      counts.append(len(traces))
  assert counts == [1] * len(counts), counts
  # Compiles and runs under jit, with b traced.
  traces.clear()
  run = jax.jit(functools.partial(diffusion.sample, denoise_fn, (8, 4),
                                  gamma_fn=schedules.cosine_gamma, num_steps=100,
                                  method='dpm_solver++'))
  out = run(jax.random.PRNGKey(0), b=jnp.float32(1.))
  assert len(traces) == 1
  assert out.shape == (8, 4) and bool(jnp.all(jnp.abs(out) <= 1.))


def test_step_times():
  t_now, t_next = diffusion.step_times(jnp.arange(4), 4)
  np.testing.assert_allclose(t_now, [1., 0.75, 0.5, 0.25])
  np.testing.assert_allclose(t_next, [0.75, 0.5, 0.25, 0.])
  t_now, t_next = diffusion.step_times(jnp.arange(4), 4, time_difference=0.5)
  np.testing.assert_allclose(t_now, [1., 0.75, 0.5, 0.25])
  np.testing.assert_allclose(t_next, [0.625, 0.375, 0.125, 0.])


# --------------------------------------------------------------------------------------------------
# Parameterisations.
# --------------------------------------------------------------------------------------------------


def _toy_batch(seed, shape=(4, 3, 2)):
  """x0 [B, ...] in [−1, 1], ε [B, ...], γ [B] in [0.05, 0.95] (NumPy RNG: no XLA compiles)."""
  rng = np.random.default_rng(seed)
  x0 = rng.uniform(-1., 1., shape).astype(np.float32)
  noise = rng.standard_normal(shape).astype(np.float32)
  gamma = rng.uniform(0.05, 0.95, shape[:1]).astype(np.float32)
  return jnp.asarray(x0), jnp.asarray(noise), jnp.asarray(gamma)


@pytest.mark.parametrize('target', TARGETS)
@pytest.mark.parametrize('b', [1., 0.5])
def test_target_conversions_round_trip(target, b):
  x0, noise, gamma = _toy_batch(0)
  x_t = diffusion.add_noise(x0, gamma, noise, b)
  np.testing.assert_allclose(
      x_t, jnp.sqrt(gamma)[:, None, None] * b * x0 + jnp.sqrt(1. - gamma)[:, None, None] * noise,
      rtol=1e-6)
  pred = diffusion.make_target(x0, noise, gamma, target, b)
  np.testing.assert_allclose(diffusion.pred_to_eps(pred, x_t, gamma, target, b), noise, atol=1e-5)


def test_normalize_variance():
  scale = np.array([0.1, 1., 5.])[:, None, None, None]
  x = np.random.default_rng(0).standard_normal((3, 8, 8, 3)) * scale
  x = jnp.asarray(x, jnp.float32)
  out = diffusion.normalize_variance(x)
  assert out.shape == x.shape
  np.testing.assert_allclose(jnp.std(out, axis=(1, 2, 3)), 1., rtol=1e-3)
  np.testing.assert_allclose(out / x, (out / x)[:, :1, :1, :1] * jnp.ones_like(x), rtol=1e-5)


@pytest.mark.parametrize('target', TARGETS)
def test_make_eps_fn_uses_normalized_input_and_raw_x_t(target):
  b = 0.5
  x0, noise, gamma = _toy_batch(1)
  x_t = diffusion.add_noise(x0, gamma, noise, b)
  seen = {}

  def net_fn(net_input, g, self_cond):
    seen['std'] = jnp.std(net_input, axis=(1, 2))
    return diffusion.make_target(x0, noise, g, target, b), self_cond

  eps_fn = diffusion.make_eps_fn(net_fn, pred_target=target, normalize_input=True, b=b)
  eps, sc = eps_fn(x_t, gamma, {'z': 3})
  np.testing.assert_allclose(eps, noise, atol=1e-5)
  np.testing.assert_allclose(seen['std'], 1., rtol=1e-3)
  assert sc == {'z': 3}


# --------------------------------------------------------------------------------------------------
# Training loss.
# --------------------------------------------------------------------------------------------------


def _gaussian_data(seed, n):
  """n samples [n, D] of N(μ, diag(s²)) (NumPy RNG: no XLA compiles)."""
  noise = np.random.default_rng(seed).standard_normal((n, MU.shape[0])).astype(np.float32)
  return MU + STD * jnp.asarray(noise)


@pytest.mark.parametrize('target', TARGETS)
def test_loss_gradient_vanishes_at_optimal_predictor(target):
  """pred = θ·E[target | x_t]: d loss / dθ ≈ 0 at θ = 1 (MSE optimality), clearly not at θ = 1.2."""
  b = 0.5
  x0 = _gaussian_data(2, 32_768)
  gamma_fn = schedules.get_gamma_fn('cosine')

  def loss_fn(theta):
    def net_fn(x_t, gamma, self_cond, key):
      del key
      return theta * optimal_pred(x_t, gamma, b, target), self_cond
    return diffusion.diffusion_loss(net_fn, x0, jax.random.PRNGKey(3), gamma_fn=gamma_fn, b=b,
                                    pred_target=target)[0]

  grad = jax.grad(loss_fn)  # eager: the ops compile once and are shared by all targets
  g_opt, g_off = float(grad(1.)), float(grad(1.2))
  assert abs(g_off) > 1e-3
  assert abs(g_opt) < 0.05 * abs(g_off), (g_opt, g_off)


@pytest.mark.parametrize('target', TARGETS)
@pytest.mark.parametrize('normalize_input', [False, True])
def test_loss_matches_hand_computation(target, normalize_input):
  b = 0.5
  x0 = np.array([[0.5, -0.25, 1.], [-1., 0., 0.75], [0.1, 0.2, -0.3], [0.9, -0.9, 0.]], np.float32)
  key = jax.random.PRNGKey(7)

  def net_fn(net_input, gamma, self_cond, key):
    del key
    return 0.5 * net_input + gamma[:, None], self_cond

  loss, aux = diffusion.diffusion_loss(net_fn, jnp.asarray(x0), key,
                                       gamma_fn=schedules.cosine_gamma, b=b, pred_target=target,
                                       normalize_input=normalize_input)
  # By hand, with the key usage documented in diffusion_loss.
  key_t, key_noise = jax.random.split(key, 5)[:2]
  t = np.asarray(jax.random.uniform(key_t, (4,)))
  noise = np.asarray(jax.random.normal(key_noise, (4, 3)))
  gamma = np.cos(t * np.pi / 2) ** 2
  g = gamma[:, None]
  x_t = np.sqrt(g) * b * x0 + np.sqrt(1. - g) * noise
  net_input = x_t / x_t.std(axis=1, keepdims=True) if normalize_input else x_t  # pix2seq
  pred = 0.5 * net_input + g
  tgt = {'eps': noise, 'x': x0, 'v': np.sqrt(g) * noise - np.sqrt(1. - g) * b * x0}[target]
  np.testing.assert_allclose(aux['t'], t, rtol=1e-6)
  np.testing.assert_allclose(aux['gamma'], gamma, rtol=1e-5)
  np.testing.assert_allclose(loss, np.mean((pred - tgt) ** 2), rtol=1e-5)


@pytest.mark.parametrize('normalize_input', [False, True])
def test_loss_normalizes_network_input(normalize_input):
  x0 = _gaussian_data(4, 4)[:, :3] * 3.
  seen = {}

  def net_fn(net_input, gamma, self_cond, key):
    seen['std'] = jnp.std(net_input, axis=1)
    return net_input, self_cond

  diffusion.diffusion_loss(net_fn, x0, jax.random.PRNGKey(5), gamma_fn=schedules.cosine_gamma, b=2.,
                           normalize_input=normalize_input)
  assert np.allclose(seen['std'], 1., rtol=1e-3) == normalize_input, seen['std']


def test_self_conditioning_by_masking_per_example_without_gradient():
  """pix2seq `add_self_cond_hidden(drop_rate=1 − rate)`: a first pass on the whole batch, its
  latents kept per example with probability `rate` (zeros otherwise), under stop-gradient; the two
  passes get different keys (their own dropout / label dropout)."""
  n, rate, theta = 20_000, 0.9, 2.
  x0 = jnp.zeros((n, 3))
  keys = []

  def net_fn(net_input, gamma, self_cond, key):
    keys.append(key)
    # Predicts its self-conditioning input (x target); the self_cond output is θ.
    return jnp.broadcast_to(self_cond[:, None], net_input.shape), theta * jnp.ones((n,))

  def loss(theta_):
    nonlocal theta
    theta = theta_
    return diffusion.diffusion_loss(net_fn, x0, jax.random.PRNGKey(0),
                                    gamma_fn=schedules.cosine_gamma, pred_target='x',
                                    self_cond_rate=rate, self_cond_init=jnp.zeros((n,)))[0]

  value, grad = jax.value_and_grad(loss)(2.)
  # loss = mean over examples of (kept·θ)² = fraction_kept · θ².
  fraction_kept = float(value) / 4.
  assert abs(fraction_kept - rate) < 4 * np.sqrt(rate * (1 - rate) / n)  # per example, not per batch
  assert 0 < fraction_kept < 1
  assert float(grad) == 0.  # stop-gradient through the first pass
  assert len(keys) == 2 and not np.array_equal(np.asarray(keys[0]), np.asarray(keys[1]))


def test_no_self_conditioning_is_one_pass():
  calls = []

  def net_fn(net_input, gamma, self_cond, key):
    calls.append(self_cond)
    return net_input, None

  diffusion.diffusion_loss(net_fn, jnp.zeros((4, 3)), jax.random.PRNGKey(0),
                           gamma_fn=schedules.cosine_gamma, self_cond_init=None)
  assert calls == [None]


def test_drop_labels():
  labels = jnp.arange(10_000, dtype=jnp.int32) % 10
  key = jax.random.PRNGKey(0)
  np.testing.assert_array_equal(diffusion.drop_labels(labels, key, 0., 10), labels)
  np.testing.assert_array_equal(diffusion.drop_labels(labels, key, 1., 10), 10)
  dropped = diffusion.drop_labels(labels, key, 0.3, 10)
  assert dropped.dtype == labels.dtype
  assert 0.28 < float(jnp.mean(dropped == 10)) < 0.32
  kept = dropped != 10
  np.testing.assert_array_equal(dropped[kept], labels[kept])


# --------------------------------------------------------------------------------------------------
# DPM-Solver++(2M): convergence order against the closed-form probability-flow ODE of Gaussian data.
#
# For x0 ~ N(μ, s²) per dimension, x_t = sqrt(γ)·b·x0 + sqrt(1 − γ)·ε has mean m = sqrt(γ)·b·μ and
# variance v = γ·b²·s² + 1 − γ, and the PF-ODE keeps the standardised value (x − m)/sqrt(v) fixed:
# x(t) = m(t) + sqrt(v(t)/v(1))·(x(1) − m(1)). The sampler returns the data prediction at t = 1/N,
# so the exact answer is E[y | x(1/N)]/b; its error is the ODE integration error from 1 to 1/N.
# --------------------------------------------------------------------------------------------------

ODE_MU, ODE_S = 0.3, 0.5


def _ode_gamma(lam):
  """γ for λ = ½·logSNR."""
  return 1. / (1. + jnp.exp(-2. * lam))


def _ode_stats(gamma, b):
  return jnp.sqrt(gamma) * b * ODE_MU, gamma * b * b * ODE_S ** 2 + 1. - gamma


def _ode_eps(x, gamma, b):
  m, v = _ode_stats(gamma[:, None], b)
  return jnp.sqrt(1. - gamma[:, None]) * (x - m) / v


def _ode_y(x, gamma, b):
  m, v = _ode_stats(gamma, b)
  return b * ODE_MU + jnp.sqrt(gamma) * b * b * ODE_S ** 2 * (x - m) / v


def _uneven_lambda_gamma_fn(num_steps, lam_min=-4., lam_max=4.):
  """A schedule whose λ-steps on the sampler's grid t_i = 1 − i/N alternate in width 1:2 (so the
  step ratio r of the multistep formula is 2 or ½, never → 1)."""
  widths = np.where(np.arange(num_steps) % 2 == 0, 1., 2.)
  lam = lam_min + np.concatenate([[0.], np.cumsum(widths)]) / widths.sum() * (lam_max - lam_min)
  t = 1. - np.arange(num_steps + 1) / num_steps
  return lambda tt: _ode_gamma(jnp.interp(tt, t[::-1], lam[::-1]))


def _endpoint_error(method, num_steps, b):
  gamma_fn = _uneven_lambda_gamma_fn(num_steps)
  key, shape = jax.random.PRNGKey(0), (512, 4)
  out = diffusion.sample(functools.partial(_ode_eps, b=b), shape, key, gamma_fn=gamma_fn,
                         num_steps=num_steps, method=method, b=b, clip_x0=False)
  x1 = jax.random.normal(jax.random.split(key)[0], shape)  # the sampler's x(1)
  (m1, v1), g_last = _ode_stats(gamma_fn(1.), b), gamma_fn(1. / num_steps)
  m_last, v_last = _ode_stats(g_last, b)
  x_last = m_last + jnp.sqrt(v_last / v1) * (x1 - m1)
  return float(jnp.sqrt(jnp.mean((out - _ode_y(x_last, g_last, b) / b) ** 2)))


@pytest.mark.parametrize('b', [1., 0.5])
def test_dpm_solver_pp_is_second_order_and_ddim_first_order(b):
  """Endpoint error ratio per doubling of N: ≈4 for DPM-Solver++(2M), ≈2 for DDIM (= its 1st order)."""
  with jax.enable_x64(True):
    ratios = {}
    for method in ('dpm_solver++', 'ddim'):
      errors = [_endpoint_error(method, n, b) for n in (32, 64, 128, 256)]
      ratios[method] = [errors[i] / errors[i + 1] for i in range(3)]
  assert all(3.5 < r < 4.5 for r in ratios['dpm_solver++'][1:]), ratios
  assert all(1.8 < r < 2.2 for r in ratios['ddim']), ratios


def _dpm_pp_step_r_swapped(x, y, y_prev, g_now, g_next, lam_prev, is_first):
  """A deliberately wrong DPM-Solver++(2M) step: 1/(2r) replaced by r/2 (r ↔ 1/r)."""
  lam_now, lam_next = 0.5 * schedules.logsnr(g_now), 0.5 * schedules.logsnr(g_next)
  r = (lam_now - lam_prev) / (lam_next - lam_now)
  d = jnp.where(is_first, y, (1. + r / 2.) * y - (r / 2.) * y_prev)
  a_now, s_now = jnp.sqrt(g_now), jnp.sqrt(1. - g_now)
  a_next, s_next = jnp.sqrt(g_next), jnp.sqrt(1. - g_next)
  return (s_next / s_now) * x + (a_next - s_next * a_now / s_now) * d, lam_now


def _local_error_ratios(step_fn, b=1., r=2., lam_now=0.3):
  """One step from the exact history (x(λ_now), y(λ_now), y(λ_now − r·h)) to λ_now + h: the
  error ratio when h halves, for h = 0.4 → 0.05 (O(h³) local error: ≈8; O(h²): ≈4)."""
  z = jnp.linspace(-2., 2., 9)
  exact_x = lambda lam: _ode_stats(_ode_gamma(lam), b)[0] + jnp.sqrt(
      _ode_stats(_ode_gamma(lam), b)[1]) * z
  errors = []
  for h in (0.4, 0.2, 0.1, 0.05):
    lam_prev, lam_next = lam_now - r * h, lam_now + h
    x = exact_x(lam_now)
    out, _ = step_fn(x, _ode_y(x, _ode_gamma(lam_now), b),
                     _ode_y(exact_x(lam_prev), _ode_gamma(lam_prev), b), _ode_gamma(lam_now),
                     _ode_gamma(lam_next), lam_prev, jnp.asarray(False))
    errors.append(float(jnp.abs(out - exact_x(lam_next)).max()))
  return [errors[i] / errors[i + 1] for i in range(3)]


@pytest.mark.parametrize('r', [2., 0.5])
def test_dpm_solver_pp_step_has_third_order_local_error_and_a_wrong_ratio_does_not(r):
  """Lu et al. 2022, Algorithm 2: D = (1 + 1/(2r))·y − 1/(2r)·y_prev with r = h_prev/h. On a
  smooth grid a swapped r still converges at second order globally (its first-order error terms
  telescope), so the swap is caught on the local error of a step with r ≠ 1."""
  with jax.enable_x64(True):
    right = _local_error_ratios(diffusion._dpm_solver_pp_step, r=r)  # pylint: disable=protected-access
    wrong = _local_error_ratios(_dpm_pp_step_r_swapped, r=r)
  third_order = lambda ratios: all(6.5 < q < 9.5 for q in ratios[1:])
  assert third_order(right), right
  assert not third_order(wrong), wrong  # the same criterion rejects the wrong variant
  assert all(3. < q < 5. for q in wrong[1:]), wrong  # ... whose local error is O(h²)
