"""Train-step throughput: step time, images/s and achieved FLOP/s of the real compiled train step.

The step is `Experiment.compiled_train_step()` (loss, gradients, optimiser, EMA, non-finite guard,
with the config's shardings and state donation), lowered and compiled once for the case's shapes.
The state is filled on the host with random numbers of the right shapes instead of running the
jitted initialiser (its compile would dominate a quick run and the step's cost does not depend on
the values).
"""

from typing import Any, Dict

import jax
import numpy as np

from benchmarks import cases as cases_lib
from benchmarks import measure
from ncsn_rin import train


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


def random_state(exp: train.Experiment, seed: int = 0) -> Dict[str, Any]:
  """A train state with the experiment's shapes and shardings (random params, zero optimiser)."""
  abstract = exp.abstract_state
  zeros = lambda tree: jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), tree)
  host = {key: zeros(value) for key, value in abstract.items()}
  host['params'] = random_params(abstract['params'], seed)
  host['ema_params'] = random_params(abstract['params'], seed)  # separate buffers (donation)
  host['nonfinite_step'] = np.full((), -1, np.int32)
  return jax.device_put(host, exp.state_sharding)


def random_batch(exp: train.Experiment, batch_size: int, seed: int = 0) -> Dict[str, jax.Array]:
  """uint8 images [B, H, W, C] and int32 labels [B], sharded over the batch."""
  d = exp.config.data
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch_size, d.image_size, d.image_size, d.num_channels), np.uint8)
  labels = rng.integers(0, max(d.num_classes, 1), (batch_size,)).astype(np.int32)
  return jax.device_put({'image': images, 'label': labels}, exp.batch_sharding)


def benchmark_train_step(case: cases_lib.Case, iters: int, peak_gflops: float) -> Dict[str, Any]:
  """Times `iters` steps after one warm-up; FLOPs from XLA's cost analysis of the compiled step."""
  with measure.PeakMemory() as memory:
    exp = train.Experiment(case.config)
    state = random_state(exp)
    batch = random_batch(exp, case.batch_size)
    compiled, compile_s = measure.compile_timed(exp.compiled_train_step(), state, batch)
    carry = {'state': state}

    def run_once():
      carry['state'], metrics = compiled(carry['state'], batch)
      return metrics['loss']

    timing = measure.time_iterations(run_once, iters)
    jax.block_until_ready(carry['state'])
  flops = measure.compiled_flops(compiled)
  step_s = timing['min_s']  # best of `iters`: the least disturbed by other processes
  gflops_per_s = None if flops is None else flops / step_s / 1e9
  c = case.config
  return {
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
      'gflop_per_step': None if flops is None else flops / 1e9,
      'gflops_per_s': gflops_per_s,
      'fraction_of_matmul_peak': (None if gflops_per_s is None or not peak_gflops
                                  else gflops_per_s / peak_gflops),
      'compile_s': compile_s,
      'xla_program_mb': measure.program_memory_mb(compiled),
      **memory.result,
  }
