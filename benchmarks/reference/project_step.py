r"""This project's compiled train step (or loss forward) at the reference scripts' shapes, timed the
same way (`timing.py`), for `side_by_side.sh`:
    python -m benchmarks.reference.project_step ncsnv2|rin BATCH ITERS [fwd]
`fwd` times the loss alone (for RIN that is both passes, the self-conditioning one included, so it
is not comparable with `rin_step.py fwd`, one network call). The network is
configs/ncsnv2_cifar10.py or configs/rin_cifar10.py in float32; the state is random
(`benchmarks/train_step.py`). Run it as its own process: it does not re-execute under jemalloc, so
the caller's LD_PRELOAD decides the allocator (printed).
"""

import sys

import jax

from benchmarks import train_step
from benchmarks.reference import timing
from configs import ncsnv2_cifar10
from configs import rin_cifar10
from ncsn_rin import allocator
from ncsn_rin import experiment


def main(argv):
  name, batch, iters = argv[0], int(argv[1]), int(argv[2])
  forward_only = argv[3:] == ['fwd']
  config = {'ncsnv2': ncsnv2_cifar10, 'rin': rin_cifar10}[name].get_config()
  config.train.batch_size = batch
  config.model.dtype = 'float32'
  exp = experiment.Experiment(config)
  state = train_step.random_state(exp)
  batch_arrays = train_step.random_batch(exp, batch)
  if forward_only:
    key = jax.random.PRNGKey(0)
    loss = jax.jit(lambda p, b, k: exp.loss_fn(p, b, k)[0])
    compiled = loss.lower(state['params'], batch_arrays, key).compile()
    run = lambda: compiled(state['params'], batch_arrays, key)
  else:
    compiled = exp.jitted_train_step().lower(state, batch_arrays).compile()
    carry = {'state': state}

    def run():
      carry['state'], metrics = compiled(carry['state'], batch_arrays)
      return metrics
  median, best = timing.time_steps(lambda: jax.block_until_ready(run()), iters)
  print(f'project {name} batch {batch} {"forward" if forward_only else "step"}: median '
        f'{median:.3f} s, best {best:.3f} s; jax {jax.__version__}, '
        f'allocator {allocator.active()}, {exp.param_count():,} params, peak RSS '
        f'{timing.peak_rss_gb():.2f} GB', flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
