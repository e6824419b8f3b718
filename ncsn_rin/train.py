"""Training: the optimiser, a pure train step, and the loop around the compiled step.

The train state is a dict of arrays (so Orbax and shardings see a plain pytree):
  step [] int32, params, ema_params, opt_state, rng [2] uint32, nonfinite_step [] int32 (−1 = none)
The step's RNG is `fold_in(rng, step)`, so a resumed run sees the same randomness as an
uninterrupted one. A non-finite loss or gradient leaves the state untouched and records the step in
`nonfinite_step`; the host reads that flag only when it logs or checkpoints (no per-step sync) and
stops with an error naming the step, so the last checkpoint is never overwritten by a bad state.
The loop reports through `clu`: metric writers (TensorBoard + log lines) and periodic actions
(progress with an ETA that excludes compilation, an optional profiler trace).
"""

import os
import signal
import time
from typing import Any, Callable, Dict, Optional

from absl import logging
from clu import metric_writers
from clu import metrics as clu_metrics
from clu import periodic_actions
import flax
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import optax

from ncsn_rin import checkpoints
from ncsn_rin import images
from ncsn_rin import input_pipeline
from ncsn_rin import sharding


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/Inf loss or gradient."""


# Optimiser (pix2seq `model_utils.py` for RIN; NCSNv2's plain Adam) ------------------------------

# Leaves that are never weight-decayed and get no LAMB trust ratio: pix2seq's
# `exclude_from_weight_decay='bias,beta,gamma'` (Keras names the LayerNorm shift/scale beta/gamma;
# Flax calls them bias/scale), plus InstanceNorm++'s alpha/gamma/beta.
NO_DECAY = ('bias', 'scale', 'alpha', 'beta', 'gamma')


def learning_rate_schedule(peak: float, *, warmup_steps: int, num_steps: int, decay: str,
                           cosine_fraction: float = 1.) -> optax.Schedule:
  """pix2seq `WarmUpAndDecay`: lr = peak·s/W for s < W, then constant or a part of a cosine.

  'cosine' traverses the fraction f = cosine_fraction of a cosine curve (pix2seq 'cosine@f'):
  lr = peak·½(1 + cos(π·min(s − W, D)/D)), D = (num_steps − W)/f; it ends at ½(1 + cos(πf))·peak
  (f = 1: 0; 0.8: 0.095; 0.7: 0.206). The count s is the number of updates done (0 at the first).
  """
  if decay == 'cosine':
    decayed = optax.cosine_decay_schedule(peak, max(num_steps - warmup_steps, 1) / cosine_fraction)
  else:
    decayed = optax.constant_schedule(peak)
  # Not optax.linear_schedule: its (0 − peak)·(1 − s/W) + peak loses the first steps' lr to
  # float32 cancellation (4e-4 relative at s = 1 of 10k).
  return lambda s: jnp.where(s < warmup_steps, s / max(warmup_steps, 1) * peak,
                             decayed(s - warmup_steps))


def weight_decay_mask(params: Any) -> Any:
  """True for leaves that are decayed: every leaf whose name is not in NO_DECAY."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], 'key', None) not in NO_DECAY, params)


def make_optimizer(name: str, schedule: optax.Schedule, *, b1: float, b2: float, eps: float,
                   weight_decay: float, grad_clip: float) -> optax.GradientTransformation:
  """Adam(W) or LAMB; decoupled weight decay and (LAMB) trust ratio only where `weight_decay_mask`.

  LAMB is tfa's `LAMB` as pix2seq builds it: Adam moments, + wd·θ, then the trust ratio
  ‖θ‖/‖update‖ (1 when either norm is 0), except on NO_DECAY leaves, which tfa also excludes from
  layer adaptation (its default `exclude_from_layer_adaptation = exclude_from_weight_decay`).
  """
  parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
  parts += [optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
            optax.add_decayed_weights(weight_decay, mask=weight_decay_mask)]
  if name == 'lamb':
    parts.append(optax.masked(optax.scale_by_trust_ratio(), weight_decay_mask))
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts)


# Train step -------------------------------------------------------------------------------------

@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output('loss')
  grad_norm: clu_metrics.Average.from_output('grad_norm')
  learning_rate: clu_metrics.LastValue.from_output('learning_rate')


def make_train_step(loss_fn: Callable, optimizer, ema_rate: float,
                    lr_schedule: optax.Schedule) -> Callable:
  """train_step(state, batch) -> (state, TrainMetrics). Pure; jit it with shardings and donation.

  loss_fn(params, batch, key) -> (loss, aux). The EMA (NCSNv2 Technique 5; pix2seq's EMA of the
  trainable variables) is `optax.incremental_update`: ema ← rate·ema + (1 − rate)·params.
  """

  def train_step(state, batch):
    step = state['step']
    key = jax.random.fold_in(state['rng'], step)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'], batch, key)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    ema_params = optax.incremental_update(params, state['ema_params'], 1. - ema_rate)
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
    metrics = TrainMetrics.single_from_model_output(
        loss=loss, grad_norm=grad_norm, learning_rate=lr_schedule(step))
    return new_state, metrics

  return train_step


# Loop -------------------------------------------------------------------------------------------

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
    if not self._multiprocess:
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
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested


