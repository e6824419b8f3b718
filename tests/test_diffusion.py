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
  for method in diffusion.SAMPLE_METHODS:
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
    for method in diffusion.SAMPLE_METHODS:
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


@pytest.mark.parametrize('kwargs, match', [
    (dict(method='euler'),
     r"sample method must be one of \('ddpm', 'ddim', 'dpm_solver\+\+'\), got 'euler'"),
    (dict(ddpm_variance='medium'),
     r"ddpm_variance must be one of \('large', 'small'\), got 'medium'"),
    (dict(num_steps=0), r'num_steps must be a Python int >= 1, got 0'),
    (dict(num_steps=2.5), r'num_steps must be a Python int >= 1, got 2.5'),
    (dict(b=0.), r'input scale b must be a finite number > 0, got 0.0'),
    (dict(time_difference=-1.), r'time_difference must be a finite number >= 0.*got -1.0'),
])
def test_sample_validation(kwargs, match):
  args = dict(gamma_fn=schedules.cosine_gamma, num_steps=4)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    diffusion.sample(lambda x, g: x, (2, 3), jax.random.PRNGKey(0), **args)


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


@pytest.mark.parametrize('target', diffusion.PRED_TARGETS)
@pytest.mark.parametrize('b', [1., 0.5])
def test_target_conversions_round_trip(target, b):
  x0, noise, gamma = _toy_batch(0)
  x_t = diffusion.add_noise(x0, gamma, noise, b)
  np.testing.assert_allclose(
      x_t, jnp.sqrt(gamma)[:, None, None] * b * x0 + jnp.sqrt(1. - gamma)[:, None, None] * noise,
      rtol=1e-6)
  pred = diffusion.make_target(x0, noise, gamma, target, b)
  np.testing.assert_allclose(diffusion.pred_to_eps(pred, x_t, gamma, target, b), noise, atol=1e-5)
  np.testing.assert_allclose(diffusion.pred_to_x0(pred, x_t, gamma, target, b), x0, atol=1e-5)


def test_unknown_target_raises():
  x0, noise, gamma = _toy_batch(0)
  match = r"pred_target must be one of \('eps', 'x', 'v'\), got 'score'"
  with pytest.raises(ValueError, match=match):
    diffusion.make_target(x0, noise, gamma, 'score')
  with pytest.raises(ValueError, match=r"got 'y'"):
    diffusion.make_eps_fn(lambda *a: a, pred_target='y')


def test_normalize_variance():
  scale = np.array([0.1, 1., 5.])[:, None, None, None]
  x = np.random.default_rng(0).standard_normal((3, 8, 8, 3)) * scale
  x = jnp.asarray(x, jnp.float32)
  out = diffusion.normalize_variance(x)
  assert out.shape == x.shape
  np.testing.assert_allclose(jnp.std(out, axis=(1, 2, 3)), 1., rtol=1e-3)
  np.testing.assert_allclose(out / x, (out / x)[:, :1, :1, :1] * jnp.ones_like(x), rtol=1e-5)


@pytest.mark.parametrize('target', diffusion.PRED_TARGETS)
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


@pytest.mark.parametrize('target', diffusion.PRED_TARGETS)
def test_loss_gradient_vanishes_at_optimal_predictor(target):
  """pred = θ·E[target | x_t]: d loss / dθ ≈ 0 at θ = 1 (MSE optimality), clearly not at θ = 1.2."""
  b = 0.5
  x0 = _gaussian_data(2, 32_768)
  gamma_fn = schedules.get_gamma_fn('cosine')

  def loss_fn(theta):
    def net_fn(x_t, gamma, self_cond):
      return theta * optimal_pred(x_t, gamma, b, target), self_cond
    return diffusion.diffusion_loss(net_fn, x0, jax.random.PRNGKey(3), gamma_fn=gamma_fn, b=b,
                                    pred_target=target)[0]

  grad = jax.grad(loss_fn)  # eager: the ops compile once and are shared by all targets
  g_opt, g_off = float(grad(1.)), float(grad(1.2))
  assert abs(g_off) > 1e-3
  assert abs(g_opt) < 0.05 * abs(g_off), (g_opt, g_off)


