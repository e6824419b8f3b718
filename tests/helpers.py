"""Shared test utilities: tiny configs and running main.py as a subprocess."""

import os
import subprocess
import sys
import time

import jax
import jax.flatten_util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The demo configs with a network that compiles and steps in seconds (`common.shrink_to_tiny`).
RIN_TINY = os.path.join(ROOT, 'configs', 'rin_digits.py') + ':tiny'
NCSN_TINY = os.path.join(ROOT, 'configs', 'ncsnv2_digits.py') + ':tiny'


def tiny_rin_config():
  from configs import rin_digits  # pylint: disable=g-import-not-at-top
  return rin_digits.get_config('tiny')


def tiny_ncsn_config():
  from configs import ncsnv2_digits  # pylint: disable=g-import-not-at-top
  return ncsnv2_digits.get_config('tiny')


def main_command(config_file, workdir, *flags, mode='train'):
  return [sys.executable, os.path.join(ROOT, 'main.py'), f'--config={config_file}',
          f'--workdir={workdir}', f'--mode={mode}', *flags]


def subprocess_env(num_devices=8):
  env = dict(os.environ)
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={num_devices}'
  env['JAX_PLATFORMS'] = 'cpu'
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  env['PYTHONPATH'] = ROOT
  return env


def run_main(config_file, workdir, *flags, mode='train', timeout=600, num_devices=8):
  """Runs main.py to completion; returns CompletedProcess (stdout+stderr in .stdout)."""
  return subprocess.run(main_command(config_file, workdir, *flags, mode=mode), cwd=ROOT,
                        env=subprocess_env(num_devices), stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, text=True, timeout=timeout)


def start_main(config_file, workdir, *flags, mode='train', num_devices=8, log_path=None):
  """Starts main.py in the background; its output goes to `log_path`."""
  log = open(log_path, 'w')
  return subprocess.Popen(main_command(config_file, workdir, *flags, mode=mode), cwd=ROOT,
                          env=subprocess_env(num_devices), stdout=log, stderr=subprocess.STDOUT)


def wait_for_text(path, text, timeout=300, proc=None):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.exists(path) and text in open(path).read():
      return True
    if proc is not None and proc.poll() is not None:
      return text in open(path).read()
    time.sleep(0.2)
  return False


def perturbed(params, seed: int, scale: float):
  """params + scale·N(0, 1) on every leaf (zero-initialised scales and biases included), so no
  path of the network is an init-time no-op. One normal draw for the whole tree: a draw per leaf
  compiles a threefry program per leaf shape (seconds)."""
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  return unravel(flat + scale * jax.random.normal(jax.random.PRNGKey(seed), flat.shape))