class Progress(periodic_actions.ReportProgress):
  """clu's progress report with the rate as an exponential moving average over reports.

  clu rates only the last interval, so a slow interval (a checkpoint, a sample grid) swings the
  ETA; an EMA (weight 0.3 on the newest interval) keeps it steady. Start it after the first
  (compiling) step so compilation never enters the rate.
  """

  def __init__(self, *, num_train_steps: int, every_steps: int, writer):
    super().__init__(num_train_steps=num_train_steps, every_steps=every_steps, every_secs=None,
                     writer=writer)
    self.rate = None

  def _apply(self, step: int, t: float):
    rate = (step - self._previous_step) / max(t - self._previous_time, 1e-9)
    self.rate = rate if self.rate is None else 0.7 * self.rate + 0.3 * rate
    eta = (self._num_train_steps - step) / self.rate
    logging.info('step %d/%d: %.2f steps/s, ETA %s', step, self._num_train_steps, self.rate,
                 periodic_actions._format_secs(eta))  # pylint: disable=protected-access
    self._writer.write_scalars(step, {'steps_per_sec': self.rate})


def check_finite(state, step: int):
  """Raises NonFiniteLossError naming the first non-finite step (one scalar read)."""
  bad = int(np.asarray(jax.device_get(state['nonfinite_step'])))
  if bad >= 0:
    raise NonFiniteLossError(
        f'non-finite loss or gradient at step {bad} (checked at step {step}); training stopped '
        'and the last good checkpoint is untouched. Lower config.optim.learning_rate, enable '
        'config.optim.grad_clip, or check the data.')


def write_sample_grid(exp, state, workdir: str, step: int, writer) -> Optional[str]:
  """Samples `config.train.num_sample_grid` images with the EMA params (balanced labels: column k
  shows class k); writes samples_step<step>.png (process 0) and TensorBoard. Returns the path."""
  n = exp.config.train.num_sample_grid
  sample_fn = exp.sample_fn(n, balanced_labels=True)
  key = jax.random.fold_in(jax.random.PRNGKey(exp.config.seed + 1), step)
  samples, _ = sample_fn(state['ema_params'], key)
  samples = sharding.to_host(samples)[:n]
  grid = images.sample_grid(samples, exp.config.data.num_classes)
  writer.write_images(step, {'samples': grid[None]})
  if jax.process_index() != 0:
    return None
  return images.save_png(os.path.join(workdir, f'samples_step{step:07d}.png'), grid)


def train_and_evaluate(exp, workdir: str) -> Dict[str, Any]:
  """Trains `exp` (an `experiment.Experiment`) in `workdir`, resuming from its latest checkpoint.

  Returns the final metrics and the paths of every file written.
  """
  config, t = exp.config, exp.config.train
  logging.info('%s: %s network with %s parameters; mesh %s over %d devices', config.method,
               config.model.name, f'{exp.param_count():,}', dict(exp.mesh.shape),
               exp.mesh.devices.size)
  manager = exp.checkpoint_manager(workdir)
  state, start_step = exp.restore_or_init(manager)
  writer = metric_writers.create_default_writer(os.path.join(workdir, 'tensorboard'),
                                                just_logging=jax.process_index() > 0)
  artefacts = {'tensorboard': os.path.join(workdir, 'tensorboard'), 'checkpoints': [],
               'sample_grids': []}
  if start_step >= t.num_steps:
    logging.info('already at step %d >= num_steps %d: nothing to train', start_step, t.num_steps)
    return {'step': start_step, **artefacts}

  batches = input_pipeline.sharded_batches(
      input_pipeline.make_train_iterator(config, start_step=start_step), exp.batch_sharding)
  batch = next(batches)
  logging.info('compiling the train step (first step only)...')
  start = time.time()
  train_step = exp.compiled_train_step(state, batch)
  logging.info('compiled the train step in %.1f s', time.time() - start)
  hooks = [Progress(num_train_steps=t.num_steps, every_steps=t.log_every, writer=writer)]
  if t.profile_every > 0:
    hooks.append(periodic_actions.Profile(logdir=workdir, every_steps=t.profile_every,
                                          first_profile=t.profile_every))
  train_metrics, last_metrics = None, {}
  with PreemptionFlag() as preemption:
    step = start_step
    while step < t.num_steps:
      state, metrics = train_step(state, batch)
      step += 1
      train_metrics = metrics if train_metrics is None else train_metrics.merge(metrics)
      if step == start_step + 1:
        jax.block_until_ready(state['step'])  # the clock of the progress starts after compiling
        logging.info('step %d/%d done; steps/s and ETA follow every %d steps', step, t.num_steps,
                     t.log_every)
      for hook in hooks:
        hook(step)
      if step % t.log_every == 0 or step == t.num_steps:
        check_finite(state, step)
        last_metrics = {k: float(v) for k, v in train_metrics.compute().items()}
        writer.write_scalars(step, last_metrics)
        train_metrics = None
      if preemption.should_stop(step):
        check_finite(state, step)
        checkpoints.save(manager, step, state, force=True)
        manager.wait_until_finished()
        logging.warning('preempted: saved checkpoint step %d to %s; rerun the same command to '
                        'resume', step, manager.directory)
        return {'step': step, 'preempted': True, **last_metrics, **artefacts}
      if step % t.checkpoint_every == 0 or step == t.num_steps:
        check_finite(state, step)
        if checkpoints.save(manager, step, state):
          logging.info('saving checkpoint step %d to %s (in the background)', step,
                       manager.directory)
          artefacts['checkpoints'].append(os.path.join(str(manager.directory), str(step)))
      if t.sample_every > 0 and (step % t.sample_every == 0 or step == t.num_steps):
        path = write_sample_grid(exp, state, workdir, step, writer)
        if path:
          logging.info('wrote %s', path)
          artefacts['sample_grids'].append(path)
      if step < t.num_steps:
        batch = next(batches)
  manager.wait_until_finished()
  writer.flush()
  return {'step': step, **last_metrics, **artefacts}
