"""Sampling for either method, as one compiled program per sampler, sharded over the batch.

`make_sample_fn(config, model, mesh, batch_size)` returns `fn(params, key) -> uint8 [B, H, W, C]`:
  * diffusion: `diffusion.sample` (DDPM / DDIM / DPM-Solver++) with the config's *sampling* schedule
    (may differ from the training one: the network is conditioned on γ), input scale b, variance
    normalisation, latent self-conditioning carried across steps, and classifier-free guidance;
  * ncsn: `langevin.annealed_langevin` from U[0, 1] with the config's σ's, T and ε, then the final
    denoising step.
`generate(...)` loops over batches (host loop over *batches*, never over sampler steps).
"""

from typing import Callable, Iterator, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from ncsn_rin import diffusion
from ncsn_rin import langevin
from ncsn_rin import noise_scales
from ncsn_rin import schedules
from ncsn_rin import sharding as sharding_lib

DIFFUSION_SAMPLERS = ('ddpm', 'ddim', 'dpm_solver++')


def to_uint8_from_signed(x: jax.Array) -> jax.Array:
  """[-1, 1] float -> uint8 (diffusion data convention)."""
  return jnp.clip(jnp.round((x + 1.) * 127.5), 0, 255).astype(jnp.uint8)


def to_uint8_from_unit(x: jax.Array) -> jax.Array:
  """[0, 1] float -> uint8 (NCSNv2 data convention)."""
  return jnp.clip(jnp.round(x * 255.), 0, 255).astype(jnp.uint8)


def sample_labels(batch_size: int, num_classes: int, offset: int = 0) -> Optional[jax.Array]:
  """Class labels cycling 0..num_classes-1 (rows of a grid show the classes); None if unconditional."""
  if num_classes <= 0:
    return None
  return (jnp.arange(batch_size, dtype=jnp.int32) + offset) % num_classes


def _constrain(x, mesh: Optional[Mesh]):
  return x if mesh is None else jax.lax.with_sharding_constraint(
      x, sharding_lib.batch_sharding(mesh))


def make_diffusion_denoise_fn(config, model, params, labels, mesh=None) -> Callable:
  """ε-predictor `(x_t, γ, self_cond) -> (ε, self_cond)` on raw x_t, with guidance when asked."""
  d = config.diffusion

  def eps_fn_for(lbls):
    def net_fn(x_in, gamma, self_cond):
      return model.apply({'params': params}, _constrain(x_in, mesh), gamma, lbls, self_cond,
                         train=False)
    return diffusion.make_eps_fn(net_fn, pred_target=d.pred_target,
                                 normalize_input=d.normalize_input, b=d.input_scale)

  w = config.sample.guidance_scale
  if labels is None or w == 0.:
    return eps_fn_for(labels)
  cond_fn = eps_fn_for(labels)
  uncond_fn = eps_fn_for(jnp.full_like(labels, config.data.num_classes))  # null label

  def guided(x_t, gamma, self_cond):
    """Classifier-free guidance (Ho & Salimans 2022): ε = (1 + w)·ε(x, c) − w·ε(x, ∅)."""
    eps_c, sc_c = cond_fn(x_t, gamma, self_cond[0])
    eps_u, sc_u = uncond_fn(x_t, gamma, self_cond[1])
    return (1. + w) * eps_c - w * eps_u, (sc_c, sc_u)

  return guided


def _self_cond_init(config, model, batch_size):
  if config.model.name != 'rin' or not model.self_cond:
    return None
  init = jnp.zeros(model.latent_shape(batch_size), jnp.float32)
  if config.data.num_classes > 0 and config.sample.guidance_scale != 0.:
    return (init, init)
  return init


def check_sampler(config: ml_collections.ConfigDict):
  """Raises ValueError for a sampler name that does not fit the method."""
  method = config.sample.method
  if config.method == 'diffusion' and method not in DIFFUSION_SAMPLERS:
    raise ValueError(f'config.sample.method={method!r} is not a diffusion sampler; use one of '
                     f'{DIFFUSION_SAMPLERS}.')
  if config.method == 'ncsn' and method != 'langevin':
    raise ValueError(f"config.sample.method={method!r}: NCSNv2 samples with 'langevin'; set "
                     "--config.sample.method=langevin.")


def ncsn_sigmas(config) -> jax.Array:
  n = config.ncsn
  return noise_scales.geometric_sigmas(n.sigma_max, n.sigma_min, n.num_scales)


def make_sample_fn(config: ml_collections.ConfigDict, model, mesh: Optional[Mesh],
                   batch_size: int) -> Callable:
  """Jitted `fn(params, key, label_offset) -> uint8 [batch_size, H, W, C]`."""
  check_sampler(config)
  shape = (batch_size, config.data.image_size, config.data.image_size, config.data.num_channels)
  out_sharding = None if mesh is None else sharding_lib.batch_sharding(mesh)

  if config.method == 'diffusion':
    s = config.sample
    gamma_fn = schedules.get_gamma_fn(config.diffusion.sample_schedule)

    def sample_fn(params, key, label_offset):
      labels = sample_labels(batch_size, config.data.num_classes, label_offset)
      denoise_fn = make_diffusion_denoise_fn(config, model, params, labels, mesh)
      sc_init = _self_cond_init(config, model, batch_size)
      if sc_init is None:
        plain_fn = denoise_fn
        denoise_fn = lambda x, g: plain_fn(x, g, None)[0]
      x0 = diffusion.sample(
          denoise_fn, shape, key, gamma_fn=gamma_fn, num_steps=s.num_steps, method=s.method,
          b=config.diffusion.input_scale, time_difference=s.time_difference,
          clip_x0=s.clip_x0, ddpm_variance=s.ddpm_variance, self_cond_init=sc_init)
      return to_uint8_from_signed(x0)
  else:
    n = config.ncsn
    sigmas = ncsn_sigmas(config)

    def sample_fn(params, key, label_offset):
      del label_offset
      score_fn = lambda x, sigma: model.apply({'params': params}, _constrain(x, mesh), sigma)
      init_key, key = jax.random.split(key)
      x = langevin.uniform_init(init_key, shape)
      x, _ = langevin.annealed_langevin(score_fn, x, sigmas, key, n_steps_each=n.n_steps_each,
                                        step_lr=n.step_lr, denoise=n.denoise)
      return to_uint8_from_unit(x)

  return jax.jit(sample_fn, out_shardings=out_sharding)


def device_batch_size(requested: int, mesh: Optional[Mesh]) -> int:
  """Rounds a sampling batch up to a multiple of the device count."""
  n = 1 if mesh is None else mesh.devices.size
  return max(n, -(-requested // n) * n)


def generate(sample_fn: Callable, params, key: jax.Array, num_samples: int, batch_size: int,
             *, start_batch: int = 0, num_classes: int = 0) -> Iterator[np.ndarray]:
  """Yields uint8 batches; batch i uses fold_in(key, i), so a resumed run continues exactly."""
  num_batches = -(-num_samples // batch_size)
  for i in range(start_batch, num_batches):
    images = sample_fn(params, jax.random.fold_in(key, i), (i * batch_size) % max(num_classes, 1))
    images = sharding_lib.to_host(images)
    yield images[:num_samples - i * batch_size]
