"""RIN: shapes, self-conditioning at init, class conditioning, parameter counts of every config."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncsn_rin import models
from ncsn_rin.models.rin import RIN

SMALL = dict(num_blocks=2, num_layers_per_block=1, num_latents=8, latent_dim=32, tape_dim=16,
             latent_heads=4, rw_heads=2, latent_mlp_ratio=2, tape_mlp_ratio=2)


def _init(model, x, labels=None):
  gamma = jnp.linspace(0.1, 0.9, x.shape[0])
  return model.init(jax.random.PRNGKey(0), x, gamma, labels), gamma


@pytest.mark.parametrize('size,patch,channels', [(16, 2, 3), (32, 4, 1), (64, 8, 3), (24, 3, 3)])
@pytest.mark.parametrize('num_classes', [0, 10])
def test_output_shape_equals_input_shape(size, patch, channels, num_classes):
  model = RIN(image_size=size, num_channels=channels, patch_size=patch, num_classes=num_classes,
              **SMALL)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, size, size, channels))
  labels = jnp.array([3, num_classes]) if num_classes else None
  variables, gamma = _init(model, x, labels)
  out, latents = model.apply(variables, x, gamma, labels)
  assert out.shape == x.shape and out.dtype == jnp.float32
  assert latents.shape == model.latent_shape(2)


def test_self_conditioning_is_exact_noop_at_init():
  model = RIN(image_size=16, num_channels=3, patch_size=4, num_classes=10, **SMALL)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 16, 16, 3))
  labels = jnp.array([0, 1, 2])
  variables, gamma = _init(model, x, labels)
  out0, latents = model.apply(variables, x, gamma, labels)
  prev = latents + 3. * jax.random.normal(jax.random.PRNGKey(2), latents.shape)
  out1, _ = model.apply(variables, x, gamma, labels, latent_prev=prev)
  np.testing.assert_array_equal(np.asarray(out0), np.asarray(out1))
  # ... and it is not a no-op once the zero-initialised LayerNorm scale has moved.
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: v + 0.5 if 'latent_prev_ln' in jax.tree_util.keystr(p) else v,
      variables['params'])
  out2, _ = model.apply({'params': params}, x, gamma, labels, latent_prev=prev)
  assert np.abs(np.asarray(out2) - np.asarray(out0)).max() > 1e-4


def test_class_label_changes_output_and_gamma_conditions():
  model = RIN(image_size=16, num_channels=3, patch_size=4, num_classes=10, **SMALL)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  variables, gamma = _init(model, x, jnp.array([0, 0]))
  a, _ = model.apply(variables, x, gamma, jnp.array([1, 1]))
  b, _ = model.apply(variables, x, gamma, jnp.array([7, 1]))
  assert np.abs(np.asarray(a[0] - b[0])).max() > 1e-5   # label of example 0 changed
  np.testing.assert_allclose(np.asarray(a[1]), np.asarray(b[1]), atol=1e-6)  # example 1 not
  c, _ = model.apply(variables, x, gamma[::-1], jnp.array([1, 1]))
  assert np.abs(np.asarray(a - c)).max() > 1e-5


def test_missing_labels_and_bad_patch_size_raise():
  model = RIN(image_size=16, num_channels=3, patch_size=4, num_classes=10, **SMALL)
  x = jnp.zeros((1, 16, 16, 3))
  with pytest.raises(ValueError, match='labels'):
    model.init(jax.random.PRNGKey(0), x, jnp.ones((1,)), None)
  model = RIN(image_size=18, num_channels=3, patch_size=4, **SMALL)
  with pytest.raises(ValueError, match='patch_size=4'):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 18, 18, 3)), jnp.ones((1,)))


def test_bfloat16_remat_and_dropout_paths_run():
  model = RIN(image_size=16, num_channels=3, patch_size=4, dropout=0.1, drop_path=0.1,
              remat=True, dtype=jnp.bfloat16, **SMALL)
  x = jnp.ones((2, 16, 16, 3))
  variables, gamma = _init(model, x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  loss = lambda p: model.apply(p, x, gamma, train=True, rngs={'dropout': jax.random.PRNGKey(3)}
                               )[0].sum()
  grads = jax.jit(jax.grad(loss))(variables)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


# (config module, expected params in millions or None, tolerance). The papers give 31M (RIN CIFAR-10),
# 320M (Chen 2023 512²) and 412M (1024²); RefineNets: 29.69M / 83.45M / 94.13M (NCSNv2 paper).
CONFIG_PARAMS = [
    ('rin_cifar10', 31.0, 0.05),
    ('rin_imagenet512', 320.0, 0.05),
    ('rin_imagenet1024', 412.0, 0.05),
    ('rin_imagenet64', None, None),
    ('rin_imagenet128', None, None),
    ('rin_imagenet256', None, None),
    ('rin_digits', None, None),
    ('ncsnv2_cifar10', 29.69, 0.01),
    ('ncsnv2_celeba64', 29.69, 0.01),
    ('ncsnv2_church96', 83.45, 0.01),
    ('ncsnv2_bedroom128', 83.45, 0.01),
    ('ncsnv2_ffhq256', 94.13, 0.01),
    ('ncsnv2_digits', None, None),
]


@pytest.mark.parametrize('name,expected,tol', CONFIG_PARAMS)
def test_param_count_of_every_config_from_abstract_shapes(name, expected, tol):
  config = importlib.import_module(f'configs.{name}').get_config()
  count = models.param_count(config) / 1e6
  assert count > 0.1
  if expected is not None:
    assert abs(count - expected) / expected < tol, f'{name}: {count:.2f}M vs paper {expected}M'
