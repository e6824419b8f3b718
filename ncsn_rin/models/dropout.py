"""Dropout whose masks are bit for bit `jax.random.bernoulli`'s, generated in one fused pass.

Why. JAX lowers its Threefry-2x32 hash for CPU as a rolled loop (`jax/_src/random/threefry2x32.py`,
`_threefry2x32_cpu_lowering_rule`: `fori_loop` over the 5 groups of 4 rounds): each iteration
writes and copies the two 32-bit state arrays. In the RIN CIFAR-10 train step at batch 32 (12 masks
of [32, 128, 2048] per step) the loop's copies of those u32 arrays alone took 0.55 s of a 9.2 s
step (`benchmarks/op_profile.py`, 2026-12-03, this 2-core CPU). Written out as the 20 rounds of
elementwise integer ops (what JAX emits on GPU and TPU), XLA fuses counter, hash, uniform and
comparison into one loop that writes only the mask.

Same bits. `bernoulli` computes what `jax.random.bernoulli(key, p, shape)` computes under JAX's
default `threefry2x32` keys with `jax_threefry_partitionable` (the default since JAX 0.5):
  counter   the element's row-major index n as (hi, lo) = (n >> 32, n & 0xffffffff)
  bits      x0 ^ x1 of Threefry-2x32 (Salmon et al. 2011, 20 rounds) of the counter under the key
  uniform   bitcast((bits >> 9) | bits(1.0f)) − 1  in [0, 1)
  mask      uniform < p
Other key implementations, the non-partitionable mode and arrays of 2³² elements or more fall back
to `jax.random.bernoulli` itself. `tests/test_dropout.py` checks equality with `jax.random.bernoulli`
bit for bit.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))  # Threefry-2x32, alternating groups of 4 rounds
_PARITY = np.uint32(0x1BD11BDA)                   # the key schedule's third word: k0 ^ k1 ^ this


def threefry2x32(k0, k1, x0, x1):
  """Threefry-2x32, 20 rounds, of counters (x0, x1) under key (k0, k1), all uint32 (the counters
  of any shape, the key words scalars). Returns the two uint32 output words."""
  ks = (k0, k1, k0 ^ k1 ^ _PARITY)
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for group in range(5):
    for r in _ROTATIONS[group % 2]:
      x0 = x0 + x1
      x1 = ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r))) ^ x0
    x0 = x0 + ks[(group + 1) % 3]
    x1 = x1 + ks[(group + 2) % 3] + np.uint32(group + 1)
  return x0, x1


def _threefry_key_words(key):
  """(k0, k1) of a threefry2x32 key (typed or raw uint32[2]), or None for any other key."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if 'threefry' not in str(jax.random.key_impl(key)):
      return None
    key = jax.random.key_data(key)
  elif jax.config.jax_default_prng_impl != 'threefry2x32':
    return None
  if key.shape != (2,) or key.dtype != jnp.uint32:
    return None
  return key[0], key[1]


def _row_major_index(shape):
  """uint32 [*shape]: each element's row-major index (the caller ensures it fits in 32 bits), as a
  sum of per-dimension iotas like JAX's own `iota_2x32_shape`, so a sharded batch stays sharded."""
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for dim in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, dim) * np.uint32(stride)
    stride *= shape[dim]
  return index


def bernoulli(key, p: float, shape: Sequence[int]) -> jax.Array:
  """bool [*shape], equal bit for bit to `jax.random.bernoulli(key, p, shape)` (float32 p)."""
  shape = tuple(shape)
  words = _threefry_key_words(key)
  if (words is None or not jax.config.jax_threefry_partitionable or not shape
      or int(np.prod(shape)) >= 2**32):
    return jax.random.bernoulli(key, p, shape)
  lo = _row_major_index(shape)
  b0, b1 = threefry2x32(words[0], words[1], jnp.zeros(shape, jnp.uint32), lo)
  float_bits = ((b0 ^ b1) >> np.uint32(32 - 23)) | np.float32(1.).view(np.uint32)
  uniform = jax.lax.bitcast_convert_type(float_bits, jnp.float32) - np.float32(1.)
  return uniform < jnp.float32(p)


class Dropout(nn.Module):
  """`flax.linen.Dropout` (same arguments, rng collection 'dropout', same outputs for the same key)
  with the masks of `bernoulli`: x [any shape] -> select(mask, x / keep, 0), the mask shared over
  `broadcast_dims`."""
  rate: float
  broadcast_dims: Sequence[int] = ()

  @nn.compact
  def __call__(self, inputs, deterministic: bool):
    if self.rate == 0. or deterministic:
      return inputs
    if self.rate == 1.:
      return jnp.zeros_like(inputs)
    keep = 1. - self.rate
    shared = {d % inputs.ndim for d in self.broadcast_dims}
    shape = [1 if d in shared else n for d, n in enumerate(inputs.shape)]
    mask = jnp.broadcast_to(bernoulli(self.make_rng('dropout'), keep, shape), inputs.shape)
    return jax.lax.select(mask, inputs / keep, jnp.zeros_like(inputs))
