"""Measuring tools shared by the benchmarks: timers, memory, XLA cost analysis, the matmul peak.

Every timed function is compiled once per shape before timing (`jax.jit(f).lower(...).compile()`),
warmed up, and timed with `jax.block_until_ready`, so compile time never leaks into a step time.

Memory. Where the backend reports device memory (`Device.memory_stats()`: GPU, TPU) the benchmark
records `peak_bytes_in_use`, which is cumulative over the process. On CPU it records the process's
peak resident set: on Linux, before each case, memory left by earlier cases is released (garbage,
JAX's caches, glibc `malloc_trim`), the peak is reset (`/proc/self/clear_refs` ← 5) and then read
back from `VmHWM`, so it is that case's peak plus the process's resident set at its start
(`start_mb`: Python + JAX + TensorFlow); elsewhere it falls back to `resource.getrusage`
(cumulative over the process).
XLA's own estimate of one program's footprint (`compiled.memory_analysis()`: arguments + outputs −
donated aliases + temporaries) is recorded beside it.
"""

import ctypes
import datetime
import gc
import os
import platform
import resource
import sys
import time
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from ncsn_rin import allocator

MB = 2 ** 20


# ----------------------------------------------------------------------------------------------
# Machine
# ----------------------------------------------------------------------------------------------

def default_machine_name() -> str:
  """'cpu-2core' on CPU, else device kind and count, e.g. 'nvidia-h100-80gb-hbm3-x1'."""
  device = jax.devices()[0]
  if device.platform == 'cpu':
    return f'cpu-{os.cpu_count()}core'
  kind = ''.join(c if c.isalnum() else '-' for c in device.device_kind.lower()).strip('-')
  return f'{kind}-x{jax.device_count()}'


def machine_info() -> Dict[str, Any]:
  """Where and when the numbers were taken (platform, devices, versions, load average)."""
  device = jax.devices()[0]
  return {
      'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'platform': device.platform,
      'device_kind': device.device_kind,
      'num_devices': jax.device_count(),
      'cpu_count': os.cpu_count(),
      'processor': platform.processor() or platform.machine(),
      'python': sys.version.split()[0],
      'jax': jax.__version__,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'allocator': allocator.active(),
      'load_average_start': load_average(),
  }


def load_average():
  """1-, 5- and 15-minute load averages (None where the OS has none)."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


# ----------------------------------------------------------------------------------------------
# Time
# ----------------------------------------------------------------------------------------------

def time_iterations(run_once: Callable[[], Any], iters: int, warmup: int = 1) -> Dict[str, float]:
  """Calls `run_once` `warmup` times, then times `iters` calls, each ended by block_until_ready.

  Returns dict(mean_s, min_s, iters). `run_once` may carry state in a closure (e.g. a donated
  train state), so every call is timed separately and the host waits for the result each time.
  """
  for _ in range(warmup):
    jax.block_until_ready(run_once())
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    jax.block_until_ready(run_once())
    times.append(time.perf_counter() - start)
  return {'mean_s': float(np.mean(times)), 'min_s': float(np.min(times)), 'iters': iters}


def compile_timed(jitted: Callable, *args):
  """(compiled executable, seconds to lower + compile) for `jitted` at these argument shapes."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


# ----------------------------------------------------------------------------------------------
# XLA cost and memory analysis
# ----------------------------------------------------------------------------------------------

def _first(analysis):
  """cost_analysis() is a dict in current JAX, a one-element list of dicts in older versions."""
  if isinstance(analysis, (list, tuple)):
    return analysis[0] if analysis else {}
  return analysis or {}


def compiled_flops(compiled) -> Optional[float]:
  """FLOPs of one call of a compiled program, from XLA's cost analysis (None if unavailable).

  XLA counts a loop body once (not times its trip count), and a `lax.cond` as XLA's cost model
  does; the train steps timed here contain no loops.
  """
  try:
    flops = _first(compiled.cost_analysis()).get('flops')
  except Exception:  # pylint: disable=broad-except  (a backend without cost analysis)
    return None
  return None if flops is None or flops < 0 else float(flops)


