"""ncsn_rin/models/dropout.py: Threefry-2x32 against the published test vectors, masks bit for bit
`jax.random.bernoulli`'s, the module's outputs `flax.linen.Dropout`'s."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncsn_rin.models import dropout

# Random123's known-answer tests for Threefry-2x32, 20 rounds (kat_vectors: key, counter -> output).
_KAT = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6b200159, 0x99ba4efe)),
    ((0xffffffff, 0xffffffff), (0xffffffff, 0xffffffff), (0x1cb996fc, 0xbb002be7)),
    ((0x13198a2e, 0x03707344), (0x243f6a88, 0x85a308d3), (0xc4923a9c, 0x483df7a0)),
]


@pytest.mark.parametrize('key, counter, expected', _KAT)
def test_threefry_matches_the_published_vectors(key, counter, expected):
  u32 = lambda v: jnp.asarray(v, jnp.uint32)
  out = dropout.threefry2x32(u32(key[0]), u32(key[1]), u32([counter[0]]), u32([counter[1]]))
  assert [int(w[0]) for w in out] == list(expected)


@pytest.mark.parametrize('shape', [(1,), (7,), (3, 5, 11), (32, 128, 2048), (4, 1, 1)])
@pytest.mark.parametrize('p', [0.9, 0.5, 0.123])
def test_masks_are_jax_random_bernoulli_bit_for_bit(shape, p):
  for key in (jax.random.fold_in(jax.random.PRNGKey(3), 11), jax.random.key(5)):
    ours = jax.jit(lambda k: dropout.bernoulli(k, p, shape))(key)
    assert ours.shape == shape and ours.dtype == jnp.bool_
    np.testing.assert_array_equal(ours, jax.random.bernoulli(key, p, shape))


def test_other_key_implementations_fall_back_to_jax():
  key = jax.random.key(0, impl='rbg')
  np.testing.assert_array_equal(dropout.bernoulli(key, 0.7, (6, 9)),
                                jax.random.bernoulli(key, 0.7, (6, 9)))


@pytest.mark.parametrize('rate, broadcast_dims', [(0.1, ()), (0.3, (1, 2)), (0.3, (-1,)),
                                                  (0., ()), (1., ())])
def test_module_is_flax_dropout(rate, broadcast_dims):
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 6, 8))
  rngs = {'dropout': jax.random.PRNGKey(9)}
  apply = lambda cls, det: cls(rate, broadcast_dims).apply({}, x, deterministic=det, rngs=rngs)
  for deterministic in (False, True):
    np.testing.assert_array_equal(apply(dropout.Dropout, deterministic),
                                  apply(nn.Dropout, deterministic))
