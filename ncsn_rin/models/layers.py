"""Shared network building blocks (Flax linen, NHWC).

Sections:
  1. Convolutions (PyTorch's `nn.Conv2d` default init) and resampling.
  2. InstanceNorm++ (Song & Ermon 2019, Sec. A.1; the unconditional `InstanceNorm2dPlus` of NCSNv2).
  3. RefineNet blocks of NCSNv2 (Song & Ermon 2020, "Improved Techniques for Training Score-Based
     Generative Models"): pre-activation `ResidualBlock`, and `RefineBlock` made of residual conv
     units (`RCUBlock`), multi-resolution fusion (`MSFBlock`) and chained residual pooling
     (`CRPBlock`) — Lin et al. 2017, RefineNet.

The blocks follow ermongroup/ncsnv2 `models/layers.py` and `models/normalization.py` module for
module (same convolutions, biases, paddings, pooling and interpolation), so parameter counts match.
All tensors are NHWC: [B, H, W, C].
"""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


# 1. Convolutions and resampling. ----------------------------------------------------------------
# The official NCSNv2 uses plain `torch.nn.Conv2d`, i.e. PyTorch's default initialisation (NOT
# the DDPM `default_init`): kernel kaiming_uniform(a=√5), which is U(±1/√fan_in) =
# variance_scaling(1/3, 'fan_in', 'uniform'), and bias U(±1/√fan_in).
#
# Backward passes (issue 16): the functions are the official ones; only how XLA differentiates them
# changes, where a profile of the NCSNv2 train step on XLA:CPU showed the native gradient slow:
#   * a 1×1 convolution is written as a matrix product over channels (all backends): XLA:CPU
#     computes its kernel gradient as a convolution whose window is the whole output gradient;
#   * max pooling routes its gradient with a custom VJP from the pooled output (`max_pool_same`),
#     instead of XLA's argmax reduce-window + scatter;
#   * the align-corners resize is two small interpolation matrices, so its gradient is two matrix
#     products instead of a scatter-add;
#   * a k×k convolution's kernel gradient is summed over chunks of 8 images on CPU
#     (`conv_cpu_kernel_grad`); GPU and TPU keep XLA's own.
# tests/test_refinenet.py checks each gradient against `jax.grad` of the native op, and the loss
# after 3 Adam steps against the native formulation. The custom VJPs define reverse mode only:
# `jax.jvp` through the network is not supported (nothing in the project uses it).

def _native_conv(x, kernel, padding, dilation, precision):
  return jax.lax.conv_general_dilated(
      x, kernel, (1, 1), padding, rhs_dilation=dilation,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=precision)


def _kernel_grad_native(x, g, kernel_shape, padding, dilation, precision):
  """XLA's own kernel gradient (a convolution with the output gradient as window)."""
  zeros = jnp.zeros(kernel_shape, g.dtype)
  _, vjp = jax.vjp(lambda k: _native_conv(x, k, padding, dilation, precision), zeros)
  return vjp(g)[0]


# XLA:CPU's dL/dW convolution slows down more than linearly with the batch (issue 16: a 128-channel
# 32² conv, batch 128: 1.32 s alone vs 0.39 s as 16 chunks of 8, the forward conv 0.35 s); 8 was
# the fastest of 4, 8, 16, 32 at batch 128 and no slower than one chunk at batch 16.
CPU_KERNEL_GRAD_CHUNK = 8


def _kernel_grad_batch_chunked(x, g, kernel_shape, padding, dilation, precision,
                               chunk: int = CPU_KERNEL_GRAD_CHUNK):
  """dL/dW = Σ over chunks of `chunk` images (the last may be smaller) of XLA's kernel gradient.

  Unrolled on purpose: the same convolution inside a `lax.scan` body runs ~100× slower on
  XLA:CPU (measured at batch 16). x [B, H, W, C_in], g [B, H', W', C_out] -> [kh, kw, C_in, C_out].
  """
  return sum(_kernel_grad_native(x[i:i + chunk], g[i:i + chunk], kernel_shape, padding,
                                 dilation, precision) for i in range(0, x.shape[0], chunk))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_cpu_kernel_grad(x: jax.Array, kernel: jax.Array, padding, dilation,
                         precision=None) -> jax.Array:
  """Stride-1 NHWC/HWIO convolution whose kernel gradient is `_kernel_grad_batch_chunked` on CPU
  (`lax.platform_dependent`) and XLA's single convolution elsewhere; the input gradient is XLA's.

  x [B, H, W, C_in], kernel [kh, kw, C_in, C_out] -> [B, H', W', C_out]; padding ((top, bottom),
  (left, right)), dilation (dh, dw).
  """
  return _native_conv(x, kernel, padding, dilation, precision)


