"""Networks, and the one place where a config becomes typed constructor arguments.

`model_from_config(config)` is the only function that reads `config.model`; networks themselves
only map tensors to tensors.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ncsn_rin.models.rin import RIN

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
MODEL_NAMES = ('rin', 'refinenet')


def compute_dtype(name: str):
  if name not in _DTYPES:
    raise ValueError(f'config.model.dtype={name!r} is not one of {sorted(_DTYPES)}; '
                     "use 'bfloat16' on TPU/GPU for speed or 'float32'.")
  return _DTYPES[name]


def rin_from_config(config: ml_collections.ConfigDict) -> RIN:
  """RIN with the arguments of `config.model` and the image shape of `config.data`."""
  m, d = config.model, config.data
  if d.image_size % m.patch_size:
    raise ValueError(f'config.data.image_size={d.image_size} is not divisible by '
                     f'config.model.patch_size={m.patch_size}; choose a patch size that divides '
                     'the image size (e.g. 2, 4, 8, 16).')
  return RIN(
      image_size=d.image_size, num_channels=d.num_channels, patch_size=m.patch_size,
      num_blocks=m.num_blocks, num_layers_per_block=m.num_layers_per_block,
      num_latents=m.num_latents, latent_dim=m.latent_dim, tape_dim=m.tape_dim,
      latent_heads=m.latent_heads, rw_heads=m.rw_heads, latent_mlp_ratio=m.latent_mlp_ratio,
      tape_mlp_ratio=m.tape_mlp_ratio, dropout=m.dropout, drop_path=m.drop_path,
      num_classes=d.num_classes, time_scale=m.time_scale, self_cond=m.self_cond,
      remat=config.sharding.remat, dtype=compute_dtype(m.dtype))


def refinenet_from_config(config: ml_collections.ConfigDict):
  """NCSNv2 / NCSNv2Deeper / NCSNv2Deepest with `config.model.variant` and `config.model.ngf`."""
  from ncsn_rin.models import refinenet  # pylint: disable=g-import-not-at-top
  m = config.model
  return refinenet.refinenet_from_name(
      m.variant, ngf=m.ngf, num_channels=config.data.num_channels,
      dtype=compute_dtype(m.dtype))


def model_from_config(config: ml_collections.ConfigDict):
  """Builds the network named by `config.model.name` ('rin' or 'refinenet')."""
  name = config.model.name
  if name == 'rin':
    return rin_from_config(config)
  if name == 'refinenet':
    return refinenet_from_config(config)
  raise ValueError(f'config.model.name={name!r} is not one of {MODEL_NAMES}.')


def dummy_inputs(config: ml_collections.ConfigDict, batch_size: int = 1):
  """Positional example inputs for `model.init` (shapes only matter)."""
  d = config.data
  x = jnp.zeros((batch_size, d.image_size, d.image_size, d.num_channels), jnp.float32)
  noise_level = jnp.ones((batch_size,), jnp.float32)
  if config.model.name == 'rin':
    labels = jnp.zeros((batch_size,), jnp.int32) if d.num_classes > 0 else None
    return (x, noise_level, labels)
  return (x, noise_level)


def abstract_params(config: ml_collections.ConfigDict):
  """Parameter shapes from `jax.eval_shape` (nothing is allocated)."""
  model = model_from_config(config)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), *dummy_inputs(config))
  return variables['params']


def param_count(config: ml_collections.ConfigDict) -> int:
  """Number of parameters of the config's network, from abstract shapes (no allocation)."""
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(abstract_params(config))))
