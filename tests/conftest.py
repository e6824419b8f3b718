"""Test-wide setup: 8 virtual CPU devices so sharding is exercised on a 2-core machine, and one
persistent XLA compilation cache for the run.

The environment must be set before JAX is imported anywhere, which is why it lives here.

The cache: the suite builds the same tiny networks again and again — in each xdist worker and in
every `main.py` subprocess (restarts after SIGTERM, two-process runs, fid_stats then eval;
the SIGKILL test in test_resume.py keeps its own cache) — and on this 2-core machine compiling them costs more than running them. One cache
directory per test run, made by the first process that imports this file (xdist's controller),
inherited by the workers and every subprocess through the environment and removed at the end,
lets an identical program compile once (a JAX_COMPILATION_CACHE_DIR already set is used and
kept). A cache hit still goes through JAX's compile path, so the tests that assert "nothing
compiled" still see it.
"""
import os
import shutil
import sys
import tempfile

_FLAG = '--xla_force_host_platform_device_count=8'
if _FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG).strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Two xdist workers share the two cores: a second OpenBLAS thread per process only spins against
# the other worker (numpy's 2048² products and eigh of the FID statistics).
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:  # the first importer (xdist's controller)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='ncsn_rin_test_xla_cache_')
  os.environ['NCSN_RIN_TEST_CACHE_OWNER'] = str(os.getpid())
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def pytest_sessionfinish(session):
  """The process that made the run's compilation cache (not an xdist worker) removes it."""
  del session
  if os.environ.get('NCSN_RIN_TEST_CACHE_OWNER') == str(os.getpid()):
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