def _conv_bwd(padding, dilation, precision, residuals, g):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda v: _native_conv(v, kernel, padding, dilation, precision), x)
  grad = lambda fn: lambda x, g: fn(x, g, kernel.shape, padding, dilation, precision)
  dw = jax.lax.platform_dependent(x, g, cpu=grad(_kernel_grad_batch_chunked),
                                  default=grad(_kernel_grad_native))
  return input_vjp(g)[0], dw.astype(kernel.dtype)


conv_cpu_kernel_grad.defvjp(
    lambda x, kernel, *args: (_native_conv(x, kernel, *args), (x, kernel)), _conv_bwd)


def conv_same(x: jax.Array, kernel: jax.Array, strides, padding, lhs_dilation=None,
              rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
              precision=None, preferred_element_type=None) -> jax.Array:
  """`lax.conv_general_dilated` (same signature, so it plugs into `flax.linen.Conv` without
  changing the parameter tree) with the backward pass of stride-1 NHWC/HWIO convolutions
  reformulated: 1×1 as a matrix product over channels, k×k as `conv_cpu_kernel_grad`. Anything
  else (strides, input dilation, groups, other layouts) is passed through unchanged.
  """
  nhwc_hwio = jax.lax.conv_dimension_numbers((1,) * 4, (1,) * 4, ('NHWC', 'HWIO', 'NHWC'))
  if (tuple(strides) != (1, 1) or any(d != 1 for d in (lhs_dilation or ()))
      or feature_group_count != 1 or preferred_element_type is not None
      or dimension_numbers != nhwc_hwio or isinstance(padding, str)):
    return jax.lax.conv_general_dilated(
        x, kernel, strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        precision=precision, preferred_element_type=preferred_element_type)
  padding = tuple(tuple(int(v) for v in p) for p in padding)
  dilation = tuple(int(v) for v in (rhs_dilation or (1, 1)))
  if kernel.shape[:2] == (1, 1) and padding == ((0, 0), (0, 0)):
    return jnp.einsum('bhwc,co->bhwo', x, kernel[0, 0], precision=precision)
  return conv_cpu_kernel_grad(x, kernel, padding, dilation, precision)


