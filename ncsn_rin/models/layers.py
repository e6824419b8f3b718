"""Shared network building blocks (Flax linen, NHWC).

Sections:
  1. Initialisers matching PyTorch's `nn.Conv2d` defaults.
  2. Convolutions and resampling helpers.
  3. InstanceNorm++ (Song & Ermon 2019, Sec. A.1; the unconditional `InstanceNorm2dPlus` of NCSNv2).
  4. RefineNet blocks of NCSNv2 (Song & Ermon 2020, "Improved Techniques for Training Score-Based
     Generative Models"): pre-activation `ResidualBlock`, and `RefineBlock` made of residual conv
     units (`RCUBlock`), multi-resolution fusion (`MSFBlock`) and chained residual pooling
     (`CRPBlock`) — Lin et al. 2017, RefineNet.

The blocks follow ermongroup/ncsnv2 `models/layers.py` and `models/normalization.py` module for
module (same convolutions, biases, paddings, pooling and interpolation), so parameter counts match.
All tensors are NHWC: [B, H, W, C].
"""

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


# ------------------------------------------------------------------------------------------------
# 1. Initialisers.
#
# The official NCSNv2 uses plain `torch.nn.Conv2d`, i.e. PyTorch's default initialisation
# (it does NOT use the DDPM `default_init`): kaiming_uniform(a=√5) for the kernel, which is
# U(±1/√fan_in) = variance_scaling(1/3, 'fan_in', 'uniform'), and U(±1/√fan_in) for the bias.
# ------------------------------------------------------------------------------------------------

def torch_conv_kernel_init() -> jax.nn.initializers.Initializer:
  """PyTorch's default conv/linear kernel init: U(±1/√fan_in) (HWIO kernels, fan_in = k·k·C_in)."""
  return nn.initializers.variance_scaling(1. / 3., 'fan_in', 'uniform')


def torch_conv_bias_init(fan_in: int) -> jax.nn.initializers.Initializer:
  """PyTorch's default conv/linear bias init: U(±1/√fan_in)."""
  bound = 1. / np.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# ------------------------------------------------------------------------------------------------
# 2. Convolutions and resampling.
# ------------------------------------------------------------------------------------------------

class Conv2d(nn.Module):
  """k×k convolution, stride 1, zero padding dilation·(k//2) ("same"), PyTorch default init.

  Covers the official `conv1x1`, `conv3x3` and `dilated_conv3x3` (padding = dilation).
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
    fan_in = x.shape[-1] * k * k
    return nn.Conv(
        self.features, (k, k), padding=((pad, pad), (pad, pad)), kernel_dilation=(d, d),
        use_bias=self.use_bias, dtype=self.dtype, kernel_init=torch_conv_kernel_init(),
        bias_init=torch_conv_bias_init(fan_in), name='conv')(x.astype(self.dtype))


def mean_pool2x2(x: jax.Array) -> jax.Array:
  """Average of each 2×2 window. [B, H, W, C] -> [B, H/2, W/2, C] (H, W even)."""
  b, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f'mean_pool2x2 needs even spatial sizes, got {(h, w)}; NCSNv2 RefineNets '
                     'halve the resolution at every non-dilated down block.')
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class ConvMeanPool(nn.Module):
  """Conv (stride 1, "same" padding) then 2×2 mean pooling — the official `ConvMeanPool`.

  [B, H, W, C_in] -> [B, H/2, W/2, features]. (The official 28-px `adjust_padding` is not needed.)
  """
  features: int
  kernel_size: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = Conv2d(self.features, self.kernel_size, dtype=self.dtype, name='conv')(x)
    return mean_pool2x2(h)


def _align_corners_coords(in_size: int, out_size: int):
  """Source indices i0, i1 and weight w of 1-D bilinear resizing with align_corners=True."""
  scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.
  src = np.arange(out_size, dtype=np.float64) * scale
  i0 = np.clip(np.floor(src).astype(np.int32), 0, in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  return i0, i1, (src - i0).astype(np.float32)


def resize_bilinear_align_corners(x: jax.Array, shape: Sequence[int]) -> jax.Array:
  """`F.interpolate(x, size=shape, mode='bilinear', align_corners=True)` in NHWC.

  `jax.image.resize` uses half-pixel centres (align_corners=False), hence this explicit version:
  corners map to corners, src = i·(in−1)/(out−1), then linear interpolation along H and W.
  [B, H, W, C] -> [B, shape[0], shape[1], C].
  """
  out = x
  for axis, out_size in ((1, int(shape[0])), (2, int(shape[1]))):
    in_size = out.shape[axis]
    if in_size == out_size:
      continue
    i0, i1, w = _align_corners_coords(in_size, out_size)
    w = jnp.asarray(w, out.dtype).reshape((-1,) + (1,) * (out.ndim - axis - 1))
    x0 = jnp.take(out, jnp.asarray(i0), axis=axis)
    x1 = jnp.take(out, jnp.asarray(i1), axis=axis)
    out = x0 + (x1 - x0) * w
  return out


# ------------------------------------------------------------------------------------------------
# 3. InstanceNorm++.
# ------------------------------------------------------------------------------------------------

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
    h = h + means_hat[:, None, None, :] * alpha
    out = gamma * h
    if self.use_bias:
      out = out + self.param('beta', nn.initializers.zeros, (c,))
    return out.astype(self.dtype)


# ------------------------------------------------------------------------------------------------
# 4. RefineNet blocks (NCSNv2).
# ------------------------------------------------------------------------------------------------

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

    h = nn.elu(InstanceNormPlus(dtype=self.dtype, name='normalize1')(x))
    h = conv1(h)
    h = nn.elu(InstanceNormPlus(dtype=self.dtype, name='normalize2')(h))
    h = conv2(h)
    skip = x.astype(self.dtype) if (self.resample is None and c_in == f) else shortcut(x)
    return skip + h


class RCUBlock(nn.Module):
  """Residual conv unit: n_blocks × [x ← x + (ELU → conv3x3, no bias) × n_stages].

  [B, H, W, C] -> [B, H, W, C].
  """
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
  x ← x + path]. Max pool: 5×5, stride 1, padding 2 (padding never wins: −∞).

  [B, H, W, C] -> [B, H, W, C].
  """
  n_stages: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    x = nn.elu(x.astype(self.dtype))
    path = x
    for i in range(self.n_stages):
      path = nn.max_pool(path, (5, 5), strides=(1, 1), padding=((2, 2), (2, 2)))
      path = Conv2d(c, 3, use_bias=False, dtype=self.dtype, name=f'convs_{i}')(path)
      x = path + x
    return x


class MSFBlock(nn.Module):
  """Multi-resolution fusion: Σ_i resize_align_corners(conv3x3_i(xs[i]), shape).

  xs[i]: [B, H_i, W_i, C_i] -> [B, shape[0], shape[1], features].
  """
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, xs: Sequence[jax.Array], shape: Sequence[int]) -> jax.Array:
    out = 0.
    for i, x in enumerate(xs):
      h = Conv2d(self.features, 3, dtype=self.dtype, name=f'convs_{i}')(x)
      out = out + resize_bilinear_align_corners(h, shape)
    return out


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
