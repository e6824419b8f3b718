"""Sampler overhead: time per sampler step divided by the time of one network evaluation.

Both sides are compiled programs at the same batch: the network evaluation is the ε-predictor (RIN,
with its self-conditioning latents) or the score network (RefineNet) exactly as the samplers call
it; the sampler is `Experiment.sample_fn` (one `lax.scan` / `fori_loop` program for all steps).
A ratio near 1 means the compiled loop adds nothing beyond the network; above 1 is the cost of the
update arithmetic, the RNG and the loop itself.
"""

from typing import Any, Dict, List

import jax
import jax.numpy as jnp

from benchmarks import cases as cases_lib
from benchmarks import measure
from benchmarks import train_step
from ncsn_rin import experiment


def _diffusion_net_eval(config, model, batch_size: int):
  """(jitted fn(params, x, gamma, latent_prev) -> (pred, latents), example inputs but params):
  the network call of `sampling.make_diffusion_sample_fn` (one pass, no guidance)."""
  labels = jnp.zeros((batch_size,), jnp.int32) if config.data.num_classes else None

  @jax.jit
  def net_eval(params, x, gamma, latent_prev):
    return model.apply({'params': params}, x, gamma, labels, latent_prev)

  d = config.data
  x = jax.random.normal(jax.random.PRNGKey(1), (batch_size, d.image_size, d.image_size,
                                                d.num_channels))
  gamma = jnp.full((batch_size,), 0.5)
  latent_prev = (jnp.zeros(model.latent_shape(batch_size))
                 if getattr(model, 'self_cond', False) else None)
  return net_eval, (x, gamma, latent_prev)


def _score_net_eval(config, model, batch_size: int):
  """(jitted fn(params, x, sigma) -> score, example inputs but params)."""

  @jax.jit
  def net_eval(params, x, sigma):
    return model.apply({'params': params}, x, sigma)

  d = config.data
  x = jax.random.uniform(jax.random.PRNGKey(1), (batch_size, d.image_size, d.image_size,
                                                 d.num_channels))
  return net_eval, (x, jnp.full((batch_size,), float(config.ncsn.sigma_min)))


def _num_network_evals(config) -> int:
  if config.method == 'diffusion':
    return config.sample.num_steps * (2 if config.sample.guidance_scale else 1)
  n = config.ncsn
  return n.num_scales * n.n_steps_each + int(n.denoise)


def benchmark_sampler_case(case: cases_lib.SamplerCase, iters: int) -> List[Dict[str, Any]]:
  """One row per sampler of the case: ms per step, ms per network evaluation, their ratio."""
  config = case.config
  if config.method == 'diffusion':
    config.sample.num_steps = case.num_steps
  exp = experiment.Experiment(config)
  model = exp.model
  params = jax.device_put(train_step.random_params(exp.abstract_state['params']))
  if config.method == 'diffusion':
    net_eval, inputs = _diffusion_net_eval(config, model, case.batch_size)
  else:
    net_eval, inputs = _score_net_eval(config, model, case.batch_size)
  with measure.PeakMemory() as memory:
    net_compiled, net_compile_s = measure.compile_timed(net_eval, params, *inputs)
    net = measure.time_iterations(lambda: net_compiled(params, *inputs), max(iters, 3), warmup=2)
  net_s = net['min_s']  # best of n: the least disturbed by other processes
  rows = [{'case': case.name, 'sampler': 'network evaluation', 'batch_size': case.batch_size,
           'network_evals': 1, 'step_s': net_s, 'network_eval_s': net_s,
           'overhead_ratio': 1.0, 'compile_s': net_compile_s, **memory.result}]
  key = jax.random.PRNGKey(0)
  for method in case.methods:
    if config.method == 'diffusion':
      config.sample.method = method
    with measure.PeakMemory() as memory:
      sample_fn = experiment.Experiment(config, exp.mesh).sample_fn(case.batch_size)
      compiled, compile_s = measure.compile_timed(sample_fn, params, key)
      total = measure.time_iterations(lambda: compiled(params, key), iters)
    evals = _num_network_evals(config)
    step_s = total['min_s'] / evals
    rows.append({'case': case.name, 'sampler': method, 'batch_size': case.batch_size,
                 'network_evals': evals, 'total_s': total['min_s'],
                 'total_mean_s': total['mean_s'], 'step_s': step_s, 'network_eval_s': net_s,
                 'overhead_ratio': step_s / net_s,
                 'compile_s': compile_s, 'xla_program_mb': measure.program_memory_mb(compiled),
                 **memory.result})
  return rows
