"""Training: a sharded, jit-compiled train step and the loop around it.

The train state is a dict of arrays (so Orbax and shardings see a plain pytree):
    step [] int32, params, ema_params, opt_state, rng [2] uint32, nonfinite_step [] int32 (−1 = none)
It is created directly sharded (`jax.eval_shape(init)` → shardings → `jax.jit(init, out_shardings)`),
and the step's RNG is `fold_in(rng, step)`, so a resumed run sees the same randomness as an
uninterrupted one. A non-finite loss or gradient leaves the state untouched and records the step in
`nonfinite_step`; the host reads that flag only when it logs or checkpoints (no per-step sync) and
stops with an error naming the step, so the last checkpoint is never overwritten by a bad state.
"""

import functools
import os
import signal
import time
from typing import Any, Callable, Dict, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ncsn_rin import checkpoints
from ncsn_rin import diffusion
from ncsn_rin import input_pipeline
from ncsn_rin import models
from ncsn_rin import noise_scales
from ncsn_rin import sampling
from ncsn_rin import schedules
from ncsn_rin import score_matching
from ncsn_rin import sharding as sharding_lib
from ncsn_rin import summaries


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/Inf loss or gradient."""


# ----------------------------------------------------------------------------------------------
# Optimiser
# ----------------------------------------------------------------------------------------------

def learning_rate_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warm-up to `learning_rate`, then constant or cosine decay to 0 at `num_steps`."""
  if optim.decay == 'constant':
    decay = optax.constant_schedule(optim.learning_rate)
  elif optim.decay == 'cosine':
    decay = optax.cosine_decay_schedule(optim.learning_rate,
                                        max(num_steps - optim.warmup_steps, 1))
  else:
    raise ValueError(f"config.optim.decay={optim.decay!r}; allowed: 'constant', 'cosine'.")
  if optim.warmup_steps <= 0:
    return decay
  warmup = optax.linear_schedule(0., optim.learning_rate, optim.warmup_steps)
  return optax.join_schedules([warmup, decay], [optim.warmup_steps])


