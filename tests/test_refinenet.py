"""Tests of the NCSNv2 RefineNets (Song & Ermon 2020) and their shared layers.

Forward passes use a small ngf to stay fast on 2 CPU cores; parameter counts at ngf=128 use
`jax.eval_shape` (no allocation). Forward tests fill the parameter shapes from `eval_shape(init)`
with numpy random values: on CPU, XLA takes a minute or more to compile the ~160 PRNG calls of
a jitted RefineNet `init` (the forward pass itself compiles in seconds), so a real `model.init`
is only run on small layers here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncsn_rin.models import layers
from ncsn_rin.models import refinenet
from ncsn_rin.models.refinenet import NCSNv2, NCSNv2Deeper, NCSNv2Deepest


# Real `init` calls use an 'rbg' key: on this CPU setup the first threefry call alone compiles for
# ~20 s, rbg in < 1 s. The initialisers are the same code for either key type.
_RBG_KEY = jax.random.key(0, impl='rbg')


def _uniform(shape, seed=1):
  """Images in [0, 1] (numpy RNG, for the same reason)."""
  return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


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
  if name == 'ncsnv2':
    assert _count(refinenet.refinenet_from_name(name), 64) == n  # independent of image size


# --- Forward passes ------------------------------------------------------------------------------

def _init_apply(model, x, sigma):
  """Parameters of the right shapes (PyTorch-like scales, no flax init) and the jitted apply."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), x, sigma)
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      bound = 1. / np.sqrt(np.prod(leaf.shape[:-1]))
      value = rng.uniform(-bound, bound, leaf.shape)
    elif name in ('alpha', 'gamma'):
      value = 1. + 0.02 * rng.standard_normal(leaf.shape)
    else:  # conv biases, InstanceNorm++ beta
      value = rng.uniform(-0.1, 0.1, leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes), jax.jit(model.apply)


@pytest.fixture(scope='module')
def ncsnv2_32():
  """NCSNv2(ngf=8) on [2, 32, 32, 3]: (x, params, jitted apply), compiled once for the module."""
  x = _uniform((2, 32, 32, 3))
  params, apply = _init_apply(NCSNv2(ngf=8), x, jnp.ones((2,)))
  return x, params, apply


def test_ncsnv2_output_shape_32(ncsnv2_32):
  x, params, apply = ncsnv2_32
  out = apply(params, x, jnp.array([0.5, 2.]))
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert np.all(np.isfinite(out))


def test_ncsnv2_output_shape_64():
  model = NCSNv2(ngf=8)
  x = _uniform((1, 64, 64, 3))
  params, apply = _init_apply(model, x, jnp.ones((1,)))
  out = apply(params, x, jnp.ones((1,)))
  assert out.shape == x.shape and np.all(np.isfinite(out))


def test_deeper_output_shape_and_grayscale():
  model = NCSNv2Deeper(ngf=4, num_channels=1)
  x = _uniform((1, 96, 96, 1))
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


def test_one_over_sigma_scaling(ncsnv2_32):
  """Technique 3: s(x, σ1)·σ1 == s(x, σ2)·σ2 — σ enters only as the final division."""
  x, params, apply = ncsnv2_32
  s1, s2 = jnp.array([0.5, 4.]), jnp.array([8., 0.125])  # powers of two: exact in float
  out1, out2 = apply(params, x, s1), apply(params, x, s2)
  np.testing.assert_array_equal(out1 * s1[:, None, None, None], out2 * s2[:, None, None, None])
  s3 = jnp.array([0.01, 37.3])  # arbitrary σ: equal up to one rounding
  out3 = apply(params, x, s3)
  np.testing.assert_allclose(out3 * s3[:, None, None, None], out1 * s1[:, None, None, None],
                             rtol=1e-6, atol=1e-7)


def test_data_centered_mapping(ncsnv2_32):
  """data_centered=False on x ∈ [0, 1] equals data_centered=True on 2x − 1 (same parameters)."""
  x, params, apply_raw = ncsnv2_32
  sigma = jnp.array([1., 0.25])
  apply_centered = jax.jit(NCSNv2(ngf=8, data_centered=True).apply)
  out_raw = apply_raw(params, x, sigma)
  np.testing.assert_allclose(out_raw, apply_centered(params, 2. * x - 1., sigma),
                             rtol=1e-6, atol=1e-6)
  assert not np.allclose(out_raw, apply_centered(params, x, sigma))


def test_remat_and_bfloat16_keep_params_and_output_dtype():
  """remat / a bfloat16 compute dtype change neither the parameter tree (float32) nor the
  float32 output (shape-level check: remat is numerically a no-op by construction)."""
  x = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)
  sigma = jax.ShapeDtypeStruct((1,), jnp.float32)
  ref = jax.eval_shape(NCSNv2(ngf=4).init, jax.random.key(0), x, sigma)
  for model in (NCSNv2(ngf=4, remat=True), NCSNv2(ngf=4, dtype=jnp.bfloat16)):
    params = jax.eval_shape(model.init, jax.random.key(0), x, sigma)
    assert jax.tree.structure(params) == jax.tree.structure(ref)
    assert all(p.dtype == jnp.float32 and p.shape == q.shape
               for p, q in zip(jax.tree.leaves(params), jax.tree.leaves(ref)))
    out = jax.eval_shape(model.apply, params, x, sigma)
    assert out.shape == x.shape and out.dtype == jnp.float32


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
  x = jnp.asarray(3. * np.random.default_rng(5).standard_normal((3, 7, 5, 6)) + np.arange(6.),
                  jnp.float32)
  norm = layers.InstanceNormPlus()
  params = norm.init(_RBG_KEY, x)
  p = params['params']
  p = dict(p, beta=jnp.linspace(-1., 1., 6))  # non-trivial beta
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
  params = conv.init(_RBG_KEY, jnp.zeros((1, 4, 4, 8)))['params']['conv']
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
