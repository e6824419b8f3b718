"""Multi-host: two processes on localhost train, and compute FID statistics and FID, exactly like
one process; process set-up."""

import glob
import os
import json
import re
import shutil
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from ncsn_rin import checkpoints
from ncsn_rin import runtime
from ncsn_rin import sharding as sharding_lib
from ncsn_rin import experiment
from ncsn_rin import validation
from ncsn_rin.metrics import fid
from tests import helpers

RIN_DIGITS = helpers.RIN_TINY
NUM_STEPS = 3  # compared with the reference
# Adam divides by sqrt(v) + eps: with the default eps a gradient that is zero up to round-off
# becomes a full-size update of random sign (see test_train.test_sharded_step_matches_single_device).
# A constant learning rate makes the first steps independent of num_steps.
COMMON_FLAGS = [
    '--config.train.log_every=1', f'--config.train.checkpoint_every={NUM_STEPS}',
    '--config.optim.eps=1e-3', '--config.optim.decay=constant']
# The two-process run trains "forever" (a sample grid and a checkpoint at step 3) until preempted.
MULTI_FLAGS = COMMON_FLAGS + ['--config.train.num_steps=100000', '--config.train.max_to_keep=100',
                              f'--config.train.sample_every={NUM_STEPS}']
REFERENCE_FLAGS = COMMON_FLAGS + [f'--config.train.num_steps={NUM_STEPS}',
                                  '--config.train.sample_every=0']

# Runs main.py with an audit hook that records every file this process opens for writing in the
# workdir outside checkpoints/ (config.json, PNGs, results go through Python's open()).
_AUDITED_MAIN = r'''
import os, runpy, sys
workdir, log_path = sys.argv[1], sys.argv[2]
sys.argv = sys.argv[3:]

def hook(event, args):
  if event != 'open' or not isinstance(args[0], str):
    return
  path, mode, flags = args
  writing = (mode is not None and any(c in mode for c in 'wax+')) or (
      mode is None and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
  path = os.path.abspath(path)
  if (writing and path.startswith(workdir) and '/checkpoints/' not in path
      and '.write_test_' not in path):
    with open(log_path, 'a') as f:
      f.write(path + '\n')

sys.addaudithook(hook)
runpy.run_path(sys.argv[0], run_name='__main__')
'''


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _tiny_config():
  config = helpers.tiny_rin_config()
  config.optim.eps = 1e-3
  config.optim.decay = 'constant'
  return config


def _env(num_devices):
  # Half the XLA compile time (these runs compile the train step, the init and the sampler each);
  # every run here uses the same flags, so they still run identical programs.
  env = helpers.subprocess_env(num_devices)
  env['XLA_FLAGS'] += ' --xla_backend_optimization_level=0'
  return env


