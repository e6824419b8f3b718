"""The one place where a (validated) config becomes typed objects.

`Experiment(config)` derives, once: the device mesh, the network (`config.model` splatted into
`models.MODELS[name]`), the optimiser and learning-rate schedule, the method's loss, the abstract
train state with its shardings, the compiled train step and the samplers. Below it, nothing reads
the config: networks map tensors to tensors, and the math (`diffusion`, `langevin`,
`noise_scales`, `schedules`) takes plain arguments.
"""

import dataclasses
import functools
import os
from typing import Any, Callable, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ncsn_rin import checkpoints
from ncsn_rin import diffusion
from ncsn_rin import images
from ncsn_rin import models
from ncsn_rin import noise_scales
from ncsn_rin import sampling
from ncsn_rin import schedules
from ncsn_rin import score_matching
from ncsn_rin import sharding as sharding_lib
from ncsn_rin import train


def build_model(config: ml_collections.ConfigDict):
  """`models.MODELS[config.model.name](**config.model, <data shape>, remat, dtype)`."""
  cls = models.MODELS[config.model.name]
  fields = {f.name for f in dataclasses.fields(cls)}
  d = config.data
  data_args = dict(image_size=d.image_size, num_channels=d.num_channels, num_classes=d.num_classes)
  kwargs = {k: v for k, v in config.model.items() if k != 'name'}
  kwargs.update({k: v for k, v in data_args.items() if k in fields})
  kwargs.update(remat=config.sharding.remat, dtype=jnp.dtype(config.model.dtype))
  return cls(**kwargs)


def ncsn_sigmas(config: ml_collections.ConfigDict) -> jax.Array:
  """The NCSNv2 σ ladder σ_1 > … > σ_L (geometric, Technique 2) of `config.ncsn`. [L]."""
  n = config.ncsn
  return noise_scales.geometric_sigmas(n.sigma_max, n.sigma_min, n.num_scales)


def _diffusion_loss_fn(config, model) -> Callable:
  """loss_fn(params, batch, key) -> (loss, aux): Chen 2023 Algorithm 1 on RIN (pix2seq recipe)."""
  d, num_classes = config.diffusion, config.data.num_classes
  gamma_fn = schedules.get_gamma_fn(d.train_schedule)

  def loss_fn(params, batch, key):
    x0 = images.uint8_to_signed(batch['image'])
    labels = batch['label'] if num_classes > 0 else None

    def net_fn(x_in, gamma, latent_prev, pass_key):
      label_key, dropout_key = jax.random.split(pass_key)
      lbls = labels
      if labels is not None and d.label_dropout > 0:  # pix2seq `cond_dropout`, per pass
        lbls = diffusion.drop_labels(labels, label_key, d.label_dropout, num_classes)
      return model.apply({'params': params}, x_in, gamma, lbls, latent_prev, train=True,
                         rngs={'dropout': dropout_key})

    sc_init = (jnp.zeros(model.latent_shape(x0.shape[0]), jnp.float32)
               if getattr(model, 'self_cond', False) else None)
    return diffusion.diffusion_loss(
        net_fn, x0, key, gamma_fn=gamma_fn, b=d.input_scale, pred_target=d.pred_target,
        normalize_input=d.normalize_input, self_cond_rate=d.self_cond_rate,
        self_cond_init=sc_init)

  return loss_fn


def _ncsn_loss_fn(config, model) -> Callable:
  """loss_fn(params, batch, key) -> (loss, aux): NCSNv2 denoising score matching over L levels."""
  sigmas = ncsn_sigmas(config)

  def loss_fn(params, batch, key):
    x = images.uint8_to_unit(batch['image'])
    score_fn = lambda xs, sigma: model.apply({'params': params}, xs, sigma)
    return score_matching.dsm_loss(score_fn, x, sigmas, key)

  return loss_fn