class Conv2d(nn.Module):
  """k×k convolution, stride 1, zero padding dilation·(k//2) ("same"), PyTorch default init: the
  official `conv1x1`, `conv3x3` and `dilated_conv3x3` (padding = dilation).

  [B, H, W, C_in] -> [B, H, W, features]. Parameters are float32; compute in `dtype`.
  """
  features: int
  kernel_size: int = 3
  dilation: int = 1
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k, d = self.kernel_size, self.dilation
    pad = d * (k // 2)
    bound = 1. / np.sqrt(x.shape[-1] * k * k)  # 1/√fan_in
    return nn.Conv(
        self.features, (k, k), padding=((pad, pad), (pad, pad)), kernel_dilation=(d, d),
        use_bias=self.use_bias, dtype=self.dtype,
        kernel_init=nn.initializers.variance_scaling(1. / 3., 'fan_in', 'uniform'),
        bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(
            key, shape, dtype, -bound, bound),
        conv_general_dilated=conv_same, name='conv')(x.astype(self.dtype))


class ConvMeanPool(nn.Module):
  """Conv (stride 1, "same" padding) then 2×2 mean pooling — the official `ConvMeanPool` (its
  28-px `adjust_padding` is not needed). [B, H, W, C_in] -> [B, H/2, W/2, features] (H, W even).
  """
  features: int
  kernel_size: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, _ = x.shape
    if h % 2 or w % 2:
      raise ValueError(f'mean pooling needs even spatial sizes, got {(h, w)}; NCSNv2 RefineNets '
                       'halve the resolution at every non-dilated down block.')
    x = Conv2d(self.features, self.kernel_size, dtype=self.dtype, name='conv')(x)
    return x.reshape(b, h // 2, 2, w // 2, 2, self.features).mean(axis=(2, 4))


def _align_corners_coords(in_size: int, out_size: int):
  """Source indices i0, i1 and weight w of 1-D linear resizing with align_corners=True:
  src = o·(in−1)/(out−1), i0 = ⌊src⌋, i1 = i0 + 1 (clipped), w = src − i0."""
  scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.
  src = np.arange(out_size, dtype=np.float64) * scale
  i0 = np.clip(np.floor(src).astype(np.int32), 0, in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  return i0, i1, (src - i0).astype(np.float32)


def resize_bilinear_align_corners(x: jax.Array, shape: Sequence[int]) -> jax.Array:
  """`F.interpolate(x, size=shape, mode='bilinear', align_corners=True)` in NHWC (the official
  MSF / CondMSF resize); `jax.image.resize` uses half-pixel centres (align_corners=False).

  Linear interpolation along H, then W, each a product with a constant [out, in] matrix (row o
  holds 1 − w at i0 and w at i1) at full float32 precision, so the backward pass is two matrix
  products, not a scatter-add. [B, H, W, C] -> [B, shape[0], shape[1], C].
  """
  out = x
  for axis, subscripts in ((1, 'oh,bhwc->bowc'), (2, 'ow,bhwc->bhoc')):
    in_size, out_size = out.shape[axis], int(shape[axis - 1])
    if in_size == out_size:
      continue
    i0, i1, w = _align_corners_coords(in_size, out_size)
    a = np.zeros((out_size, in_size), np.float32)
    np.add.at(a, (np.arange(out_size), i0), 1. - w)
    np.add.at(a, (np.arange(out_size), i1), w)
    out = jnp.einsum(subscripts, jnp.asarray(a, out.dtype), out,
                     precision=jax.lax.Precision.HIGHEST)
  return out


# Max pooling (CRPBlock). The official `nn.MaxPool2d(5, stride=1, padding=2)` sends the gradient of
# each window to the first maximum in row-major order (PyTorch's CPU/CUDA kernels keep the first
# index whose value is strictly larger); XLA's select-and-scatter with `ge` does the same. A k×k
# max is a max over rows of a max over columns, and the row-major first maximum of the window is
# the first maximum (along W) in the first row (along H) whose row maximum is the window maximum,
# so two 1-D pools with first-maximum routing give exactly that gradient.

def _pad_axis(x: jax.Array, axis: int, radius: int, value=0) -> jax.Array:
  return jnp.pad(x, [(radius, radius) if a == axis else (0, 0) for a in range(x.ndim)],
                 constant_values=value)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool_1d(x: jax.Array, axis: int, radius: int) -> jax.Array:
  """1-D max pool along `axis`: window 2r+1, stride 1, padding r (padding never wins), with a
  first-maximum gradient (see the section comment). [..., N, ...] -> [..., N, ...]."""
  window = [2 * radius + 1 if a == axis else 1 for a in range(x.ndim)]
  return jax.lax.reduce_window(_pad_axis(x, axis, radius, -jnp.inf), -jnp.inf, jax.lax.max,
                               window, (1,) * x.ndim, 'VALID')


def _max_pool_1d_fwd(x, axis, radius):
  y = max_pool_1d(x, axis, radius)
  return y, (x, y)


def _max_pool_1d_bwd(axis, radius, residuals, g):
  """first[p]: the window offset j ∈ [0, 2r] of the first input equal to the maximum y[p] (int8);
  input q then receives g[p] from every window p = q + r − j with first[p] == j."""
  x, y = residuals
  n = x.shape[axis]
  shifted = lambda v, start: jax.lax.slice_in_dim(v, start, start + n, axis=axis)
  xp = _pad_axis(x, axis, radius, -jnp.inf)
  first = jnp.full(y.shape, 2 * radius + 1, jnp.int8)
  for j in reversed(range(2 * radius + 1)):  # the smallest matching j is written last
    first = jnp.where(shifted(xp, j) == y, jnp.int8(j), first)
  gp, fp = _pad_axis(g, axis, radius), _pad_axis(first, axis, radius, -1)
  dx = jnp.zeros_like(g)
  for j in range(2 * radius + 1):
    start = 2 * radius - j
    dx = dx + jnp.where(shifted(fp, start) == j, shifted(gp, start), 0)
  return (dx,)


max_pool_1d.defvjp(_max_pool_1d_fwd, _max_pool_1d_bwd)


def max_pool_same(x: jax.Array, window: int = 5) -> jax.Array:
  """`nn.MaxPool2d(window, stride=1, padding=window // 2)` in NHWC: max over W then over H (exactly
  the 2-D window max), each window's gradient to its first maximum in row-major order as PyTorch
  (and `flax.linen.max_pool`) route it. [B, H, W, C] -> [B, H, W, C].
  """
  if window % 2 != 1:
    raise ValueError(f'max_pool_same needs an odd window, got {window}.')
  return max_pool_1d(max_pool_1d(x, 2, window // 2), 1, window // 2)


# 2. InstanceNorm++. ------------------------------------------------------------------------------

class InstanceNormPlus(nn.Module):
  """InstanceNorm++ (unconditional `InstanceNorm2dPlus` of ermongroup/ncsnv2).

  With μ_k, s_k the spatial mean / (biased) std of channel k, m and v the mean and *unbiased*
  variance (torch.var default) of {μ_k} across channels:

      out_k = γ_k · ( (x_k − μ_k) / √(s_k² + ε) + α_k · (μ_k − m) / √(v + ε) ) + β_k

  α, γ ~ N(1, 0.02), β = 0 at init; ε = 1e-5. Statistics are computed in float32.
  [B, H, W, C] -> [B, H, W, C] in `dtype`.
  """
  use_bias: bool = True
  epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    init = lambda key, shape: 1. + 0.02 * jax.random.normal(key, shape, jnp.float32)
    alpha = self.param('alpha', init, (c,))
    gamma = self.param('gamma', init, (c,))
    x = x.astype(jnp.float32)
    means = jnp.mean(x, axis=(1, 2))                                       # [B, C]
    m = jnp.mean(means, axis=-1, keepdims=True)
    v = jnp.var(means, axis=-1, keepdims=True, ddof=1)
    means_hat = (means - m) / jnp.sqrt(v + self.epsilon)                   # [B, C]
    var = jnp.var(x, axis=(1, 2), keepdims=True)                           # biased, as torch IN
    h = (x - means[:, None, None, :]) / jnp.sqrt(var + self.epsilon)
    out = gamma * (h + means_hat[:, None, None, :] * alpha)
    if self.use_bias:
      out = out + self.param('beta', nn.initializers.zeros, (c,))
    return out.astype(self.dtype)


# 3. RefineNet blocks (NCSNv2). ------------------------------------------------------------------

class ResidualBlock(nn.Module):
  """Pre-activation residual block: norm → ELU → conv1 → norm → ELU → conv2, plus shortcut.

  As the official `ResidualBlock` with InstanceNorm++ and ELU:
    * resample=None, dilation=None: conv3x3(C_in→F), conv3x3(F→F); shortcut identity if C_in == F
      else conv1x1.
    * resample=None, dilation=d: the same with dilated 3×3 convs; shortcut dilated conv3x3.
    * resample='down', dilation=None: conv3x3(C_in→C_in), ConvMeanPool3x3(C_in→F); shortcut
      ConvMeanPool1x1. Halves H and W.
    * resample='down', dilation=d: dilated conv3x3(C_in→C_in), dilated conv3x3(C_in→F); shortcut
      dilated conv3x3. NO downsampling: in the official code dilation replaces the pooling.
  [B, H, W, C_in] -> [B, H', W', features].
  """
  features: int
  resample: Optional[str] = None
  dilation: Optional[int] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.resample not in (None, 'down'):
      raise ValueError(f"resample={self.resample!r}; expected None or 'down'.")
    c_in, f, d = x.shape[-1], self.features, self.dilation
    conv = lambda feats, name, k=3: Conv2d(feats, k, dilation=d or 1, dtype=self.dtype, name=name)
    if self.resample == 'down' and d is None:
      conv1 = conv(c_in, 'conv1')
      conv2 = ConvMeanPool(f, 3, dtype=self.dtype, name='conv2')
      shortcut = ConvMeanPool(f, 1, dtype=self.dtype, name='shortcut')
    else:
      mid = c_in if self.resample == 'down' else f
      conv1, conv2 = conv(mid, 'conv1'), conv(f, 'conv2')
      shortcut = conv(f, 'shortcut', k=1 if d is None else 3)
    h = conv1(nn.elu(InstanceNormPlus(dtype=self.dtype, name='normalize1')(x)))
    h = conv2(nn.elu(InstanceNormPlus(dtype=self.dtype, name='normalize2')(h)))
    skip = x.astype(self.dtype) if (self.resample is None and c_in == f) else shortcut(x)
    return skip + h


class RCUBlock(nn.Module):
  """Residual conv unit: n_blocks × [x ← x + (ELU → conv3x3, no bias) × n_stages]. [B, H, W, C]."""
  n_blocks: int
  n_stages: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    x = x.astype(self.dtype)
    for i in range(self.n_blocks):
      residual = x
      for j in range(self.n_stages):
        x = Conv2d(c, 3, use_bias=False, dtype=self.dtype, name=f'{i + 1}_{j + 1}_conv')(nn.elu(x))
      x = x + residual
    return x


class CRPBlock(nn.Module):
  """Chained residual pooling: x ← ELU(x); path ← x; n_stages × [path ← conv(maxpool5×5(path));
  x ← x + path]. Max pool: 5×5, stride 1, padding 2 (padding never wins: −∞). [B, H, W, C]."""
  n_stages: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    x = nn.elu(x.astype(self.dtype))
    path = x
    for i in range(self.n_stages):
      path = Conv2d(c, 3, use_bias=False, dtype=self.dtype, name=f'convs_{i}')(max_pool_same(path))
      x = path + x
    return x


class MSFBlock(nn.Module):
  """Multi-resolution fusion: Σ_i resize_align_corners(conv3x3_i(xs[i]), shape).
  xs[i]: [B, H_i, W_i, C_i] -> [B, shape[0], shape[1], features]."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array], shape: Sequence[int]) -> jax.Array:
    return sum(resize_bilinear_align_corners(
        Conv2d(self.features, 3, dtype=self.dtype, name=f'convs_{i}')(x), shape)
        for i, x in enumerate(xs))


class RefineBlock(nn.Module):
  """RefineNet block: RCU(2 blocks × 2 stages) on each input → MSF (if several inputs) → CRP
  (2 stages, max pool) → output RCU (3 blocks if `end` else 1, × 2 stages).

  The output resolution is that of xs[0] (the official passes `layer_k.shape[2:]`, and layer_k is
  always the first input). xs[i]: [B, H_i, W_i, C_i] -> [B, H_0, W_0, features]. With a single
  input (`start`), its channel count must equal `features` (no MSF conv), as in the official.
  """
  features: int
  end: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array]) -> jax.Array:
    hs = [RCUBlock(2, 2, dtype=self.dtype, name=f'adapt_convs_{i}')(x) for i, x in enumerate(xs)]
    if len(hs) > 1:
      h = MSFBlock(self.features, dtype=self.dtype, name='msf')(hs, xs[0].shape[1:3])
    else:
      h = hs[0]
      if h.shape[-1] != self.features:
        raise ValueError(f'a single-input RefineBlock needs {self.features} input channels, '
                         f'got {h.shape[-1]}.')
    h = CRPBlock(2, dtype=self.dtype, name='crp')(h)
    return RCUBlock(3 if self.end else 1, 2, dtype=self.dtype, name='output_convs')(h)
