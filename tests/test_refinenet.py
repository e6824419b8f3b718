"""Tests of the NCSNv2 RefineNets (Song & Ermon 2020) and their shared layers.

Forward passes use a small ngf to stay fast on 2 CPU cores; parameter counts at ngf=128 use
`jax.eval_shape` (no allocation).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncsn_rin.models import layers
from ncsn_rin.models import refinenet
from ncsn_rin.models.refinenet import NCSNv2, NCSNv2Deeper, NCSNv2Deepest


def _count(module, image_size):
  shapes = jax.eval_shape(module.init, jax.random.key(0),
                          jnp.zeros((1, image_size, image_size, module.num_channels)),
                          jnp.ones((1,)))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


# --- Official parameter count, re-derived from the PyTorch constructors in ermongroup/ncsnv2 -----

def _conv(cin, cout, k=3, bias=True):
  return k * k * cin * cout + (cout if bias else 0)


def _norm(c):  # InstanceNorm2dPlus(c, bias=True): alpha, gamma, beta
  return 3 * c


def _res(cin, cout, down=False, dilation=None):
  n = _norm(cin)
  if down:  # conv1: cin->cin, conv2: cin->cout, shortcut 3x3 (dilated) or 1x1 (ConvMeanPool)
    n += _conv(cin, cin) + _norm(cin) + _conv(cin, cout)
    n += _conv(cin, cout, k=3 if dilation else 1)
  else:
    n += _conv(cin, cout) + _norm(cout) + _conv(cout, cout)
    if cin != cout:
      n += _conv(cin, cout, k=3 if dilation else 1)
  return n


def _rcu(f, n_blocks, n_stages=2):
  return n_blocks * n_stages * _conv(f, f, bias=False)


def _refine(in_planes, f, start=False, end=False):
  n = sum(_rcu(c, 2) for c in in_planes) + _rcu(f, 3 if end else 1)
  n += 2 * _conv(f, f, bias=False)  # CRP, 2 stages
  if not start:
    n += sum(_conv(c, f) for c in in_planes)  # MSF
  return n


def _official_count(name, ngf=128, c=3):
  g = ngf
  n = _conv(c, g) + _norm(g) + _conv(g, c)  # begin_conv, normalizer, end_conv
  n += _res(g, g) * 2  # res1
  n += _res(g, 2 * g, down=True) + _res(2 * g, 2 * g)  # res2
  if name == 'ncsnv2':
    n += _res(2 * g, 2 * g, True, 2) + _res(2 * g, 2 * g, dilation=2)  # res3
    n += _res(2 * g, 2 * g, True, 4) + _res(2 * g, 2 * g, dilation=4)  # res4
    n += _refine([2 * g], 2 * g, start=True) + _refine([2 * g] * 2, 2 * g)
    n += _refine([2 * g] * 2, g) + _refine([g] * 2, g, end=True)
    return n
  n += _res(2 * g, 2 * g, True) + _res(2 * g, 2 * g)  # res3
  if name == 'ncsnv2_deepest':
    n += _res(2 * g, 2 * g, True) + _res(2 * g, 2 * g)  # res31
    n += _refine([2 * g] * 2, 2 * g)  # refine31
  n += _res(2 * g, 4 * g, True, 2) + _res(4 * g, 4 * g, dilation=2)  # res4
  n += _res(4 * g, 4 * g, True, 4) + _res(4 * g, 4 * g, dilation=4)  # res5
  n += _refine([4 * g], 4 * g, start=True) + _refine([4 * g] * 2, 2 * g)
  n += _refine([2 * g] * 2, 2 * g) + _refine([2 * g] * 2, g) + _refine([g] * 2, g, end=True)
  return n


@pytest.mark.parametrize('name,size,paper,exact', [
    ('ncsnv2', 32, 29.69e6, 29_694_083),
    ('ncsnv2_deeper', 128, 83.45e6, 83_445_379),
    ('ncsnv2_deepest', 256, 94.13e6, 94_132_611),
])
def test_parameter_counts(name, size, paper, exact):
  n = _count(refinenet.refinenet_from_name(name), size)
  assert n == exact
  assert n == _official_count(name)
  assert abs(n - paper) / paper < 1e-3
  assert _count(refinenet.refinenet_from_name(name), 64) == n  # independent of image size


# --- Forward passes ------------------------------------------------------------------------------

def _init_apply(model, x, sigma):
  params = model.init(jax.random.key(0), x, sigma)
  return params, jax.jit(model.apply)


@pytest.mark.parametrize('size', [32, 64])
def test_ncsnv2_output_shape(size):
  model = NCSNv2(ngf=8)
  x = jax.random.uniform(jax.random.key(1), (2, size, size, 3))
  sigma = jnp.array([0.5, 2.])
  params, apply = _init_apply(model, x, sigma)
  out = apply(params, x, sigma)
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert np.all(np.isfinite(out))


def test_deeper_output_shape_and_grayscale():
  model = NCSNv2Deeper(ngf=4, num_channels=1)
  x = jax.random.uniform(jax.random.key(1), (1, 96, 96, 1))
  params, apply = _init_apply(model, x, jnp.ones((1,)))
  out = apply(params, x, jnp.ones((1,)))
  assert out.shape == x.shape and np.all(np.isfinite(out))


def test_deepest_output_shape_eval_shape():
  model = NCSNv2Deepest(ngf=128)
  x = jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32)
  sigma = jax.ShapeDtypeStruct((2,), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.key(0), x, sigma)
  out = jax.eval_shape(model.apply, params, x, sigma)
  assert out.shape == (2, 256, 256, 3) and out.dtype == jnp.float32


def test_one_over_sigma_scaling():
  """Technique 3: s(x, σ1)·σ1 == s(x, σ2)·σ2 — σ enters only as the final division."""
  model = NCSNv2(ngf=8)
  x = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3))
  s1, s2 = jnp.array([0.5, 4.]), jnp.array([8., 0.125])  # powers of two: exact in float
  params, apply = _init_apply(model, x, s1)
  out1, out2 = apply(params, x, s1), apply(params, x, s2)
  np.testing.assert_array_equal(out1 * s1[:, None, None, None], out2 * s2[:, None, None, None])
  s3 = jnp.array([0.01, 37.3])  # arbitrary σ: equal up to one rounding
  out3 = apply(params, x, s3)
  np.testing.assert_allclose(out3 * s3[:, None, None, None], out1 * s1[:, None, None, None],
                             rtol=1e-6, atol=1e-7)


def test_data_centered_mapping():
  """data_centered=False on x ∈ [0, 1] equals data_centered=True on 2x − 1 (same parameters)."""
  x = jax.random.uniform(jax.random.key(3), (2, 32, 32, 3))
  sigma = jnp.array([1., 0.25])
  raw, centered = NCSNv2(ngf=8), NCSNv2(ngf=8, data_centered=True)
  params, apply_raw = _init_apply(raw, x, sigma)
  out_raw = apply_raw(params, x, sigma)
  out_centered = jax.jit(centered.apply)(params, 2. * x - 1., sigma)
  np.testing.assert_allclose(out_raw, out_centered, rtol=1e-6, atol=1e-6)
  assert not np.allclose(out_raw, jax.jit(centered.apply)(params, x, sigma))


def test_remat_matches_and_bfloat16_runs():
  x = jax.random.uniform(jax.random.key(4), (1, 16, 16, 3))
  sigma = jnp.ones((1,))
  params, apply = _init_apply(NCSNv2(ngf=4), x, sigma)
  out = apply(params, x, sigma)
  out_remat = jax.jit(NCSNv2(ngf=4, remat=True).apply)(params, x, sigma)
  np.testing.assert_allclose(out, out_remat, rtol=1e-5, atol=1e-5)
  out_bf16 = jax.jit(NCSNv2(ngf=4, dtype=jnp.bfloat16).apply)(params, x, sigma)
  assert out_bf16.dtype == jnp.float32 and np.all(np.isfinite(out_bf16))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))


# --- Layers --------------------------------------------------------------------------------------

def _instance_norm_plus_numpy(x, alpha, gamma, beta, eps=1e-5):
  """Official InstanceNorm2dPlus.forward, transcribed to NHWC numpy (float64)."""
  x = x.astype(np.float64)
  means = x.mean(axis=(1, 2))                                   # torch.mean(x, dim=(2, 3))
  m = means.mean(axis=-1, keepdims=True)
  v = means.var(axis=-1, keepdims=True, ddof=1)                 # torch.var: unbiased
  means = (means - m) / np.sqrt(v + eps)
  h = (x - x.mean(axis=(1, 2), keepdims=True)) / np.sqrt(x.var(axis=(1, 2), keepdims=True) + eps)
  h = h + means[:, None, None, :] * alpha
  return gamma * h + beta


def test_instance_norm_plus_matches_numpy():
  x = 3. * jax.random.normal(jax.random.key(5), (3, 7, 5, 6)) + jnp.arange(6.)
  norm = layers.InstanceNormPlus()
  params = norm.init(jax.random.key(6), x)
  p = params['params']
  p = dict(p, beta=jax.random.normal(jax.random.key(7), (6,)))  # non-trivial beta
  out = norm.apply({'params': p}, x)
  ref = _instance_norm_plus_numpy(np.asarray(x), *(np.asarray(p[k]) for k in
                                                   ('alpha', 'gamma', 'beta')))
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  # Official init: alpha, gamma ~ N(1, 0.02), beta = 0.
  for k in ('alpha', 'gamma'):
    assert abs(float(params['params'][k].mean()) - 1.) < 0.05
  np.testing.assert_array_equal(params['params']['beta'], 0.)


def test_resize_bilinear_align_corners():
  x = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(1, 3, 4, 2)  # linear in h and w
  out = layers.resize_bilinear_align_corners(x, (5, 7))
  hh = np.linspace(0, 2, 5)[:, None]  # corners map to corners
  ww = np.linspace(0, 3, 7)[None, :]
  for c in range(2):
    np.testing.assert_allclose(out[0, :, :, c], 8 * hh + 2 * ww + c, rtol=1e-6, atol=1e-5)
  assert layers.resize_bilinear_align_corners(x, (3, 4)) is x


@pytest.mark.parametrize('resample,dilation,out_hw', [
    (None, None, 8), ('down', None, 4), ('down', 2, 8), (None, 4, 8)])
def test_residual_block_resolution(resample, dilation, out_hw):
  block = layers.ResidualBlock(6, resample=resample, dilation=dilation)
  x = jnp.zeros((1, 8, 8, 4))
  params = jax.eval_shape(block.init, jax.random.key(0), x)
  assert jax.eval_shape(block.apply, params, x).shape == (1, out_hw, out_hw, 6)


def test_torch_default_init_bounds():
  conv = layers.Conv2d(16, 3)
  params = conv.init(jax.random.key(0), jnp.zeros((1, 4, 4, 8)))['params']['conv']
  bound = 1. / np.sqrt(8 * 9)
  assert float(jnp.abs(params['kernel']).max()) <= bound
  assert float(jnp.abs(params['bias']).max()) <= bound
  assert float(jnp.abs(params['kernel']).max()) > 0.9 * bound


# --- Factory -------------------------------------------------------------------------------------

def test_factory_and_default_for_size():
  assert isinstance(refinenet.refinenet_from_name('ncsnv2', ngf=8), NCSNv2)
  assert isinstance(refinenet.refinenet_from_name('ncsnv2_deeper'), NCSNv2Deeper)
  assert refinenet.refinenet_from_name('ncsnv2_deepest', num_channels=1).num_channels == 1
  with pytest.raises(ValueError, match='ncsnv2_deeper'):
    refinenet.refinenet_from_name('ncsnv3')
  assert [refinenet.default_refinenet_for_size(s) for s in (28, 32, 64, 96, 128, 256)] == [
      'ncsnv2', 'ncsnv2', 'ncsnv2', 'ncsnv2_deeper', 'ncsnv2_deeper', 'ncsnv2_deepest']