class Experiment:
  """Everything derived once from a config; see the module docstring."""

  def __init__(self, config: ml_collections.ConfigDict, mesh=None):
    self.config = config
    self.mesh = mesh if mesh is not None else sharding_lib.make_mesh()
    self.model = build_model(config)
    o, t = config.optim, config.train
    self.lr_schedule = train.learning_rate_schedule(
        o.learning_rate, warmup_steps=o.warmup_steps, num_steps=t.num_steps, decay=o.decay,
        cosine_fraction=o.cosine_fraction)
    self.optimizer = train.make_optimizer(
        o.name, self.lr_schedule, b1=o.beta1, b2=o.beta2, eps=o.eps,
        weight_decay=o.weight_decay, grad_clip=o.grad_clip)
    loss_builder = _diffusion_loss_fn if config.method == 'diffusion' else _ncsn_loss_fn
    self.loss_fn = loss_builder(config, self.model)
    self.abstract_state = jax.eval_shape(self._init, jax.random.PRNGKey(0))
    self.state_sharding = sharding_lib.state_shardings(self.abstract_state, self.mesh,
                                                       config.sharding.fsdp)
    self.batch_sharding = sharding_lib.batch_sharding(self.mesh)

  # -- state ------------------------------------------------------------------------------------

  def _init(self, key):
    """The train state at step 0 (see `train`), initialised on one dummy example."""
    init_key, rng = jax.random.split(key)
    d = self.config.data
    inputs = (jnp.zeros((1, d.image_size, d.image_size, d.num_channels)), jnp.ones((1,)))
    if self.config.model.name == 'rin':
      inputs += (jnp.zeros((1,), jnp.int32) if d.num_classes else None,)
    params = self.model.init(init_key, *inputs)['params']
    return {
        'step': jnp.zeros((), jnp.int32),
        'params': params,
        'ema_params': jax.tree.map(jnp.copy, params),
        'opt_state': self.optimizer.init(params),
        'rng': rng,
        'nonfinite_step': jnp.full((), -1, jnp.int32),
    }

  @property
  def abstract_sharded_state(self):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.abstract_state, self.state_sharding)

  def init_state(self):
    init = jax.jit(self._init, out_shardings=self.state_sharding)
    return init(jax.random.PRNGKey(self.config.seed))

  def param_count(self) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.abstract_state['params'])))

  def checkpoint_manager(self, workdir: str):
    """The run's CheckpointManager (`workdir`/checkpoints, `config.train` retention)."""
    t = self.config.train
    return checkpoints.make_manager(os.path.join(workdir, 'checkpoints'),
                                    max_to_keep=t.max_to_keep, keep_every=t.keep_every)

  def restore_or_init(self, manager) -> Tuple[Any, int]:
    """Latest restorable checkpoint (logged), else a fresh state at step 0."""
    state, step = checkpoints.restore_latest(manager, self.abstract_sharded_state)
    if state is None:
      logging.info('no checkpoint in %s: starting from step 0', manager.directory)
      return self.init_state(), 0
    logging.info('resumed from checkpoint step %d in %s', step, manager.directory)
    return state, step

  # -- training ---------------------------------------------------------------------------------

  def jitted_train_step(self):
    step = train.make_train_step(self.loss_fn, self.optimizer, self.config.optim.ema_rate,
                                 self.lr_schedule)
    batch_shardings = {'image': self.batch_sharding, 'label': self.batch_sharding}
    return jax.jit(step, in_shardings=(self.state_sharding, batch_shardings),
                   out_shardings=(self.state_sharding, sharding_lib.replicated(self.mesh)),
                   donate_argnums=(0,))

  def compiled_train_step(self, state, batch):
    """The train step compiled ahead of time for these shapes (the state buffers are donated)."""
    return self.jitted_train_step().lower(state, batch).compile()

  # -- sampling ---------------------------------------------------------------------------------

  @functools.lru_cache(maxsize=8)
  def sample_fn(self, batch_size: int, balanced_labels: Optional[bool] = None) -> Callable:
    """Jitted `fn(params, key) -> (uint8 [B, H, W, C], labels or None)`, B = `batch_size` rounded
    up to a multiple of the device count; labels balanced (grids) or `config.eval.balanced_labels`.
    """
    c = self.config
    b = sampling.device_batch_size(batch_size, self.mesh.devices.size)
    shape = (b, c.data.image_size, c.data.image_size, c.data.num_channels)
    if c.method == 'ncsn':
      return sampling.make_langevin_sample_fn(
          self.model, shape, sigmas=ncsn_sigmas(c), n_steps_each=c.ncsn.n_steps_each,
          step_lr=c.ncsn.step_lr, denoise=c.ncsn.denoise, sharding=self.batch_sharding)
    s, d = c.sample, c.diffusion
    balanced = c.eval.balanced_labels if balanced_labels is None else balanced_labels
    return sampling.make_diffusion_sample_fn(
        self.model, shape, gamma_fn=schedules.get_gamma_fn(d.sample_schedule),
        num_steps=s.num_steps, method=s.method, b=d.input_scale, pred_target=d.pred_target,
        normalize_input=d.normalize_input, time_difference=s.time_difference,
        clip_x0=s.clip_x0, ddpm_variance=s.ddpm_variance, guidance_scale=s.guidance_scale,
        num_classes=c.data.num_classes, balanced_labels=balanced,
        self_cond=getattr(self.model, 'self_cond', False), sharding=self.batch_sharding)
