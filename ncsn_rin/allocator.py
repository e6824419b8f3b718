"""Host memory: run under jemalloc instead of glibc malloc where the machine has it (issue 16).

Why. XLA:CPU allocates every execution's temporary buffers afresh (gigabytes for a train step:
RIN CIFAR-10 shape at batch 32, 7.3 GB peak) and frees them when the step ends. glibc serves
allocations above its 32 MB mmap ceiling with mmap/munmap, so each step page-faults its whole
working set in again: 5.7M minor faults and 33 s of kernel time in a 96 s run of 4 RIN steps
(2026-12-03, this 2-core CPU). jemalloc keeps freed pages for reuse; with it the same step took
8.8–9.9 s (13.1 s under glibc), the NCSNv2 step at batch 16 6.8–7.2 s (7.5 s), and 300 steps of
the RIN digits demo 88 s (160 s). The numbers the program computes do not change (the allocator only
decides where buffers live).

How. `maybe_reexec()` is the first thing `main.py` and `benchmarks/run.py` do: on Linux, when
jemalloc is installed (Debian/Ubuntu: `apt install libjemalloc2`) and not already preloaded, it
re-executes the same command (`os.execve`: same PID, argv and environment) with `LD_PRELOAD` set,
as PyTorch's CPU launcher does. `MALLOC_CONF` (`JEMALLOC_CONF`) keeps freed pages for reuse (dirty
and muzzy decay off; jemalloc's defaults hand large buffers back at once, which measured no faster
than glibc) in one arena. The footprint stays near the peak, which a training process reaches every
step anyway, but the peak varies between runs: the RIN step above peaked at 7.2–7.9 GB in four runs
and 12.4–12.5 GB in two (glibc: 7.3 GB), with one arena or one per thread alike.
`NCSN_RIN_ALLOCATOR=system` keeps glibc; `NCSN_RIN_ALLOCATOR=/path/to/lib.so` preloads that library.
"""

import ctypes.util
import os
import sys
from typing import Dict, Mapping, Optional

ENV_VAR = 'NCSN_RIN_ALLOCATOR'
JEMALLOC_CONF = 'narenas:1,dirty_decay_ms:-1,muzzy_decay_ms:-1'
_KNOWN = ('jemalloc', 'tcmalloc')  # an allocator already in LD_PRELOAD is left alone


def find_jemalloc() -> Optional[str]:
  """The jemalloc shared library's name as the dynamic linker resolves it, or None."""
  return ctypes.util.find_library('jemalloc')


def preload_env(environ: Mapping[str, str], platform: str = sys.platform,
                library: Optional[str] = None) -> Optional[Dict[str, str]]:
  """The environment to re-execute with, or None to keep running as is.

  None when: not Linux; `NCSN_RIN_ALLOCATOR=system`; an allocator is already in `LD_PRELOAD`
  (this process was re-executed, or the user chose one); no library to preload. `library`: the
  found jemalloc (`find_jemalloc()`), overridden by a path in `NCSN_RIN_ALLOCATOR`.
  """
  choice = environ.get(ENV_VAR, '')
  preloaded = environ.get('LD_PRELOAD', '')
  if (not platform.startswith('linux') or choice == 'system'
      or any(name in preloaded for name in _KNOWN) or (choice and choice in preloaded)):
    return None
  library = choice or library
  if not library:
    return None
  env = dict(environ)
  env['LD_PRELOAD'] = f'{library} {preloaded}'.strip()
  if 'jemalloc' in library:
    env.setdefault('MALLOC_CONF', JEMALLOC_CONF)
  return env


def maybe_reexec():
  """Re-executes this process under jemalloc when `preload_env` says so; otherwise returns."""
  env = preload_env(os.environ, library=None if os.environ.get(ENV_VAR) else find_jemalloc())
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)  # the command as started, `-m pkg.mod` included


def active() -> str:
  """The allocator of this process as recorded in results: LD_PRELOAD's library, or 'glibc'."""
  return os.environ.get('LD_PRELOAD', '').strip() or 'glibc'
