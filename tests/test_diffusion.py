"""Tests of ncsn_rin.diffusion: parameterisations, the Chen 2023 loss and the DDPM / DDIM / DPM-Solver++
samplers, checked against the closed-form answers of Gaussian data.

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
  return b * MU + jnp.sqrt(g) * b * b * STD ** 2 * (x_t - jnp.sqrt(g) * b * MU) / _denominator(gamma, b)


def optimal_pred(x_t, gamma, b, target):
  """E[target | x_t] for 'eps', 'x' (data units) and 'v'."""
  eps, y = optimal_eps(x_t, gamma, b), optimal_y(x_t, gamma, b)
  g = gamma[:, None]
  return {'eps': eps, 'x': y / b, 'v': jnp.sqrt(g) * eps - jnp.sqrt(1. - g) * y}[target]


def final_std_ratio(gamma_fn, num_steps, b):
  """Std of E[y | x_{t_last}] over std of y, t_last = 1/N: the exact output of an exact sampler.

  The sampler returns the last x0 prediction, a posterior mean, so even an exact solver is short of s
  by this factor; the configurations below are chosen so that it is >= 0.975.
  """
  g = float(gamma_fn(1. / num_steps))
  var = g * b * b * STD ** 2
  return np.sqrt(var / (var + 1. - g))


# ----------------------------------------------------------------------------------------------------
# Samplers against the analytic answer.
# ----------------------------------------------------------------------------------------------------

SAMPLER_CONFIGS = [
    # method, num_steps, b, sample schedule, ddpm_variance, clip_x0
    ('ddpm', 1000, 1.0, 'linear', 'large', False),
    ('ddpm', 1000, 0.5, 'sigmoid@-3,3,0.9', 'large', False),
    ('ddpm', 1000, 1.0, 'cosine', 'small', True),
    ('ddim', 250, 1.0, 'sigmoid@-3,3,0.9', 'large', False),
    ('ddim', 250, 0.5, 'cosine', 'large', False),
    ('dpm_solver++', 50, 1.0, 'cosine', 'large', False),
    ('dpm_solver++', 50, 0.5, 'cosine@0,1,0.5', 'large', True),
]


@pytest.mark.parametrize('method, num_steps, b, spec, variance, clip', SAMPLER_CONFIGS)
def test_sampler_reproduces_gaussian(method, num_steps, b, spec, variance, clip):
  gamma_fn = schedules.get_gamma_fn(spec)
  assert np.all(final_std_ratio(gamma_fn, num_steps, b) >= 0.975)
  run = jax.jit(functools.partial(
      diffusion.sample, functools.partial(optimal_eps, b=b), (NUM_SAMPLES, MU.shape[0]),
      gamma_fn=gamma_fn, num_steps=num_steps, method=method, b=b, clip_x0=clip,
      ddpm_variance=variance))
  x0 = np.asarray(run(jax.random.PRNGKey(1)))
  assert x0.shape == (NUM_SAMPLES, MU.shape[0]) and np.all(np.isfinite(x0))
  np.testing.assert_allclose(x0.mean(0), MU, atol=0.02)
  np.testing.assert_allclose(x0.std(0) / STD, 1., atol=0.05)


def test_sample_self_cond_is_carried():
  """denoise_fn counts its calls in self_cond and predicts y = b·count, so x0 = num_steps."""
  num_steps, batch, b = 7, 3, 0.5

  def denoise_fn(x_t, gamma, self_cond):
    count = self_cond['count'] + 1.
    g = gamma[:, None]
    eps = (x_t - jnp.sqrt(g) * b * count[:, None]) / jnp.sqrt(1. - g)
    return eps, {'count': count, 'extra': (self_cond['extra'][0] + 2.,)}

  init = {'count': jnp.zeros((batch,)), 'extra': (jnp.zeros((batch, 2)),)}
  for method in diffusion.SAMPLE_METHODS:
    x0 = diffusion.sample(denoise_fn, (batch, 2), jax.random.PRNGKey(0), gamma_fn=schedules.cosine_gamma,
                          num_steps=num_steps, method=method, b=b, clip_x0=False, self_cond_init=init)
    np.testing.assert_allclose(x0, float(num_steps), rtol=1e-3, err_msg=method)


def test_sample_traces_once_under_jit():
  """The step loop is one lax.scan: denoise_fn is traced a constant number of times, not num_steps."""
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
  run = jax.jit(functools.partial(diffusion.sample, denoise_fn, (8, 4), gamma_fn=schedules.cosine_gamma,
                                  num_steps=100, method='dpm_solver++'))
  out = run(jax.random.PRNGKey(0), b=jnp.float32(1.))
  assert len(traces) == 1
  assert out.shape == (8, 4) and bool(jnp.all(jnp.abs(out) <= 1.))


@pytest.mark.parametrize('kwargs, match', [
    (dict(method='euler'), r"sample method must be one of \('ddpm', 'ddim', 'dpm_solver\+\+'\), got 'euler'"),
    (dict(ddpm_variance='medium'), r"ddpm_variance must be one of \('large', 'small'\), got 'medium'"),
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


# ----------------------------------------------------------------------------------------------------
# Parameterisations.
# ----------------------------------------------------------------------------------------------------


def _toy_batch(key, shape=(4, 3, 2)):
  k1, k2, k3 = jax.random.split(key, 3)
  x0 = jax.random.uniform(k1, shape, minval=-1., maxval=1.)
  noise = jax.random.normal(k2, shape)
  gamma = jax.random.uniform(k3, (shape[0],), minval=0.05, maxval=0.95)
  return x0, noise, gamma


@pytest.mark.parametrize('target', diffusion.PRED_TARGETS)
@pytest.mark.parametrize('b', [1., 0.5])
def test_target_conversions_round_trip(target, b):
  x0, noise, gamma = _toy_batch(jax.random.PRNGKey(0))
  x_t = diffusion.add_noise(x0, gamma, noise, b)
  np.testing.assert_allclose(
      x_t, jnp.sqrt(gamma)[:, None, None] * b * x0 + jnp.sqrt(1. - gamma)[:, None, None] * noise,
      rtol=1e-6)
  pred = diffusion.make_target(x0, noise, gamma, target, b)
  np.testing.assert_allclose(diffusion.pred_to_eps(pred, x_t, gamma, target, b), noise, atol=1e-5)
  np.testing.assert_allclose(diffusion.pred_to_x0(pred, x_t, gamma, target, b), x0, atol=1e-5)


def test_unknown_target_raises():
  x0, noise, gamma = _toy_batch(jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r"pred_target must be one of \('eps', 'x', 'v'\), got 'score'"):
    diffusion.make_target(x0, noise, gamma, 'score')
  with pytest.raises(ValueError, match=r"got 'y'"):
    diffusion.make_eps_fn(lambda *a: a, pred_target='y')


def test_normalize_variance():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 3)) * jnp.array([0.1, 1., 5.])[:, None, None, None]
  out = diffusion.normalize_variance(x)
  assert out.shape == x.shape
  np.testing.assert_allclose(jnp.std(out, axis=(1, 2, 3)), 1., rtol=1e-3)
  np.testing.assert_allclose(out / x, (out / x)[:, :1, :1, :1] * jnp.ones_like(x), rtol=1e-5)


@pytest.mark.parametrize('target', diffusion.PRED_TARGETS)
def test_make_eps_fn_uses_normalized_input_and_raw_x_t(target):
  b = 0.5
  x0, noise, gamma = _toy_batch(jax.random.PRNGKey(1))
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


# ----------------------------------------------------------------------------------------------------
# Training loss.
# ----------------------------------------------------------------------------------------------------


def _gaussian_data(key, n):
  return MU + STD * jax.random.normal(key, (n, MU.shape[0]))


@pytest.mark.parametrize('target', diffusion.PRED_TARGETS)
def test_loss_gradient_vanishes_at_optimal_predictor(target):
  """pred = θ·E[target | x_t]: d loss / dθ ≈ 0 at θ = 1 (MSE optimality), clearly not at θ = 1.2."""
  b = 0.5
  x0 = _gaussian_data(jax.random.PRNGKey(2), 32_768)
  gamma_fn = schedules.get_gamma_fn('cosine')

  def loss_fn(theta):
    def net_fn(x_t, gamma, self_cond):
      return theta * optimal_pred(x_t, gamma, b, target), self_cond
    return diffusion.diffusion_loss(net_fn, x0, jax.random.PRNGKey(3), gamma_fn=gamma_fn, b=b,
                                    pred_target=target)[0]

  grad = jax.jit(jax.grad(loss_fn))
  g_opt, g_off = float(grad(1.)), float(grad(1.2))
  assert abs(g_off) > 1e-3
  assert abs(g_opt) < 0.05 * abs(g_off), (g_opt, g_off)


@pytest.mark.parametrize('target', diffusion.PRED_TARGETS)
@pytest.mark.parametrize('normalize_input', [False, True])
def test_loss_matches_hand_computation(target, normalize_input):
  b = 0.5
  x0 = np.array([[0.5, -0.25, 1.], [-1., 0., 0.75]], np.float32)
  key = jax.random.PRNGKey(7)

  def net_fn(net_input, gamma, self_cond):
    return 0.5 * net_input + gamma[:, None], self_cond

  loss, aux = jax.jit(functools.partial(
      diffusion.diffusion_loss, net_fn, gamma_fn=schedules.cosine_gamma, b=b, pred_target=target,
      normalize_input=normalize_input))(jnp.asarray(x0), key)
  # By hand, with the key usage documented in diffusion_loss.
  key_t, key_noise, _ = jax.random.split(key, 3)
  t = np.asarray(jax.random.uniform(key_t, (2,)))
  noise = np.asarray(jax.random.normal(key_noise, (2, 3)))
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
  x0 = _gaussian_data(jax.random.PRNGKey(4), 64).reshape(8, 8, 4) * 3.
  seen = {}

  def net_fn(net_input, gamma, self_cond):
    seen['std'] = jnp.std(net_input, axis=(1, 2))
    return net_input, self_cond

  @jax.jit
  def input_std(key):
    diffusion.diffusion_loss(net_fn, x0, key, gamma_fn=schedules.cosine_gamma, b=2.,
                             normalize_input=normalize_input)
    return seen['std']

  std = input_std(jax.random.PRNGKey(5))
  assert np.allclose(std, 1., rtol=1e-3) == normalize_input, std


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
  (loss, aux), grad = jax.jit(jax.value_and_grad(_self_cond_loss, has_aux=True), static_argnums=1)(
      2., 1., key)
  assert bool(aux['self_cond_used'])
  np.testing.assert_allclose(loss, 4., rtol=1e-6)
  assert float(grad) == 0.
  # Never: the second pass sees self_cond_init.
  loss, aux = jax.jit(_self_cond_loss, static_argnums=1)(2., 0., key)
  assert not bool(aux['self_cond_used'])
  np.testing.assert_allclose(loss, 0., atol=1e-7)
  # One coin per batch, with probability self_cond_rate.
  keys = jax.random.split(jax.random.PRNGKey(1), 400)
  used = jax.jit(jax.vmap(lambda k: _self_cond_loss(2., 0.3, k)[1]['self_cond_used']))(keys)
  assert 0.22 < float(jnp.mean(used)) < 0.38


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
