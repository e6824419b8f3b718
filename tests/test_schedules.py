"""Tests of ncsn_rin.schedules (Chen 2023, Algorithm 1 schedules, logSNR and input scaling)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncsn_rin import schedules

SPECS = ['linear', 'cosine', 'sigmoid', 'cosine@0.2,1,1', 'cosine@0,1,0.5', 'sigmoid@-3,3,0.9',
         'sigmoid@0,3,0.3', 'sigmoid@-3,3,1.1']


@pytest.mark.parametrize('spec', SPECS)
def test_endpoints_and_range(spec):
  fn = schedules.get_gamma_fn(spec)
  np.testing.assert_allclose(fn(0.), 1., atol=1e-6)
  assert float(fn(1.)) < 1e-6
  t = jnp.linspace(0., 1., 1001)
  g = fn(t)
  assert g.shape == t.shape
  assert bool(jnp.all(g >= 1e-9)) and bool(jnp.all(g <= 1.))


@pytest.mark.parametrize('spec', SPECS)
def test_monotone_decreasing(spec):
  g = np.asarray(schedules.get_gamma_fn(spec)(jnp.linspace(0., 1., 1001)))
  assert np.all(np.diff(g) <= 1e-7)
  assert g[0] - g[-1] > 0.99


@pytest.mark.parametrize('spec', SPECS)
def test_vectorised_and_jittable(spec):
  fn = schedules.get_gamma_fn(spec)
  t = jnp.linspace(0., 1., 12).reshape(3, 4)
  np.testing.assert_allclose(jax.jit(fn)(t), fn(t), rtol=1e-6)
  np.testing.assert_allclose(fn(t)[1, 2], fn(t[1, 2]), rtol=1e-6)


def test_clipping():
  np.testing.assert_allclose(schedules.linear_gamma(1.), 1e-9)
  np.testing.assert_allclose(schedules.linear_gamma(1., clip_min=1e-3), 1e-3)
  np.testing.assert_allclose(schedules.linear_gamma(jnp.array([-0.5, 1.5])), [1., 1e-9])
  np.testing.assert_allclose(schedules.cosine_gamma(1., clip_min=1e-4), 1e-4)
  np.testing.assert_allclose(schedules.sigmoid_gamma(1., clip_min=1e-4), 1e-4)
  np.testing.assert_allclose(schedules.sigmoid_gamma(1.), 1e-9, rtol=1e-3)


def test_pinned_values():
  sigmoid = schedules.get_gamma_fn('sigmoid@-3,3,0.9')
  np.testing.assert_allclose(sigmoid(0.25), 0.86637, atol=1e-4)
  np.testing.assert_allclose(sigmoid(0.9), 0.03278, atol=1e-4)
  np.testing.assert_allclose(schedules.get_gamma_fn('cosine@0.2,1,1')(0.5), 0.38197, atol=1e-4)
  np.testing.assert_allclose(schedules.get_gamma_fn('linear')(0.3), 0.7, atol=1e-6)
  # Plain cosine = cos(t·π/2)².
  np.testing.assert_allclose(schedules.get_gamma_fn('cosine')(0.3), math.cos(0.15 * math.pi) ** 2,
                             atol=1e-6)


def test_parser_round_trips():
  t = jnp.linspace(0., 1., 17)
  pairs = [
      ('linear', schedules.linear_gamma),
      ('cosine', schedules.cosine_gamma),
      ('sigmoid', schedules.sigmoid_gamma),
      ('cosine@0.2,1,1', lambda t: schedules.cosine_gamma(t, 0.2, 1., 1.)),
      ('  cosine@0.2, 1, 2 ', lambda t: schedules.cosine_gamma(t, 0.2, 1., 2.)),
      ('sigmoid@-3,3,0.9', lambda t: schedules.sigmoid_gamma(t, -3., 3., 0.9)),
      ('sigmoid@0,3,0.3', lambda t: schedules.sigmoid_gamma(t, 0., 3., 0.3)),
  ]
  for spec, ref in pairs:
    np.testing.assert_allclose(schedules.get_gamma_fn(spec)(t), ref(t), rtol=1e-6, err_msg=spec)


@pytest.mark.parametrize('spec, match', [
    ('sigmoid@3,-3,1', r"'sigmoid@3,-3,1'.*start \(3.0\) must be < end \(-3.0\).*sigmoid@-3,3,0.9"),
    ('sigmoid@1,1,1', r'start \(1.0\) must be < end \(1.0\)'),
    ('cosine@1,0.2,1', r"'cosine@1,0.2,1'.*start \(1.0\) must be < end \(0.2\).*cosine@0.2,1,1"),
    ('cosine@0.2,1,0', r'tau \(0.0\) must be > 0'),
    ('sigmoid@-3,3,-1', r'tau \(-1.0\) must be > 0'),
    ('cosine@-0.5,1,1', r'0 <= start < end <= 1'),
    ('cosine@0,1.5,1', r'0 <= start < end <= 1'),
    ('sigmoid@-3,3', r"three comma-separated numbers 'start,end,tau'"),
    ('sigmoid@', r"three comma-separated numbers"),
    ('cosine@a,b,c', r"must be numbers, got 'a,b,c'"),
    ('sigmoid@-3,inf,1', r'must be finite'),
    ('linear@0,1,1', r"'linear' takes no parameters"),
    ('quadratic', r"unknown schedule 'quadratic'.*one of \('linear', 'cosine', 'sigmoid'\)"),
    ('', r'unknown schedule'),
    (None, r'schedule must be a string, got None'),
])
def test_parser_errors(spec, match):
  with pytest.raises(ValueError, match=match):
    schedules.get_gamma_fn(spec)


def test_logsnr_and_shift():
  g = jnp.array([0.1, 0.5, 0.9, 0.99])
  np.testing.assert_allclose(schedules.logsnr(g), np.log(np.asarray(g) / (1. - np.asarray(g))),
                             rtol=1e-5)
  for b in (0.25, 0.5, 2.):
    np.testing.assert_allclose(schedules.logsnr(g, b) - schedules.logsnr(g), 2. * math.log(b),
                               rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(schedules.logsnr(0.5), 0., atol=1e-7)
  assert float(schedules.logsnr(1.)) == float('inf')


def test_gamma_from_logsnr_inverse():
  g = jnp.array([1e-4, 0.1, 0.5, 0.9, 0.999])
  for b in (1., 0.5):
    np.testing.assert_allclose(schedules.gamma_from_logsnr(schedules.logsnr(g, b), b), g, rtol=1e-4)