def _start(cmd, log_path, num_devices):
  with open(log_path, 'w') as log:
    return subprocess.Popen(cmd, cwd=helpers.ROOT, env=_env(num_devices), stdout=log,
                            stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_two_processes_train_like_one_process_and_stop_together_on_sigterm(tmp_path):
  """2 processes x 2 CPU devices (gloo collectives) == 1 process x 4 devices; then SIGTERM to one
  process only: both save one checkpoint at the same step and exit 0 (JAX's preemption sync)."""
  workdir, ref_workdir = str(tmp_path / 'run'), str(tmp_path / 'reference')
  port = _free_port()
  launcher = tmp_path / 'audited_main.py'
  launcher.write_text(_AUDITED_MAIN)
  writes_log = str(tmp_path / 'process1_writes.txt')
  procs, logs = [], []
  for pid in (0, 1):
    cmd = helpers.main_command(RIN_DIGITS, workdir, *MULTI_FLAGS,
                               f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                               f'--process_id={pid}')
    if pid == 1:
      cmd = [sys.executable, str(launcher), workdir, writes_log] + cmd[1:]
    logs.append(str(tmp_path / f'process{pid}.log'))
    procs.append(_start(cmd, logs[-1], num_devices=2))
  # The reference: one process with 4 devices, beside them.
  logs.append(str(tmp_path / 'reference.log'))
  procs.append(_start(helpers.main_command(RIN_DIGITS, ref_workdir, *REFERENCE_FLAGS),
                      logs[-1], num_devices=4))
  try:
    # Step 4 is logged after step 3's checkpoint and sample grid.
    started = helpers.wait_for_text(logs[0], f'step {NUM_STEPS + 1}/', timeout=900, proc=procs[0])
    assert started, open(logs[0]).read()[-4000:]
    procs[1].send_signal(signal.SIGTERM)  # a preemption notice reaching one host only
    codes = [p.wait(timeout=900 if i == 2 else 240) for i, p in enumerate(procs)]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  texts = [open(path).read() for path in logs]
  for code, text in zip(codes, texts):
    assert code == 0, text[-4000:]
  for pid in (0, 1):
    assert f'process {pid} of 2; 2 local / 4 global devices' in texts[pid]
  stops = [re.findall(r'preempted: saved checkpoint step (\d+)', t) for t in texts[:2]]
  assert len(stops[0]) == 1 and stops[0] == stops[1], stops
  stop_step = int(stops[0][0])
  assert stop_step > NUM_STEPS

  # Complete checkpoints (all processes take part: Orbax's save barriers would hang otherwise)
  # that restore onto one process.
  exp = experiment.Experiment(_tiny_config(), mesh=sharding_lib.make_mesh(jax.devices()[:4]))
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  assert glob.glob(os.path.join(ckpt_dir, '*tmp*')) == []
  manager = checkpoints.make_manager(ckpt_dir)
  # Periodic checkpoints every 3 steps until the preemption notice has gone round, then its own.
  periodic = list(range(NUM_STEPS, stop_step, NUM_STEPS))
  assert manager.all_steps() == sorted(set(periodic + [stop_step]))
  for step in manager.all_steps():
    assert os.path.exists(os.path.join(ckpt_dir, str(step), 'commit_success.txt'))
  stopped = jax.device_get(checkpoints.restore(manager, stop_step, exp.abstract_sharded_state))
  assert int(stopped['step']) == stop_step
  state = jax.device_get(checkpoints.restore(manager, NUM_STEPS, exp.abstract_sharded_state))
  reference, _ = checkpoints.restore_latest(
      checkpoints.make_manager(os.path.join(ref_workdir, 'checkpoints')), exp.abstract_sharded_state)
  reference = jax.device_get(reference)
  # Same global batches, same RNG, same compiled program; only the order of the cross-device
  # gradient sums differs (gloo between processes vs. XLA's in-process all-reduce): float32
  # round-off (~1e-7 relative) carried through 3 Adam steps. The tolerance is that of
  # test_train.test_sharded_step_matches_single_device; a process feeding the wrong rows of the
  # global batch would change the parameters by ~1e-3.
  assert int(state['step']) == int(reference['step']) == NUM_STEPS
  for name in ('params', 'ema_params'):
    for a, b in zip(jax.tree.leaves(state[name]), jax.tree.leaves(reference[name])):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
  np.testing.assert_array_equal(state['rng'], reference['rng'])

  # Only process 0 writes logs, images and the config copy.
  files = sorted(f for f in os.listdir(workdir) if f != 'checkpoints')
  grids = [f'samples_step{step:07d}.png' for step in periodic]
  assert files == ['config.json'] + grids + ['tensorboard'], files
  events = os.listdir(os.path.join(workdir, 'tensorboard'))
  assert len(events) == 1 and events[0].endswith(f'.{procs[0].pid}.0.v2'), events
  assert not os.path.exists(writes_log), open(writes_log).read()
  assert 'steps/s' in texts[0]


EVAL_FLAGS = ['--config.eval.fid_stats_num=16', '--config.eval.num_samples=16',
              '--config.eval.batch_size=8']


def _run_everywhere(tmp_path, mode, two_workdir, one_workdir):
  """`mode` on 2 processes x 2 devices (two_workdir) and on 1 process x 4 devices (one_workdir)."""
  port = _free_port()
  procs, logs = [], []
  for pid in (0, 1):
    logs.append(str(tmp_path / f'{mode}_process{pid}.log'))
    procs.append(_start(helpers.main_command(
        RIN_DIGITS, two_workdir, *EVAL_FLAGS, f'--coordinator_address=127.0.0.1:{port}',
        '--num_processes=2', f'--process_id={pid}', mode=mode), logs[-1], num_devices=2))
  logs.append(str(tmp_path / f'{mode}_reference.log'))
  procs.append(_start(helpers.main_command(RIN_DIGITS, one_workdir, *EVAL_FLAGS, mode=mode),
                      logs[-1], num_devices=4))
  try:
    codes = [p.wait(timeout=1200) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for code, path in zip(codes, logs):
    assert code == 0, open(path).read()[-4000:]


@pytest.mark.slow
def test_fid_stats_and_eval_on_two_processes_equal_one_process(tmp_path):
  """Each host reads its share of the digits / generates its share of the samples; only features
  cross hosts. Statistics and FID equal the one-process run's to 1e-6 relative."""
  config = _tiny_config()
  two, one = str(tmp_path / 'two'), str(tmp_path / 'one')
  manager = checkpoints.make_manager(os.path.join(two, 'checkpoints'))
  checkpoints.save(manager, 2, experiment.Experiment(config).init_state())
  manager.wait_until_finished()
  manager.close()
  shutil.copytree(two, one)
  for mode in ('fid_stats', 'eval'):
    _run_everywhere(tmp_path, mode, two, one)
  stats = [fid.load_statistics(os.path.join(w, 'fid_stats.npz'), 'tfgan') for w in (two, one)]
  assert stats[0].n == stats[1].n == 16
  np.testing.assert_allclose(stats[0].mu, stats[1].mu, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(stats[0].sigma, stats[1].sigma, rtol=1e-6, atol=1e-9)
  rows = []
  for w in (two, one):
    with open(os.path.join(w, 'eval_results.json')) as f:
      rows.append(json.load(f))
  assert len(rows[0]) == len(rows[1]) == 1 and rows[0][0]['num_samples'] == 16
  np.testing.assert_allclose(rows[0][0]['fid'], rows[1][0]['fid'], rtol=1e-6)
  assert os.path.exists(os.path.join(two, 'fid_vs_step.png'))


# ----------------------------------------------------------------------------------------------
# runtime.initialize_distributed: which source wins
# ----------------------------------------------------------------------------------------------

_DIST_ENV = ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID', 'SLURM_NTASKS',
             'SLURM_PROCID', 'TPU_WORKER_HOSTNAMES')


@pytest.fixture
def distributed_calls(monkeypatch):
  for name in _DIST_ENV:
    monkeypatch.delenv(name, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda *a, **k: calls.append((a, k)))
  return calls


def test_initialize_distributed_single_process_does_nothing(distributed_calls):
  runtime.initialize_distributed()
  assert distributed_calls == []


def test_initialize_distributed_flags_win_over_environment(distributed_calls, monkeypatch):
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', 'other:1')
  monkeypatch.setenv('JAX_NUM_PROCESSES', '8')
  monkeypatch.setenv('JAX_PROCESS_ID', '7')
  runtime.initialize_distributed('host0:1234', 2, 1)
  assert distributed_calls == [(('host0:1234', 2, 1), {})]


def test_initialize_distributed_from_environment(distributed_calls, monkeypatch):
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', 'node1:5555')
  monkeypatch.setenv('JAX_NUM_PROCESSES', '4')
  monkeypatch.setenv('JAX_PROCESS_ID', '3')
  runtime.initialize_distributed()
  assert distributed_calls == [(('node1:5555', 4, 3), {})]


@pytest.mark.parametrize('env', [{'SLURM_NTASKS': '4', 'SLURM_PROCID': '2'},
                                 {'TPU_WORKER_HOSTNAMES': 't1-w-0,t1-w-1'}],
                         ids=['slurm', 'tpu_pod'])
def test_initialize_distributed_auto_detects_cluster(distributed_calls, monkeypatch, env):
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  runtime.initialize_distributed()
  assert distributed_calls == [((), {})]  # JAX's own cluster detection fills in the rest


def test_initialize_distributed_needs_all_three_values(distributed_calls):
  with pytest.raises(validation.UserError, match='needs --num_processes and --process_id'):
    runtime.initialize_distributed('host0:1234', None, None)
  assert distributed_calls == []

