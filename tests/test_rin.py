"""RIN against the official pix2seq Tape: the forward pass in float64 numpy, the time token, exact
GELU, Keras initialisation, self-conditioning at init, class / null label; parameter counts."""

import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from ncsn_rin import experiment
from ncsn_rin.models import rin as rin_lib
from ncsn_rin.models.rin import RIN
from tests import helpers

SMALL = dict(num_blocks=2, num_layers_per_block=2, latent_slots=12, latent_dim=32, tape_dim=16,
             latent_heads=4, rw_heads=2, latent_mlp_ratio=4, tape_mlp_ratio=2)


def _model(num_classes=10, **kw):
  return RIN(image_size=16, num_channels=3, patch_size=4, num_classes=num_classes,
             **{**SMALL, **kw})


def _init(model, batch=3, seed=0):
  s = model.image_size
  x = jax.random.normal(jax.random.PRNGKey(seed + 1), (batch, s, s, 3))
  gamma = jnp.linspace(0.05, 0.95, batch)
  labels = (jnp.arange(batch) % 11).astype(jnp.int32) if model.num_classes else None
  params = jax.jit(model.init)(jax.random.PRNGKey(seed), x, gamma, labels)['params']
  return params, x, gamma, labels


# ------------------------------------------------------------------------------------------------
# An independent float64 transcription of pix2seq `ImageTapeDenoiser.call` (time_on_latent,
# cond_on_latent, self_cond='latent', learned positions, Keras MultiHeadAttention, exact GELU).
# ------------------------------------------------------------------------------------------------

