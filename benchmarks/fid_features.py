r"""FID feature extraction: images/s and peak memory of `inception.make_feature_fn`.

Command (the digits case of the README: 512 16x16 grey uint8 images, real weights, default chunks):
    python -m benchmarks.fid_features --image_size=16 --channels=1 --num_images=512 --real_weights

Measured 2026-11-29 on this shared 2-core CPU: default chunks (1 image per call on CPU) 9.8
images/s, peak RSS 587 MB (start 179 MB; load 4.4-5.3); --chunk_size=15: 4.3 images/s, 1,036 MB
(load 5.8-8.4).

Prints one JSON row: images/s (first call excluded), `compile_s` (the first call: compile + one
batch), the chunk size, and the peak RSS of the process (`measure.PeakMemory`: on Linux reset
before the case, so it is the case's peak plus the process's resident set at its start, `start_mb`).
"""
import argparse
import json
import time

import jax
import numpy as np
from jax.sharding import Mesh

from benchmarks import measure
from ncsn_rin.metrics import inception


def random_params(seed=0):
  """He-normal kernels, zero biases, in the network's shapes (throughput does not need weights)."""
  rng = np.random.default_rng(seed)

  def init(leaf):
    if len(leaf.shape) == 1:
      return np.zeros(leaf.shape, np.float32)
    fan_in = np.prod(leaf.shape[:3])
    return (rng.standard_normal(leaf.shape) * np.sqrt(2 / fan_in)).astype(np.float32)

  return jax.tree.map(init, inception.param_shapes())


def benchmark_feature_throughput(image_size=32, num_images=256, batch_size=128, channels=3,
                                 chunk_size=None, params=None, protocol='tfgan'):
  """Images/s of the sharded feature function on uint8 [batch, image_size, image_size, channels].

  Over all devices; `params` default to random ones. The first call (compile + one batch:
  `compile_s`) is excluded; ceil(num_images / batch_size) more batches are timed (the batch rounded
  up to a multiple of the devices).
  Returns dict(images_per_s, seconds, compile_s, num_images, batch_size, image_size, channels,
  chunk_size, num_devices, platform).
  """
  mesh = Mesh(np.array(jax.devices()), (inception.DATA_AXIS,))
  num_devices = mesh.shape[inception.DATA_AXIS]
  batch_size = -(-batch_size // num_devices) * num_devices
  feature_fn = inception.make_feature_fn(random_params() if params is None else params, mesh,
                                         protocol=protocol, chunk_size=chunk_size)
  shape = (batch_size, image_size, image_size, channels)
  images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  start = time.perf_counter()
  feature_fn(images)
  compile_s = time.perf_counter() - start
  num_batches = max(1, -(-num_images // batch_size))
  start = time.perf_counter()
  for _ in range(num_batches):
    feature_fn(images)
  seconds = time.perf_counter() - start
  return dict(images_per_s=num_batches * batch_size / seconds, seconds=seconds, compile_s=compile_s,
              num_images=num_batches * batch_size, batch_size=batch_size, image_size=image_size,
              channels=channels, num_devices=num_devices, platform=jax.devices()[0].platform,
              chunk_size=chunk_size or inception.default_chunk_size(shape[1:]))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--image_size', type=int, default=16)
  parser.add_argument('--channels', type=int, default=1)
  parser.add_argument('--num_images', type=int, default=512)
  parser.add_argument('--batch_size', type=int, default=0, help='0: all images in one call')
  parser.add_argument('--chunk_size', type=int, default=0, help='0: default_chunk_size')
  parser.add_argument('--protocol', default='tfgan', choices=sorted(inception.PROTOCOLS))
  parser.add_argument('--real_weights', action='store_true', help='load (and fetch) the weights')
  args = parser.parse_args()
  with measure.PeakMemory() as memory:
    params = inception.load_inception_params() if args.real_weights else None
    row = benchmark_feature_throughput(
        args.image_size, args.num_images, args.batch_size or args.num_images, args.channels,
        args.chunk_size or None, params, args.protocol)
  print(json.dumps({**row, **memory.result, 'load_average': measure.load_average()}))


if __name__ == '__main__':
  main()