@pytest.mark.parametrize('target', diffusion.PRED_TARGETS)
@pytest.mark.parametrize('normalize_input', [False, True])
def test_loss_matches_hand_computation(target, normalize_input):
  b = 0.5
  x0 = np.array([[0.5, -0.25, 1.], [-1., 0., 0.75], [0.1, 0.2, -0.3], [0.9, -0.9, 0.]], np.float32)
  key = jax.random.PRNGKey(7)

  def net_fn(net_input, gamma, self_cond):
    return 0.5 * net_input + gamma[:, None], self_cond

  loss, aux = diffusion.diffusion_loss(net_fn, jnp.asarray(x0), key,
                                       gamma_fn=schedules.cosine_gamma, b=b, pred_target=target,
                                       normalize_input=normalize_input)
  # By hand, with the key usage documented in diffusion_loss.
  key_t, key_noise, _ = jax.random.split(key, 3)
  t = np.asarray(jax.random.uniform(key_t, (4,)))
  noise = np.asarray(jax.random.normal(key_noise, (4, 3)))
  gamma = np.cos(t * np.pi / 2) ** 2
  g = gamma[:, None]
  x_t = np.sqrt(g) * b * x0 + np.sqrt(1. - g) * noise
  net_input = x_t / np.sqrt(x_t.var(axis=1, keepdims=True) + 1e-5) if normalize_input else x_t
  pred = 0.5 * net_input + g
  tgt = {'eps': noise, 'x': x0, 'v': np.sqrt(g) * noise - np.sqrt(1. - g) * b * x0}[target]
  np.testing.assert_allclose(aux['t'], t, rtol=1e-6)
  np.testing.assert_allclose(aux['gamma'], gamma, rtol=1e-5)
  np.testing.assert_allclose(loss, np.mean((pred - tgt) ** 2), rtol=1e-5)
  assert not bool(aux['self_cond_used'])


@pytest.mark.parametrize('normalize_input', [False, True])
def test_loss_normalizes_network_input(normalize_input):
  x0 = _gaussian_data(4, 4)[:, :3] * 3.
  seen = {}

  def net_fn(net_input, gamma, self_cond):
    seen['std'] = jnp.std(net_input, axis=1)
    return net_input, self_cond

  diffusion.diffusion_loss(net_fn, x0, jax.random.PRNGKey(5), gamma_fn=schedules.cosine_gamma, b=2.,
                           normalize_input=normalize_input)
  assert np.allclose(seen['std'], 1., rtol=1e-3) == normalize_input, seen['std']


def _self_cond_loss(theta, rate, key):
  """net_fn predicts its self_cond input; its self_cond output is θ·ones."""
  x0 = jnp.zeros((4, 3))

  def net_fn(net_input, gamma, self_cond):
    return jnp.broadcast_to(self_cond['h'], net_input.shape), {'h': theta * jnp.ones((3,))}

  return diffusion.diffusion_loss(net_fn, x0, key, gamma_fn=schedules.cosine_gamma, pred_target='x',
                                  self_cond_rate=rate, self_cond_init={'h': jnp.zeros((3,))})


def test_self_conditioning_in_loss():
  key = jax.random.PRNGKey(0)
  # Always: the second pass sees the first pass's output θ, without gradient.
  (loss, aux), grad = jax.value_and_grad(_self_cond_loss, has_aux=True)(2., 1., key)
  assert bool(aux['self_cond_used'])
  np.testing.assert_allclose(loss, 4., rtol=1e-6)
  assert float(grad) == 0.
  # Never: the second pass sees self_cond_init.
  loss, aux = _self_cond_loss(2., 0., key)
  assert not bool(aux['self_cond_used'])
  np.testing.assert_allclose(loss, 0., atol=1e-7)
  # One coin per batch: uniform(key_sc) < self_cond_rate, key_sc = split(key, 3)[2].
  flags = []
  for seed in range(12):
    key = jax.random.PRNGKey(seed)
    loss, aux = _self_cond_loss(2., 0.5, key)
    coin = bool(jax.random.uniform(jax.random.split(key, 3)[2], ()) < 0.5)
    assert bool(aux['self_cond_used']) == coin
    np.testing.assert_allclose(loss, 4. if coin else 0., rtol=1e-6)
    flags.append(coin)
  assert 0 < sum(flags) < len(flags)


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
