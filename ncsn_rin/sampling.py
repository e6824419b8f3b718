"""Samplers of either method as one compiled program each, sharded over the batch.

`make_diffusion_sample_fn` and `make_langevin_sample_fn` return a jitted
`fn(params, key) -> (uint8 [B, H, W, C], labels int32 [B] or None)`, global arrays split over the
batch sharding (labels are drawn inside, so every host agrees on them):
  * diffusion: `diffusion.sample` (DDPM / DDIM / DPM-Solver++) with the *sampling* schedule (it may
    differ from the training one: the network is conditioned on γ), input scale b, variance
    normalisation, RIN latent self-conditioning carried across steps, classifier-free guidance;
  * NCSNv2: `langevin.annealed_langevin` from U[0, 1] with its σ's, T and ε, then the final
    denoising step.
`generate` loops over *batches* on the host (never over sampler steps).
"""

from typing import Callable, Iterator, Optional, Tuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from ncsn_rin import diffusion
from ncsn_rin import images
from ncsn_rin import langevin


def sample_labels(key: jax.Array, n: int, num_classes: int, balanced: bool) -> Optional[jax.Array]:
  """Class labels int32 [n] for class-conditional sampling; None when unconditional.

  `balanced=False`: uniform over the classes, as pix2seq's `Model.sample`
  (`tf.random.uniform([n], 0, num_classes)`) — the FID protocol of the RIN papers.
  `balanced=True`: 0, 1, …, K−1, 0, 1, … (sample grids: column k shows class k; exactly balanced
  when n is a multiple of K).
  """
  if num_classes <= 0:
    return None
  if balanced:
    return jnp.arange(n, dtype=jnp.int32) % num_classes
  return jax.random.randint(key, (n,), 0, num_classes, dtype=jnp.int32)


def _constrain(x, sharding: Optional[NamedSharding]):
  return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def guided_eps_fn(eps_fn: Callable, guidance_scale: float, null_label: int) -> Callable:
  """Classifier-free guidance (Ho & Salimans 2022) as pix2seq `Scheduler.generate` does it.

  `eps_fn(x_t, gamma, self_cond, labels) -> (eps, self_cond_out)`. Returns the same signature with
  ε = (1 + w)·ε(x, c) − w·ε(x, ∅); both passes read the self-conditioning latents of the previous
  conditional pass, and only the conditional pass's latents are carried on (pix2seq keeps
  `pred_out_l` in its context). w = 0 returns `eps_fn` itself (one pass).
  """
  if guidance_scale == 0:
    return eps_fn

  def guided(x_t, gamma, self_cond, labels):
    eps_c, self_cond_out = eps_fn(x_t, gamma, self_cond, labels)
    eps_u, _ = eps_fn(x_t, gamma, self_cond, jnp.full_like(labels, null_label))
    return (1. + guidance_scale) * eps_c - guidance_scale * eps_u, self_cond_out

  return guided


def make_diffusion_sample_fn(model, shape: Tuple[int, ...], *, gamma_fn: Callable,
                             num_steps: int, method: str, b: float, pred_target: str,
                             normalize_input: bool, time_difference: float, clip_x0: bool,
                             ddpm_variance: str, guidance_scale: float, num_classes: int,
                             balanced_labels: bool, self_cond: bool,
                             sharding: Optional[NamedSharding]) -> Callable:
  """Jitted `fn(params, key) -> (uint8 [B, H, W, C], labels)` (see module docstring).

  Labels: `sample_labels(·, B, num_classes, balanced_labels)`; the null label is `num_classes`.
  `model.apply(variables, x, gamma, labels, latent_prev)` returns (pred, latents); `self_cond`
  carries the latents from step to step (RIN Sec. 3.4) starting from zeros of
  `model.latent_shape(B)`.
  """

  def sample_fn(params, key):
    label_key, key = jax.random.split(key)
    labels = sample_labels(label_key, shape[0], num_classes, balanced_labels)

    def eps_fn(x_t, gamma, latent_prev, lbls):
      net_fn = lambda x, g, sc: model.apply({'params': params}, _constrain(x, sharding), g, lbls,
                                            sc)
      return diffusion.make_eps_fn(net_fn, pred_target=pred_target,
                                   normalize_input=normalize_input, b=b)(x_t, gamma, latent_prev)

    eps_fn = guided_eps_fn(eps_fn, guidance_scale, num_classes)
    sc_init = jnp.zeros(model.latent_shape(shape[0]), jnp.float32) if self_cond else None
    if sc_init is None:
      denoise_fn = lambda x, g: eps_fn(x, g, None, labels)[0]
    else:
      denoise_fn = lambda x, g, sc: eps_fn(x, g, sc, labels)
    x0 = diffusion.sample(
        denoise_fn, shape, key, gamma_fn=gamma_fn, num_steps=num_steps, method=method, b=b,
        time_difference=time_difference, clip_x0=clip_x0, ddpm_variance=ddpm_variance,
        self_cond_init=sc_init)
    return images.signed_to_uint8(x0), labels

  return jax.jit(sample_fn, out_shardings=sharding)


def make_langevin_sample_fn(model, shape: Tuple[int, ...], *, sigmas: jax.Array,
                            n_steps_each: int, step_lr: float, denoise: bool,
                            sharding: Optional[NamedSharding]) -> Callable:
  """Jitted `fn(params, key) -> (uint8 [B, H, W, C], None)`: NCSNv2 annealed Langevin from U[0, 1]
  (`ncsnv2/runners/ncsn_runner.py` sample: `torch.rand` init, `final_only`, `denoise`); the network
  is unconditional (Technique 3)."""

  def sample_fn(params, key):
    score_fn = lambda x, sigma: model.apply({'params': params}, _constrain(x, sharding), sigma)
    init_key, key = jax.random.split(key)
    x = jax.random.uniform(init_key, shape)
    x = langevin.annealed_langevin(score_fn, x, sigmas, key, n_steps_each=n_steps_each,
                                      step_lr=step_lr, denoise=denoise)
    return images.unit_to_uint8(x), None

  return jax.jit(sample_fn, out_shardings=sharding)


def device_batch_size(requested: int, num_devices: int) -> int:
  """Rounds a sampling batch up to a multiple of the device count."""
  return max(num_devices, -(-requested // num_devices) * num_devices)


def generate(sample_fn: Callable, params, key: jax.Array, num_samples: int, batch_size: int,
             *, start_batch: int = 0) -> Iterator[Tuple[int, jax.Array, Optional[jax.Array]]]:
  """Yields (batch index i, uint8 images [batch_size, ...], labels or None) for the batches
  covering `num_samples` (the last batch is full; the caller keeps the first rows it needs).

  Batch i uses fold_in(key, i), so a resumed run continues exactly. Images stay global device
  arrays (multi-host: split over the hosts).
  """
  for i in range(start_batch, -(-num_samples // batch_size)):
    yield (i,) + tuple(sample_fn(params, jax.random.fold_in(key, i)))