def _np_ln(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p['scale'] + p['bias']


def _np_dense(x, p):
  return x @ p['kernel'] + p['bias']


def _np_gelu(x):
  return 0.5 * x * (1. + scipy.special.erf(x / math.sqrt(2.)))


def _np_mlp(x, p):  # pix2seq MLP(num_layers=1): x + dense2(gelu(dense1(ln(x))))
  return x + _np_dense(_np_gelu(_np_dense(_np_ln(x, p['ln']), p['dense1'])), p['dense2'])


def _np_mha(x, ctx, p):  # Keras MultiHeadAttention, kernels [D, N, H] and [N, H, D]
  q = np.einsum('btd,dnh->btnh', x, p['query']['kernel']) + p['query']['bias']
  k = np.einsum('bsd,dnh->bsnh', ctx, p['key']['kernel']) + p['key']['bias']
  v = np.einsum('bsd,dnh->bsnh', ctx, p['value']['kernel']) + p['value']['bias']
  logits = np.einsum('btnh,bsnh->bnts', q / np.sqrt(q.shape[-1]), k)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = np.einsum('bnts,bsnh->btnh', w, v)
  return np.einsum('btnh,nhd->btd', out, p['out']['kernel']) + p['out']['bias']


def _np_block_unit(x, ctx, p):  # read / write / compute: x += MHA(LN(x), ctx or LN(x)); MLP
  h = _np_ln(x, p['ln'])
  x = x + _np_mha(h, h if ctx is None else ctx, p['attn'])
  return _np_mlp(x, p['mlp'])


def tape_forward_numpy(params, x, gamma, labels, latent_prev, model):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x, gamma = np.asarray(x, np.float64), np.asarray(gamma, np.float64)
  b, s, P = x.shape[0], model.image_size, model.patch_size
  n = s // P
  patches = x.reshape(b, n, P, n, P, 3).transpose(0, 1, 3, 2, 4, 5).reshape(b, n * n, P * P * 3)
  tape = _np_ln(patches @ p['stem']['kernel'].reshape(-1, model.tape_dim) + p['stem']['bias'],
                p['stem_ln']) + p['tape_pos']
  # ScalarEmbedding(normalize=True, last_swish=False): pix2seq positional_encoding (even index i
  # of range(dim) -> sin, odd -> cos, angle rate 1/10000^(2·(i//2)/dim)), then standardised.
  dim = model.latent_dim // 4
  i = np.arange(dim)
  angles = (gamma * model.time_scale)[:, None] / np.power(10000., 2 * (i // 2) / dim)
  feats = np.concatenate([np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])], -1)
  feats = (feats - feats.mean(-1, keepdims=True)) / feats.std(-1, keepdims=True)
  silu = lambda z: z / (1. + np.exp(-z))
  time = _np_dense(silu(_np_dense(feats, p['time_dense0'])), p['time_dense1'])
  one_hot = np.eye(model.num_classes + 1)[np.asarray(labels)][:, :model.num_classes]
  cls = _np_dense(one_hot, p['class_proj'])
  latents = np.concatenate([np.broadcast_to(p['latent_pos'], (b,) + p['latent_pos'].shape),
                            time[:, None], cls[:, None]], 1)
  latents = latents + _np_ln(_np_mlp(np.asarray(latent_prev, np.float64), p['latent_prev_proj']),
                             p['latent_prev_ln'])
  for k in range(model.num_blocks):
    blk = p[f'block_{k}']
    latents = _np_block_unit(latents, tape, blk['read'])
    for j in range(model.num_layers_per_block):
      latents = _np_block_unit(latents, None, blk[f'compute_{j}'])
    tape = _np_block_unit(tape, latents, blk['write'])
  out = _np_dense(_np_ln(tape, p['out_ln']), p['out_dense'])           # [b, n·n, P·P·3]
  out = out.reshape(b, n, n, P, P, 3).transpose(0, 1, 3, 2, 4, 5)      # depth_to_space
  return out.reshape(b, s, s, 3), latents


def _perturbed(params):
  return helpers.perturbed(params, seed=7, scale=0.1)


def test_forward_equals_float64_transcription_of_pix2seq_tape():
  model = _model()
  params, x, gamma, _ = _init(model)
  params = _perturbed(params)
  labels = jnp.array([1, 9, 10], jnp.int32)  # 10 = the null label (zero one-hot)
  prev = jax.random.normal(jax.random.PRNGKey(3), model.latent_shape(3))
  with jax.default_matmul_precision('highest'):
    out, latents = model.apply({'params': params}, x, gamma, labels, prev)
  ref_out, ref_latents = tape_forward_numpy(params, x, gamma, labels, prev, model)
  rel = lambda a, b: np.abs(np.asarray(a) - b).max() / np.abs(b).max()
  assert rel(out, ref_out) < 1e-5
  assert rel(latents, ref_latents) < 1e-5


def _captured(model, params, gamma, labels, layer):
  """Output of submodule `layer` (e.g. the time token = output of 'time_dense1') in a forward."""
  x = jnp.zeros((gamma.shape[0], 16, 16, 3))
  _, state = model.apply({'params': params}, x, gamma, labels, capture_intermediates=True,
                         mutable=['intermediates'])
  return state['intermediates'][layer]['__call__'][0]


def test_time_token_is_standardised_sincos_then_dense_silu_dense():
  """pix2seq ScalarEmbedding(normalize=True, last_swish=False), float64 reference; the old token
  (LayerNorm after the MLP, raw features) must not pass."""
  model = _model()
  params, _, _, _ = _init(model)
  params = _perturbed(params)
  gamma = jnp.array([1e-4, 0.3, 0.999])
  token = _captured(model, params, gamma, jnp.array([0, 1, 2]), 'time_dense1')
  dim = model.latent_dim // 4
  i = np.arange(dim)
  angles = (np.asarray(gamma, np.float64) * 1000.)[:, None] / 10000. ** (2 * (i // 2) / dim)
  feats = np.concatenate([np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])], -1)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  silu = lambda z: z / (1. + np.exp(-z))
  expect = lambda f: _np_dense(silu(_np_dense(f, p['time_dense0'])), p['time_dense1'])
  standardised = (feats - feats.mean(-1, keepdims=True)) / feats.std(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(token), expect(standardised), rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(token) - expect(feats)).max() > 1e-2  # raw features: wrong


def test_mlp_gelu_is_exact_erf():
  mlp = rin_lib.Mlp(ratio=2)
  x = 3. * jax.random.normal(jax.random.PRNGKey(0), (2, 5, 8))
  params = _perturbed(mlp.init(jax.random.PRNGKey(1), x, True)['params'])
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  with jax.default_matmul_precision('highest'):
    out = np.asarray(mlp.apply({'params': params}, x, True))
  hidden = _np_dense(_np_ln(np.asarray(x, np.float64), p['ln']), p['dense1'])
  erf_ref = np.asarray(x) + _np_dense(_np_gelu(hidden), p['dense2'])
  tanh_gelu = 0.5 * hidden * (1 + np.tanh(np.sqrt(2 / np.pi) * (hidden + 0.044715 * hidden ** 3)))
  tanh_ref = np.asarray(x) + _np_dense(tanh_gelu, p['dense2'])
  np.testing.assert_allclose(out, erf_ref, rtol=1e-5, atol=1e-5)
  assert np.abs(out - tanh_ref).max() > 1e-4  # the tanh approximation is distinguishable


def _keras_glorot_limit(shape):
  """Keras: 2-D (fan_in, fan_out) = shape; N-D: receptive = prod(shape[:-2]),
  fan_in = shape[-2]·receptive, fan_out = shape[-1]·receptive; limit sqrt(6/(in+out))."""
  if len(shape) == 2:
    fan_in, fan_out = shape
  else:
    receptive = int(np.prod(shape[:-2]))
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
  return math.sqrt(6. / (fan_in + fan_out))


def test_initialisation_follows_keras_per_layer_type():
  """Mid-size model: every kernel is U(±limit) with Keras's fans (std = limit/√3), biases and
  LayerNorm shifts 0, LayerNorm scales 1 (latent_prev_ln: 0), positions truncated N(0, 0.02)."""
  model = RIN(image_size=32, num_channels=3, num_classes=10, patch_size=4, num_blocks=1,
              num_layers_per_block=1, latent_slots=64, latent_dim=256, tape_dim=128,
              latent_heads=8, rw_heads=4)
  params, _, _, _ = _init(model)
  seen = set()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name, value = jax.tree_util.keystr(path), np.asarray(leaf)
    last = path[-1].key
    if last == 'kernel':
      limit = _keras_glorot_limit(value.shape)
      assert np.abs(value).max() <= limit * (1 + 1e-6), name
      assert abs(value.std() / (limit / math.sqrt(3.)) - 1) < 0.05, (name, value.shape)
      seen.add(f'kernel{value.ndim}d')
    elif last == 'bias':
      assert not value.any(), name
    elif last == 'scale':
      assert (value == (0. if 'latent_prev_ln' in name else 1.)).all(), name
    else:  # latent_pos, tape_pos
      assert np.abs(value).max() <= 0.04 and abs(value.std() / (0.02 * 0.8796) - 1) < 0.05, name
      seen.add(last)
  assert seen == {'kernel2d', 'kernel3d', 'kernel4d', 'latent_pos', 'tape_pos'}
  # Flax's own DenseGeneral rule would give a query kernel [256, 8, 32] std 1/√256 ≈ 0.0625;
  # Keras gives ≈ 0.0160: the test above tells them apart.


def test_self_conditioning_is_exact_noop_at_init():
  model = _model()
  params, x, gamma, labels = _init(model)
  out0, latents = model.apply({'params': params}, x, gamma, labels)
  prev = latents + 3. * jax.random.normal(jax.random.PRNGKey(2), latents.shape)
  out1, _ = model.apply({'params': params}, x, gamma, labels, latent_prev=prev)
  np.testing.assert_array_equal(np.asarray(out0), np.asarray(out1))
  moved = jax.tree_util.tree_map_with_path(
      lambda p, v: v + 0.5 if 'latent_prev_ln' in jax.tree_util.keystr(p) else v, params)
  out2, _ = model.apply({'params': moved}, x, gamma, labels, latent_prev=prev)
  assert np.abs(np.asarray(out2) - np.asarray(out0)).max() > 1e-4


def test_null_label_is_the_class_projection_bias_and_labels_condition_per_example():
  model = _model()
  params, x, gamma, _ = _init(model)
  params = _perturbed(params)
  tokens = _captured(model, params, gamma, jnp.array([10, 2, 10]), 'class_proj')
  np.testing.assert_allclose(np.asarray(tokens[0]), np.asarray(params['class_proj']['bias']),
                             rtol=1e-6)
  assert np.abs(np.asarray(tokens[1] - tokens[0])).max() > 1e-3
  a, _ = model.apply({'params': params}, x, gamma, jnp.array([1, 1, 1]))
  b, _ = model.apply({'params': params}, x, gamma, jnp.array([7, 1, 1]))
  assert np.abs(np.asarray(a[0] - b[0])).max() > 1e-5
  np.testing.assert_allclose(np.asarray(a[1:]), np.asarray(b[1:]), atol=1e-6)


@pytest.mark.parametrize('num_classes', [0, 10])
def test_latent_slots_count_the_time_and_class_tokens(num_classes):
  model = _model(num_classes=num_classes)
  params, x, gamma, labels = _init(model)
  assert params['latent_pos'].shape[0] == 12 - (2 if num_classes else 1)
  out, latents = model.apply({'params': params}, x, gamma, labels)
  assert latents.shape == (3, 12, 32) and out.shape == x.shape


def test_bfloat16_remat_and_dropout_paths_run():
  model = _model(num_classes=0, dropout=0.1, drop_path=0.1, remat=True, dtype=jnp.bfloat16)
  params, x, gamma, _ = _init(model)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  loss = lambda p, key: model.apply({'params': p}, x, gamma, train=True,
                                    rngs={'dropout': key})[0].sum()
  grads = jax.jit(jax.grad(loss))(params, jax.random.PRNGKey(3))
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  loss = jax.jit(loss)
  assert loss(params, jax.random.PRNGKey(3)) != loss(params, jax.random.PRNGKey(4))  # dropout on


# Exact parameter counts of every config (abstract shapes; nothing is allocated). The papers give
# 31M (RIN CIFAR-10), 320M (Chen 2023 512²) and 412M (1024²), checked to 5%; RefineNets 29.69M /
# 83.45M / 94.13M (NCSNv2 paper), checked to 0.1%.
CONFIG_PARAMS = [
    ('rin_cifar10', 30_951_180, 31e6),
    ('rin_imagenet64', 157_780_160, None),
    ('rin_imagenet128', 158_124_080, None),
    ('rin_imagenet256', 267_858_624, None),
    ('rin_imagenet512', 321_923_776, 320e6),
    ('rin_imagenet1024', 411_458_560, 412e6),
    ('rin_digits', None, None),
    ('ncsnv2_cifar10', 29_694_083, 29.69e6),
    ('ncsnv2_celeba64', 29_694_083, 29.69e6),
    ('ncsnv2_church96', 83_445_379, 83.45e6),
    ('ncsnv2_bedroom128', 83_445_379, 83.45e6),
    ('ncsnv2_ffhq256', 94_132_611, 94.13e6),
    ('ncsnv2_digits', None, None),
]


@pytest.mark.parametrize('name,exact,paper', CONFIG_PARAMS)
def test_param_count_of_every_config(name, exact, paper):
  config = importlib.import_module(f'configs.{name}').get_config()
  model = experiment.build_model(config)
  d = config.data
  x = jax.ShapeDtypeStruct((1, d.image_size, d.image_size, d.num_channels), jnp.float32)
  args = (x, jax.ShapeDtypeStruct((1,), jnp.float32))
  if config.model.name == 'rin':
    args += (jax.ShapeDtypeStruct((1,), jnp.int32) if d.num_classes else None,)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)['params']
  count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(shapes))
  if exact is not None:
    assert count == exact
  if paper is not None:
    tol = 0.05 if config.model.name == 'rin' else 0.001
    assert abs(count - paper) / paper < tol, f'{name}: {count / 1e6:.2f}M vs paper'
