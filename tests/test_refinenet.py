"""Tests of the NCSNv2 RefineNets (Song & Ermon 2020) and their shared layers.

Forward passes use a small ngf to stay fast on 2 CPU cores; parameter counts at ngf=128 use
`jax.eval_shape` (no allocation). Forward tests fill the parameter shapes from `eval_shape(init)`
with numpy random values: on CPU, XLA takes a minute or more to compile the ~160 PRNG calls of
a jitted RefineNet `init` (the forward pass itself compiles in seconds), so a real `model.init`
is only run on small layers here.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ncsn_rin import models
from ncsn_rin.models import layers
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
  n = _count(models.MODELS[name](), size)
  assert n == exact
  assert n == _official_count(name)
  assert abs(n - paper) / paper < 1e-3
  if name == 'ncsnv2':
    assert _count(models.MODELS[name](), 64) == n  # independent of image size


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


def _resize_numpy(x, out_h, out_w):
  """Official F.interpolate(bilinear, align_corners=True), transcribed per output pixel (float64):
  src = o·(in−1)/(out−1), value = lerp of the two neighbours along H, then along W."""
  b, h, w, c = x.shape
  out = np.zeros((b, out_h, out_w, c))
  for o in range(out_h):
    sh = o * (h - 1) / (out_h - 1) if out_h > 1 else 0.
    h0 = min(int(np.floor(sh)), h - 1)
    h1, fh = min(h0 + 1, h - 1), sh - h0
    for p in range(out_w):
      sw = p * (w - 1) / (out_w - 1) if out_w > 1 else 0.
      w0 = min(int(np.floor(sw)), w - 1)
      w1, fw = min(w0 + 1, w - 1), sw - w0
      top = (1 - fw) * x[:, h0, w0] + fw * x[:, h0, w1]
      bottom = (1 - fw) * x[:, h1, w0] + fw * x[:, h1, w1]
      out[:, o, p] = (1 - fh) * top + fh * bottom
  return out


@pytest.mark.parametrize('in_hw,out_hw', [((4, 4), (8, 8)), ((3, 5), (7, 4)), ((6, 6), (6, 11))])
def test_resize_matches_per_pixel_reference_and_its_transpose(in_hw, out_hw):
  """Forward against the per-pixel transcription; the gradient of the (linear) resize against
  the transpose of that same map, built column by column from the reference."""
  x = np.random.default_rng(3).standard_normal((2,) + in_hw + (3,))
  out = layers.resize_bilinear_align_corners(jnp.asarray(x, jnp.float32), out_hw)
  np.testing.assert_allclose(out, _resize_numpy(x, *out_hw), rtol=1e-5, atol=1e-5)
  g = np.random.default_rng(4).standard_normal((2,) + tuple(out_hw) + (3,))
  _, vjp = jax.vjp(lambda v: layers.resize_bilinear_align_corners(v, out_hw),
                   jnp.asarray(x, jnp.float32))
  grad = np.asarray(vjp(jnp.asarray(g, jnp.float32))[0])
  expected = np.zeros_like(x)
  for i in range(in_hw[0]):
    for j in range(in_hw[1]):
      basis = np.zeros((1,) + in_hw + (1,))
      basis[0, i, j, 0] = 1.
      expected[:, i, j, :] = np.einsum('bhwc,hw->bc', g, _resize_numpy(basis, *out_hw)[0, :, :, 0])
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)


# --- Reformulated backward passes (issue 16) against the native ops ----------------------------

def _max_pool_native(x, window=5):
  r = window // 2
  return nn.max_pool(x, (window, window), strides=(1, 1), padding=((r, r), (r, r)))


def _max_pool_grad_numpy(x, g, window=5):
  """PyTorch's MaxPool2d(window, 1, window // 2) backward: each window's gradient goes to its
  first maximum in row-major order (the CPU kernel keeps an index only if strictly larger)."""
  b, h, w, c = x.shape
  r = window // 2
  dx = np.zeros_like(x)
  for n, i, j, k in np.ndindex(b, h, w, c):
    best = None
    for u in range(max(i - r, 0), min(i + r + 1, h)):
      for v in range(max(j - r, 0), min(j + r + 1, w)):
        if best is None or x[n, u, v, k] > x[n, best[0], best[1], k]:
          best = (u, v)
    dx[n, best[0], best[1], k] += g[n, i, j, k]
  return dx


@pytest.mark.parametrize('ties', [False, True])
def test_max_pool_custom_vjp_equals_native_and_pytorch_routing(ties):
  """Forward identical to `nn.max_pool`; gradient equal to `jax.grad` of `nn.max_pool` and to
  PyTorch's routing (first maximum, row-major), also when many values tie (integers 0..2)."""
  rng = np.random.default_rng(7)
  x = rng.integers(0, 3, (2, 9, 7, 3)) if ties else rng.standard_normal((2, 9, 7, 3))
  x = jnp.asarray(x, jnp.float32)
  g = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  y, vjp = jax.vjp(layers.max_pool_same, x)
  y_native, vjp_native = jax.vjp(_max_pool_native, x)
  np.testing.assert_array_equal(y, y_native)
  grad, grad_native = vjp(g)[0], vjp_native(g)[0]
  np.testing.assert_allclose(grad, grad_native, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(grad, _max_pool_grad_numpy(np.asarray(x), np.asarray(g)),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('axis,radius', [(1, 2), (2, 2), (2, 1), (1, 3)])
def test_max_pool_1d_gradient_equals_native(axis, radius):
  x = jnp.asarray(np.random.default_rng(axis + radius).integers(0, 4, (2, 8, 6, 2)), jnp.float32)
  window = [1, 1, 1, 1]
  window[axis] = 2 * radius + 1
  padding = [(0, 0)] * 4
  padding[axis] = (radius, radius)
  native = lambda v: jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, window, (1,) * 4, padding)
  loss = lambda pool: lambda v: jnp.sum(jnp.sin(3. * pool(v)) * jnp.arange(v.size).reshape(v.shape))
  grad = jax.grad(loss(lambda v: layers.max_pool_1d(v, axis, radius)))(x)
  np.testing.assert_allclose(grad, jax.grad(loss(native))(x), rtol=1e-5, atol=1e-4)


def _conv_native(x, kernel, dilation):
  pad = dilation * (kernel.shape[0] // 2)
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), ((pad, pad), (pad, pad)), rhs_dilation=(dilation, dilation),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _conv_same(x, kernel, dilation):
  pad = dilation * (kernel.shape[0] // 2)
  dn = jax.lax.conv_dimension_numbers(x.shape, kernel.shape, ('NHWC', 'HWIO', 'NHWC'))
  return layers.conv_same(x, kernel, (1, 1), ((pad, pad), (pad, pad)),
                          rhs_dilation=(dilation, dilation), dimension_numbers=dn)


@pytest.mark.parametrize('batch,k,dilation', [(20, 3, 1), (20, 3, 4), (3, 3, 2), (16, 1, 1)])
def test_conv_gradients_equal_native(batch, k, dilation):
  """conv_same (1×1 as a matmul; k×k with the batch-chunked kernel gradient on CPU: batch 20 =
  2 chunks of 8 + 4, batch 3 < one chunk) against `jax.grad` of `lax.conv_general_dilated`."""
  rng = np.random.default_rng(batch + k + dilation)
  x = jnp.asarray(rng.standard_normal((batch, 9, 8, 5)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((k, k, 5, 6)), jnp.float32)
  loss = lambda conv: lambda v, w: jnp.sum(jnp.sin(conv(v, w, dilation)))
  value, grads = jax.value_and_grad(loss(_conv_same), (0, 1))(x, kernel)
  value_native, grads_native = jax.value_and_grad(loss(_conv_native), (0, 1))(x, kernel)
  np.testing.assert_allclose(value, value_native, rtol=1e-5)
  for got, want in zip(grads, grads_native):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))


def test_batch_chunked_kernel_grad_equals_one_convolution():
  rng = np.random.default_rng(11)
  x = jnp.asarray(rng.standard_normal((19, 6, 6, 4)), jnp.float32)
  g = jnp.asarray(rng.standard_normal((19, 6, 6, 3)), jnp.float32)
  args = ((3, 3, 4, 3), ((2, 2), (2, 2)), (2, 2), None)
  chunked = layers._kernel_grad_batch_chunked(x, g, *args, chunk=4)
  np.testing.assert_allclose(chunked, layers._kernel_grad_native(x, g, *args),
                             rtol=1e-5, atol=1e-4)


def test_kernel_grad_formulation_is_cpu_only():
  """The batch-chunked kernel gradient (one convolution per 8 images) is lowered for CPU only;
  for CUDA and TPU the program keeps XLA's single kernel-gradient convolution."""
  x = jax.ShapeDtypeStruct((24, 8, 8, 4), jnp.float32)
  kernel = jax.ShapeDtypeStruct((3, 3, 4, 4), jnp.float32)
  grad_w = jax.jit(jax.grad(lambda v, w: jnp.sum(_conv_same(v, w, 1)), 1))
  convs = {platform: jax.export.export(grad_w, platforms=(platform,))(x, kernel).mlir_module()
           .count('stablehlo.convolution') for platform in ('cpu', 'cuda', 'tpu')}
  assert convs['cuda'] == convs['tpu'] >= 1
  assert convs['cpu'] == convs['cuda'] + 2  # 3 chunks of 8 images instead of one convolution


def _old_resize(x, shape):
  """The previous gather formulation of the align-corners resize (x0 + (x1 − x0)·w)."""
  out = x
  for axis, out_size in ((1, int(shape[0])), (2, int(shape[1]))):
    in_size = out.shape[axis]
    if in_size == out_size:
      continue
    i0, i1, w = layers._align_corners_coords(in_size, out_size)
    w = jnp.asarray(w, out.dtype).reshape((-1,) + (1,) * (out.ndim - axis - 1))
    x0, x1 = jnp.take(out, jnp.asarray(i0), axis=axis), jnp.take(out, jnp.asarray(i1), axis=axis)
    out = x0 + (x1 - x0) * w
  return out


def _losses_after_adam_steps(model, params, x, steps=3):
  """Loss of a fixed batch at each of `steps` Adam steps (DSM-like loss with fixed noise)."""
  sigma = jnp.linspace(0.1, 1., x.shape[0])
  noise = jnp.asarray(np.random.default_rng(2).standard_normal(x.shape), jnp.float32)
  opt = optax.adam(1e-3)

  def loss_fn(p):
    score = model.apply(p, x + sigma[:, None, None, None] * noise, sigma)
    return 0.5 * jnp.mean(jnp.sum((score * sigma[:, None, None, None] + noise) ** 2, (1, 2, 3)))

  @jax.jit
  def step(p, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt_state = opt.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  opt_state, losses = opt.init(params), []
  for _ in range(steps + 1):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  return np.array(losses)


def test_three_adam_steps_match_native_formulation(monkeypatch):
  """A small NCSNv2 trained 3 Adam steps on a fixed batch: the loss after each step with the
  reformulated backward passes equals, to float32 rounding, the loss with JAX's native ops
  (`lax.conv_general_dilated`, `nn.max_pool`, the gather resize). Batch 10 runs the batch-chunked
  kernel gradient (one chunk of 8 + 2) on CPU."""
  model = NCSNv2(ngf=8)
  x = _uniform((10, 16, 16, 3))
  params, _ = _init_apply(model, x, jnp.ones((10,)))
  new = _losses_after_adam_steps(model, params, x)
  monkeypatch.setattr(layers, 'conv_same', jax.lax.conv_general_dilated)
  monkeypatch.setattr(layers, 'max_pool_same', _max_pool_native)
  monkeypatch.setattr(layers, 'resize_bilinear_align_corners', _old_resize)
  old = _losses_after_adam_steps(model, params, x)
  assert old[-1] < 0.99 * old[0]  # the steps did train
  np.testing.assert_allclose(new, old, rtol=2e-5)


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
