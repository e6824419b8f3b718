"""benchmarks/: `python -m benchmarks.run --quick` writes valid JSON; its helpers do their job."""

import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from benchmarks import measure
from benchmarks import report
from benchmarks import run as run_lib
from tests import helpers


def _env():
  env = helpers.subprocess_env(num_devices=1)
  env['XLA_FLAGS'] = ''  # one CPU device, as `python -m benchmarks.run` sees it on a laptop
  return env


@pytest.mark.slow
def test_quick_run_writes_json_and_table(tmp_path):
  out, md = tmp_path / 'bench.json', tmp_path / 'bench.md'
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.run', '--quick', '--out', str(out), '--markdown', str(md)],
      cwd=helpers.ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      timeout=400)
  assert result.returncode == 0, result.stdout[-4000:]
  with open(out) as f:
    data = json.load(f, parse_constant=lambda c: pytest.fail(f'non-JSON constant {c}'))
  assert data['quick'] is True and data['errors'] == []
  assert data['machine']['platform'] == 'cpu' and data['machine']['load_average_end']
  assert data['matmul_peak']['gflops_per_s'] > 0
  assert data['matmul_peak']['xla_flops'] == pytest.approx(2 * 512 ** 3)
  models = {row['model'] for row in data['train_step']}
  assert models == {'rin', 'refinenet'}
  for row in data['train_step']:
    assert row['step_s'] > 0 and row['images_per_s'] > 0 and row['gflop_per_step'] > 0
    assert 0 < row['fraction_of_matmul_peak'] and row['peak_mb'] > 0
  samplers = {row['sampler'] for row in data['samplers']}
  assert samplers == {'network evaluation', 'ddpm', 'ddim', 'dpm_solver++', 'langevin'}
  for row in data['samplers']:
    assert math.isfinite(row['overhead_ratio']) and row['overhead_ratio'] > 0
  langevin = [r for r in data['samplers'] if r['sampler'] == 'langevin'][0]
  assert langevin['network_evals'] == 2 * 2 + 1  # L·T + the final denoising step
  assert data['fid_features']['images_per_s'] > 0 and data['fid_features']['image_size'] == 32
  table = md.read_text()
  assert '| case |' in table and 'dpm_solver++' in table and 'GFLOP/s' in table
  assert '| case |' in result.stdout  # the table is printed too


def test_unknown_section_is_an_error(capsys):
  with pytest.raises(SystemExit):
    run_lib.parse_args(['--sections', 'train,bogus'])
  assert 'bogus' in capsys.readouterr().err


def test_json_is_strict(tmp_path):
  path = tmp_path / 'r.json'
  run_lib.write_json(str(path), {'a': float('nan'), 'b': [1.0, float('inf')], 'c': {'d': 2}})
  assert json.loads(path.read_text()) == {'a': None, 'b': [1.0, None], 'c': {'d': 2}}


def test_time_iterations_waits_and_counts():
  calls = []

  def run_once():
    calls.append(1)
    return jnp.ones(3) * len(calls)

  timing = measure.time_iterations(run_once, iters=3, warmup=2)
  assert len(calls) == 5 and timing['iters'] == 3
  assert 0 <= timing['min_s'] <= timing['mean_s']


def test_peak_memory_reports_a_source():
  with measure.PeakMemory() as memory:
    block = bytearray(64 * measure.MB)
  del block
  assert memory.result['peak_mb'] > 64
  assert memory.result['peak_source']


def test_markdown_table_formats_missing_values():
  text = report.table(['a', 'b', 'c'], [['x', None, 1234.5], ['y', 0.01234, 7]])
  assert text.splitlines()[0] == '| a | b | c |'
  assert '| x | – | 1,234 |' in text and '| y | 0.0123 | 7 |' in text