def weight_decay_mask(params: Any) -> Any:
  """Decay matrices and conv kernels only (no biases, norms, embeddings' 1-D scales)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(optim: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """Adam(W) or LAMB with warm-up + decay, global-norm clipping and a weight-decay mask."""
  lr = learning_rate_schedule(optim, num_steps)
  if optim.name == 'adam':
    opt = optax.adamw(lr, b1=optim.beta1, b2=optim.beta2, eps=optim.eps,
                      weight_decay=optim.weight_decay, mask=weight_decay_mask)
  elif optim.name == 'lamb':
    opt = optax.lamb(lr, b1=optim.beta1, b2=optim.beta2, eps=optim.eps,
                     weight_decay=optim.weight_decay, mask=weight_decay_mask)
  else:
    raise ValueError(f"config.optim.name={optim.name!r}; allowed: 'adam', 'lamb'.")
  if optim.grad_clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(optim.grad_clip), opt)
  return opt


# ----------------------------------------------------------------------------------------------
# Losses: the method's pure loss with the network closed over
# ----------------------------------------------------------------------------------------------

def images_to_signed(images: jax.Array) -> jax.Array:
  """uint8 [B,H,W,C] -> float32 in [-1, 1] (diffusion data)."""
  return images.astype(jnp.float32) / 127.5 - 1.


def images_to_unit(images: jax.Array) -> jax.Array:
  """uint8 [B,H,W,C] -> float32 in [0, 1] (NCSNv2 data)."""
  return images.astype(jnp.float32) / 255.


def make_diffusion_loss(config: ml_collections.ConfigDict, model) -> Callable:
  """loss_fn(params, batch, key) -> (loss, aux): Chen 2023 ε-MSE with RIN self-conditioning."""
  d = config.diffusion
  gamma_fn = schedules.get_gamma_fn(d.train_schedule)
  num_classes = config.data.num_classes

  def loss_fn(params, batch, key):
    x0 = images_to_signed(batch['image'])
    labels = batch['label'] if num_classes > 0 else None
    drop_key, loss_key, dropout_key = jax.random.split(key, 3)
    if labels is not None and d.label_dropout > 0:
      labels = diffusion.drop_labels(labels, drop_key, d.label_dropout, num_classes)

    def net_fn(x_in, gamma, self_cond):
      return model.apply({'params': params}, x_in, gamma, labels, self_cond, train=True,
                         rngs={'dropout': dropout_key})

    sc_init = (jnp.zeros(model.latent_shape(x0.shape[0]), jnp.float32)
               if model.self_cond else None)
    return diffusion.diffusion_loss(
        net_fn, x0, loss_key, gamma_fn=gamma_fn, b=d.input_scale, pred_target=d.pred_target,
        normalize_input=d.normalize_input, self_cond_rate=d.self_cond_rate,
        self_cond_init=sc_init)

  return loss_fn


def make_ncsn_loss(config: ml_collections.ConfigDict, model) -> Callable:
  """loss_fn(params, batch, key) -> (loss, aux): NCSNv2 denoising score matching over L levels."""
  sigmas = sampling.ncsn_sigmas(config)

  def loss_fn(params, batch, key):
    x = images_to_unit(batch['image'])
    score_fn = lambda xs, sigma: model.apply({'params': params}, xs, sigma)
    return score_matching.dsm_loss(score_fn, x, sigmas, key)

  return loss_fn


def make_loss_fn(config: ml_collections.ConfigDict, model) -> Callable:
  if config.method == 'diffusion':
    return make_diffusion_loss(config, model)
  if config.method == 'ncsn':
    return make_ncsn_loss(config, model)
  raise ValueError(f"config.method={config.method!r}; allowed: 'diffusion', 'ncsn'.")


# ----------------------------------------------------------------------------------------------
# State and step
# ----------------------------------------------------------------------------------------------

def make_init_fn(config: ml_collections.ConfigDict, model, optimizer) -> Callable:
  """init_fn(seed_key) -> train state (a dict pytree)."""

  def init_fn(key):
    init_key, rng = jax.random.split(key)
    params = model.init(init_key, *models.dummy_inputs(config))['params']
    return {
        'step': jnp.zeros((), jnp.int32),
        'params': params,
        'ema_params': jax.tree.map(jnp.copy, params),
        'opt_state': optimizer.init(params),
        'rng': rng,
        'nonfinite_step': jnp.full((), -1, jnp.int32),
    }

  return init_fn


def ema_update(ema: Any, params: Any, rate: float) -> Any:
  """EMA of parameters (NCSNv2 Technique 5): ema ← rate·ema + (1 − rate)·params."""
  return jax.tree.map(lambda e, p: rate * e + (1. - rate) * p, ema, params)


def make_train_step(loss_fn: Callable, optimizer, ema_rate: float,
                    lr_schedule: Optional[optax.Schedule] = None) -> Callable:
  """train_step(state, batch) -> (state, metrics). Pure; jit it with shardings and donation."""

  def train_step(state, batch):
    step = state['step']
    key = jax.random.fold_in(state['rng'], step)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'], batch, key)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    ema_params = ema_update(state['ema_params'], params, ema_rate)
    # The update's norm catches a finite gradient that still produces non-finite parameters.
    finite = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)
              & jnp.isfinite(optax.tree.norm(updates)))
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = {
        'step': step + 1,
        'params': keep(params, state['params']),
        'ema_params': keep(ema_params, state['ema_params']),
        'opt_state': keep(opt_state, state['opt_state']),
        'rng': state['rng'],
        'nonfinite_step': jnp.where((state['nonfinite_step'] < 0) & ~finite, step,
                                    state['nonfinite_step']),
    }
    metrics = {'loss': loss, 'grad_norm': grad_norm}
    if lr_schedule is not None:
      metrics['learning_rate'] = lr_schedule(step)
    return new_state, metrics

  return train_step


class Experiment:
  """Everything derived once from a config: mesh, model, optimiser, abstract state, shardings."""

  def __init__(self, config: ml_collections.ConfigDict, mesh=None):
    self.config = config
    self.mesh = mesh if mesh is not None else sharding_lib.make_mesh()
    sharding_lib.check_batch_divisible(config.train.batch_size, self.mesh)
    self.model = models.model_from_config(config)
    self.lr_schedule = learning_rate_schedule(config.optim, config.train.num_steps)
    self.optimizer = make_optimizer(config.optim, config.train.num_steps)
    self.init_fn = make_init_fn(config, self.model, self.optimizer)
    self.abstract_state = jax.eval_shape(self.init_fn, jax.random.PRNGKey(0))
    self.state_sharding = sharding_lib.state_shardings(self.abstract_state, self.mesh,
                                                       config.sharding.fsdp)
    self.batch_sharding = sharding_lib.batch_sharding(self.mesh)

  @property
  def abstract_sharded_state(self):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.abstract_state, self.state_sharding)

  def init_state(self):
    init = jax.jit(self.init_fn, out_shardings=self.state_sharding)
    return init(jax.random.PRNGKey(self.config.seed))

  def compiled_train_step(self):
    step = make_train_step(make_loss_fn(self.config, self.model), self.optimizer,
                           self.config.optim.ema_rate, self.lr_schedule)
    batch_shardings = {'image': self.batch_sharding, 'label': self.batch_sharding}
    return jax.jit(step, in_shardings=(self.state_sharding, batch_shardings),
                   out_shardings=(self.state_sharding, sharding_lib.replicated(self.mesh)),
                   donate_argnums=(0,))

  def param_count(self) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.abstract_state['params'])))


def restore_or_init(exp: Experiment, manager) -> Tuple[Any, int]:
  """Latest restorable checkpoint (logged), else a fresh state."""
  state, step = checkpoints.restore_latest(manager, exp.abstract_sharded_state)
  if state is None:
    logging.info('no checkpoint in %s: starting from step 0', manager.directory)
    return exp.init_state(), 0
  logging.info('resumed from checkpoint step %d in %s', step, manager.directory)
  return state, step


# ----------------------------------------------------------------------------------------------
# Loop
# ----------------------------------------------------------------------------------------------

class PreemptionFlag:
  """SIGTERM (what a preempted TPU VM / SLURM job gets): the loop saves and exits 0.

  One process: a Python SIGTERM handler sets a flag. Several processes: JAX's preemption service
  (started by `jax.distributed.initialize`) already catches SIGTERM on every process, tells the
  others, and `reached_preemption_sync_point` turns true at the same step everywhere. No Python
  handler is installed then: it would replace JAX's, and processes stopping at different steps
  would deadlock in the checkpoint's collectives.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._multiprocess = jax.process_count() > 1

  def __enter__(self):
    def handler(signum, frame):
      del frame
      logging.warning('received signal %d: will checkpoint and exit', signum)
      self.requested = True
    if self._multiprocess:
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. a notebook worker)
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def should_stop(self, step: int) -> bool:
    if self._multiprocess:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested


