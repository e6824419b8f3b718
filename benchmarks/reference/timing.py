"""The one timing rule of the side-by-side scripts (plain Python, so the torch scripts can use it):
one warm-up call, then `iters` timed calls; the median and the best, in seconds."""

import resource
import time
from typing import Callable, Tuple


def time_steps(step: Callable[[], object], iters: int) -> Tuple[float, float]:
  """`step` must block until its work is done (torch is synchronous on CPU; the JAX caller wraps
  its step in `jax.block_until_ready`)."""
  step()
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  times.sort()
  return times[len(times) // 2], times[0]


def peak_rss_gb() -> float:
  """This process's peak resident set (Linux ru_maxrss is in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
