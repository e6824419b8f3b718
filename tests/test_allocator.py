"""The host allocator choice (ncsn_rin/allocator.py): when to re-execute, and that it happens."""

import os
import subprocess
import sys

import pytest

from ncsn_rin import allocator

LIB = 'libjemalloc.so.2'


def test_preload_env_sets_jemalloc_and_keeps_the_rest():
  env = allocator.preload_env({'PATH': '/bin', 'LD_PRELOAD': 'libfoo.so'}, 'linux', LIB)
  assert env['LD_PRELOAD'] == f'{LIB} libfoo.so'
  assert env['MALLOC_CONF'] == allocator.JEMALLOC_CONF
  assert env['PATH'] == '/bin'
  mine = allocator.preload_env({'MALLOC_CONF': 'narenas:2'}, 'linux', LIB)
  assert mine['MALLOC_CONF'] == 'narenas:2'  # the user's jemalloc settings win


@pytest.mark.parametrize('environ, platform, library', [
    ({}, 'darwin', LIB),                                          # not Linux
    ({allocator.ENV_VAR: 'system'}, 'linux', LIB),                # opted out
    ({'LD_PRELOAD': '/usr/lib/libjemalloc.so.2'}, 'linux', LIB),  # already re-executed
    ({'LD_PRELOAD': 'libtcmalloc_minimal.so.4'}, 'linux', LIB),   # the user's allocator
    ({}, 'linux', None),                                          # none installed
])
def test_preload_env_none(environ, platform, library):
  assert allocator.preload_env(environ, platform, library) is None


def test_preload_env_explicit_path_once():
  env = allocator.preload_env({allocator.ENV_VAR: '/opt/lib/libmy.so'}, 'linux', None)
  assert env['LD_PRELOAD'] == '/opt/lib/libmy.so' and 'MALLOC_CONF' not in env
  assert allocator.preload_env(env, 'linux', None) is None  # no second re-exec


_PROBE = ('from ncsn_rin import allocator; allocator.maybe_reexec(); import sys; '
          "print('jemalloc' in open('/proc/self/maps').read(), sys.argv[1:], allocator.active())")


def _probe(**env_updates):
  env = {k: v for k, v in os.environ.items() if k not in ('LD_PRELOAD', 'MALLOC_CONF')}
  env.update(env_updates)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, '-c', _PROBE, 'a', '--b=1'], cwd=root, env=env,
                       capture_output=True, text=True, timeout=60, check=True)
  return out.stdout.split(maxsplit=1)[0], out.stdout


@pytest.mark.skipif(not sys.platform.startswith('linux') or allocator.find_jemalloc() is None,
                    reason='jemalloc is not installed (apt install libjemalloc2)')
def test_reexec_loads_jemalloc_with_the_same_arguments():
  loaded, out = _probe()
  assert loaded == 'True', out
  assert "['a', '--b=1']" in out and 'jemalloc' in out.split(']')[-1], out
  loaded, out = _probe(**{allocator.ENV_VAR: 'system'})
  assert loaded == 'False' and out.strip().endswith('glibc'), out