def check_finite(state, step: int):
  """Raises NonFiniteLossError naming the first non-finite step (one scalar read)."""
  bad = int(np.asarray(jax.device_get(state['nonfinite_step'])))
  if bad >= 0:
    raise NonFiniteLossError(
        f'non-finite loss or gradient at step {bad} (checked at step {step}); training stopped '
        'and the last good checkpoint is untouched. Lower config.optim.learning_rate, enable '
        'config.optim.grad_clip, or check the data.')


def write_sample_grid(exp: Experiment, state, workdir: str, step: int, writer, sample_fn=None):
  """Samples `config.train.num_sample_grid` images with the EMA params; PNG + TensorBoard."""
  config = exp.config
  n = sampling.device_batch_size(config.train.num_sample_grid, exp.mesh)
  sample_fn = sample_fn or sampling.make_sample_fn(config, exp.model, exp.mesh, n)
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 1), step)
  images = sharding_lib.to_host(sample_fn(state['ema_params'], key, 0))
  images = images[:config.train.num_sample_grid]
  if jax.process_index() == 0:
    grid = summaries.image_grid(images)
    summaries.save_png(os.path.join(workdir, f'samples_step{step:07d}.png'), grid)
    writer.image(step, 'samples', grid)
  return sample_fn


def _mean_metrics(window):
  host = jax.device_get(window)
  return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint. Returns final metrics."""
  exp = Experiment(config)
  is_main = jax.process_index() == 0
  logging.info('%s: %s network with %s parameters; mesh %s over %d devices',
               config.method, config.model.name, f'{exp.param_count():,}',
               dict(exp.mesh.shape), exp.mesh.devices.size)
  manager = checkpoints.make_manager(os.path.join(workdir, 'checkpoints'),
                                     max_to_keep=config.train.max_to_keep)
  state, start_step = restore_or_init(exp, manager)
  num_steps = config.train.num_steps
  writer = summaries.SummaryWriter(os.path.join(workdir, 'tensorboard'), enabled=is_main)
  if start_step >= num_steps:
    logging.info('already at step %d >= num_steps %d: nothing to train', start_step, num_steps)
    return {'step': start_step}

  batches = input_pipeline.sharded_batches(
      input_pipeline.make_train_iterator(config, start_step=start_step), exp.batch_sharding)
  train_step = exp.compiled_train_step()
  progress = summaries.Progress(start_step, num_steps)
  window, last_metrics, sample_fn = [], {}, None
  t = config.train
  with PreemptionFlag() as preemption:
    step = start_step
    while step < num_steps:
      state, metrics = train_step(state, next(batches))
      step += 1
      window.append(metrics)
      if step % t.log_every == 0 or step == num_steps:
        check_finite(state, step)
        last_metrics = _mean_metrics(window)
        window = []
        prog = progress.update(step)
        summaries.log_line(step, num_steps, last_metrics, prog)
        writer.scalars(step, {**last_metrics, 'steps_per_sec': prog['steps_per_sec']})
      if preemption.should_stop(step):
        check_finite(state, step)
        checkpoints.save(manager, step, state, force=True)
        manager.wait_until_finished()
        logging.warning('preempted: saved checkpoint at step %d; rerun the same command to resume',
                        step)
        return {'step': step, 'preempted': True, **last_metrics}
      if step % t.checkpoint_every == 0 or step == num_steps:
        check_finite(state, step)
        checkpoints.save(manager, step, state)
      if t.sample_every > 0 and (step % t.sample_every == 0 or step == num_steps):
        sample_fn = write_sample_grid(exp, state, workdir, step, writer, sample_fn)
  manager.wait_until_finished()
  writer.close()
  return {'step': step, **last_metrics}
