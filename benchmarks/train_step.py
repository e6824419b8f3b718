"""Train-step throughput: step time, images/s and achieved FLOP/s of the real compiled train step,
split into forward and backward.

The step is `Experiment.jitted_train_step()` (loss, gradients, optimiser, EMA, non-finite guard,
with the config's shardings and state donation), lowered and compiled once for the case's shapes.
Beside it, two programs on the same parameters and batch give the split:
  forward  = `jit(loss_fn)`: the network apply(s) of one step and the loss (for RIN with
             self-conditioning this includes the stop-gradient self-conditioning pass);
  backward = `jit(value_and_grad(loss_fn))` − forward;
  optimiser and the rest = step − value_and_grad.
`benchmark_train_step(..., profile_ops=N)` also records the per-op breakdown of one step
(`benchmarks/op_profile.py`: top N XLA ops by time, time by kind and by forward/backward).
The state is filled on the host with random numbers of the right shapes instead of running the
jitted initialiser (its compile would dominate a quick run and the step's cost does not depend on
the values).
"""

from typing import Any, Dict

import jax
import numpy as np

from benchmarks import cases as cases_lib
from benchmarks import measure
from benchmarks import op_profile
from ncsn_rin import experiment


def random_params(abstract_params: Any, seed: int = 0) -> Any:
  """Host arrays shaped like `abstract_params`: kernels ~ N(0, 1/fan_in), scales 1, biases 0."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = str(getattr(path[-1], 'key', path[-1])) if path else ''
    if leaf.ndim <= 1:
      return (np.ones if 'scale' in name else np.zeros)(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1]))
    return (rng.standard_normal(leaf.shape, np.float32) / np.sqrt(fan_in)).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, abstract_params)


def random_state(exp: experiment.Experiment, seed: int = 0) -> Dict[str, Any]:
  """A train state with the experiment's shapes and shardings (random params, zero optimiser)."""
  abstract = exp.abstract_state
  zeros = lambda tree: jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), tree)
  host = {key: zeros(value) for key, value in abstract.items()}
  host['params'] = random_params(abstract['params'], seed)
  host['ema_params'] = random_params(abstract['params'], seed)  # separate buffers (donation)
  host['nonfinite_step'] = np.full((), -1, np.int32)
  return jax.device_put(host, exp.state_sharding)


def random_batch(exp: experiment.Experiment, batch_size: int, seed: int = 0) -> Dict[str, jax.Array]:
  """uint8 images [B, H, W, C] and int32 labels [B], sharded over the batch."""
  d = exp.config.data
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch_size, d.image_size, d.image_size, d.num_channels), np.uint8)
  labels = rng.integers(0, max(d.num_classes, 1), (batch_size,)).astype(np.int32)
  return jax.device_put({'image': images, 'label': labels}, exp.batch_sharding)


def _loss_programs(exp: experiment.Experiment, state, batch):
  """Compiled forward (`loss_fn`) and `value_and_grad(loss_fn)` on the state's params, with the
  step's first key; returns [(name, compiled, args)]."""
  key = jax.random.fold_in(state['rng'], 0)
  args = (state['params'], batch, key)
  forward = jax.jit(lambda p, b, k: exp.loss_fn(p, b, k)[0])
  value_and_grad = jax.jit(jax.value_and_grad(lambda p, b, k: exp.loss_fn(p, b, k)[0]))
  return [(name, fn.lower(*args).compile(), args)
          for name, fn in (('forward', forward), ('value_and_grad', value_and_grad))]


def _split(timings: Dict[str, Dict[str, float]], flops: Dict[str, Any]) -> Dict[str, Any]:
  """forward / backward / optimiser seconds and GFLOPs from the three programs' best times."""
  fwd, vg, step = (timings[k]['min_s'] for k in ('forward', 'value_and_grad', 'step'))
  gflop = lambda k: None if flops.get(k) is None else flops[k] / 1e9
  return {
      'forward_s': fwd, 'value_and_grad_s': vg, 'backward_s': vg - fwd,
      'optimizer_and_rest_s': step - vg,
      'gflop_forward': gflop('forward'), 'gflop_value_and_grad': gflop('value_and_grad'),
  }


def benchmark_train_step(case: cases_lib.Case, iters: int, peak_gflops: float,
                         profile_ops: int = 0) -> Dict[str, Any]:
  """Times `iters` steps after one warm-up (and as many forward and value_and_grad calls);
  FLOPs from XLA's cost analysis of each compiled program. `profile_ops` > 0: also the per-op
  breakdown of one more step, with its top `profile_ops` instructions."""
  with measure.PeakMemory() as memory:
    exp = experiment.Experiment(case.config)
    state = random_state(exp)
    batch = random_batch(exp, case.batch_size)
    compiled, compile_s = measure.compile_timed(exp.jitted_train_step(), state, batch)
    loss_programs = _loss_programs(exp, state, batch)
    carry = {'state': state}

    def run_once():
      carry['state'], metrics = compiled(carry['state'], batch)
      return metrics

    timings, flops = {}, {}
    for name, program, args in loss_programs:  # before the step donates `state`
      timings[name] = measure.time_iterations(lambda p=program, a=args: p(*a), iters)
      flops[name] = measure.compiled_flops(program)
    del loss_programs
    timings['step'] = measure.time_iterations(run_once, iters)
    flops['step'] = measure.compiled_flops(compiled)
    ops = (op_profile.profile_compiled(compiled, run_once, top=profile_ops)
           if profile_ops else None)
    jax.block_until_ready(carry['state'])
  timing, flops_step = timings['step'], flops['step']
  step_s = timing['min_s']  # best of `iters`: the least disturbed by other processes
  gflops_per_s = None if flops_step is None else flops_step / step_s / 1e9
  c = case.config
  row = {
      'case': case.name,
      'method': c.method,
      'model': c.model.name,
      'dtype': c.model.dtype,
      'params': exp.param_count(),
      'image_size': c.data.image_size,
      'batch_size': case.batch_size,
      'step_s': step_s,
      'step_mean_s': timing['mean_s'],
      'iters': timing['iters'],
      'images_per_s': case.batch_size / step_s,
      **_split(timings, flops),
      'gflop_per_step': None if flops_step is None else flops_step / 1e9,
      'gflops_per_s': gflops_per_s,
      'fraction_of_matmul_peak': (None if gflops_per_s is None or not peak_gflops
                                  else gflops_per_s / peak_gflops),
      'compile_s': compile_s,
      'xla_program_mb': measure.program_memory_mb(compiled),
      **memory.result,
  }
  if ops is not None:
    row['ops'] = ops
  return row