def program_memory_mb(compiled) -> Optional[float]:
  """XLA's estimate of one program's footprint: arguments + outputs − donated + temporaries."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  total = (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
           + m.temp_size_in_bytes)
  return round(total / MB, 1)


# ----------------------------------------------------------------------------------------------
# Memory of the process / device
# ----------------------------------------------------------------------------------------------

_CLEAR_REFS = '/proc/self/clear_refs'
_STATUS = '/proc/self/status'


def reset_peak_memory() -> bool:
  """Resets the process's peak RSS (Linux `clear_refs` 5). False where that is not possible."""
  try:
    with open(_CLEAR_REFS, 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def _proc_status_mb(key: str) -> Optional[float]:
  """A memory line of /proc/self/status (e.g. 'VmHWM', 'VmRSS') in MB; None off Linux."""
  try:
    with open(_STATUS) as f:
      for line in f:
        if line.startswith(key + ':'):
          return int(line.split()[1]) / 1024  # kB
  except OSError:
    pass
  return None


def _vm_hwm_mb() -> Optional[float]:
  return _proc_status_mb('VmHWM')


def current_rss_mb() -> Optional[float]:
  """The process's resident set now (Linux VmRSS), None elsewhere."""
  rss = _proc_status_mb('VmRSS')
  return None if rss is None else round(rss, 1)


def peak_memory(reset_ok: bool) -> Dict[str, Any]:
  """Peak memory since the last `reset_peak_memory()` (device stats where the backend has them)."""
  stats = None
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats and 'peak_bytes_in_use' in stats:
    return {'peak_mb': round(stats['peak_bytes_in_use'] / MB, 1),
            'peak_source': 'device memory_stats peak_bytes_in_use (process-cumulative)'}
  hwm = _vm_hwm_mb() if reset_ok else None
  if hwm is not None:
    return {'peak_mb': round(hwm, 1), 'peak_source': 'process peak RSS (VmHWM, reset per case)'}
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  rss_mb = rss / MB if sys.platform == 'darwin' else rss / 1024  # bytes on macOS, kB on Linux
  return {'peak_mb': round(rss_mb, 1),
          'peak_source': 'process peak RSS (getrusage ru_maxrss, process-cumulative)'}


def release_memory():
  """Frees what earlier cases left behind: Python garbage, JAX's compiled-program caches, and
  free heap pages still counted in the resident set: glibc's (`malloc_trim`) and, under jemalloc
  (`ncsn_rin/allocator.py` keeps freed pages), every arena's (`mallctl arena.<all>.purge`)."""
  gc.collect()
  jax.clear_caches()
  try:
    ctypes.CDLL('libc.so.6').malloc_trim(0)
  except (OSError, AttributeError):  # not glibc
    pass
  mallctl = getattr(ctypes.CDLL(None), 'mallctl', None)  # only where jemalloc is loaded
  if mallctl is not None:
    mallctl(b'arena.4096.purge', None, None, None, ctypes.c_size_t(0))  # 4096: MALLCTL_ARENAS_ALL


class PeakMemory:
  """`with PeakMemory() as mem: ...` then `mem.result` = dict(peak_mb, start_mb, peak_source).

  Releases memory left by earlier cases first, so that a CPU case's peak RSS is its own (plus the
  process baseline `start_mb`).
  """

  def __enter__(self):
    release_memory()
    self._reset_ok = reset_peak_memory()
    self._start_mb = current_rss_mb()  # after the reset, so the peak (VmHWM) is never below it
    self.result = {}
    return self

  def __exit__(self, *exc):
    self.result = {**peak_memory(self._reset_ok), 'start_mb': self._start_mb}


# ----------------------------------------------------------------------------------------------
# Reference peak: a float32 matmul
# ----------------------------------------------------------------------------------------------

def matmul_peak(size: int, iters: int) -> Dict[str, Any]:
  """Achieved GFLOP/s of a jitted float32 [size, size] @ [size, size] (2·size³ FLOPs).

  This is the reference the train steps' FLOP/s are divided by: the best dense float32 throughput
  this machine reaches through XLA, not a data-sheet number.
  """
  key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(key_a, (size, size), jnp.float32)
  b = jax.random.normal(key_b, (size, size), jnp.float32)
  compiled, compile_s = compile_timed(jax.jit(jnp.matmul), a, b)
  timing = time_iterations(lambda: compiled(a, b), iters, warmup=2)
  flops = 2. * size ** 3
  return {'size': size, 'dtype': 'float32', 'flops': flops,
          'xla_flops': compiled_flops(compiled), 'compile_s': round(compile_s, 3),
          'mean_s': timing['mean_s'], 'min_s': timing['min_s'], 'iters': iters,
          'gflops_per_s': flops / timing['min_s'] / 1e9,
          'gflops_per_s_mean': flops / timing['mean_s'] / 1e9}
