"""benchmarks/: `python -m benchmarks.run --quick` writes valid JSON; its helpers do their job."""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import measure
from benchmarks import op_profile
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
  assert {row['method'] for row in data['train_step']} == {'diffusion', 'ncsn'}
  for row in data['train_step']:
    assert row['step_s'] > 0 and row['images_per_s'] == pytest.approx(8 / row['step_s'])
    # The forward/backward split: value_and_grad costs more FLOPs than the forward alone, and the
    # step (value_and_grad + optimiser + EMA) at least as many as value_and_grad.
    assert row['forward_s'] > 0 and row['value_and_grad_s'] > 0
    assert row['backward_s'] == pytest.approx(row['value_and_grad_s'] - row['forward_s'])
    assert row['gflop_value_and_grad'] > 1.5 * row['gflop_forward'] > 0
    assert row['gflop_per_step'] >= row['gflop_value_and_grad']
    assert row['peak_mb'] >= row['start_mb']  # the case's peak includes where it started
  # The per-op breakdown: one per train case, both passes present, the top ops sorted by time.
  assert [r['case'] for r in data['ops']] == [r['case'] for r in data['train_step']]
  for ops in data['ops']:
    assert ops['by_pass_ms']['forward'] > 0 and ops['by_pass_ms']['backward'] > 0
    assert sum(ops['by_kind_ms'].values()) == pytest.approx(ops['traced_ms'])
    times = [o['ms'] for o in ops['top']]
    assert times == sorted(times, reverse=True) and len(times) == 15
  refinenet_kinds = set(next(r for r in data['ops'] if 'refinenet' in r['case'])['by_kind_ms'])
  assert {'conv forward', 'conv input-grad', 'conv weight-grad'} <= refinenet_kinds
  samplers = {row['sampler'] for row in data['samplers']}
  assert samplers == {'network evaluation', 'ddpm', 'ddim', 'dpm_solver++', 'langevin'}
  for row in data['samplers']:
    assert math.isfinite(row['overhead_ratio']) and row['overhead_ratio'] > 0
  langevin = [r for r in data['samplers'] if r['sampler'] == 'langevin'][0]
  assert langevin['network_evals'] == 2 * 2 + 1  # L·T + the final denoising step
  assert data['fid_features']['images_per_s'] > 0 and data['fid_features']['image_size'] == 32
  table = md.read_text()
  assert '| case |' in table and 'dpm_solver++' in table and 'GFLOP/s' in table
  assert 'backward ms' in table and 'Per-op breakdown' in table and 'conv weight-grad' in table
  assert '| case |' in result.stdout  # the table is printed too


def test_unknown_section_is_an_error(capsys):
  with pytest.raises(SystemExit):
    run_lib.parse_args(['--sections', 'train,bogus'])
  assert 'bogus' in capsys.readouterr().err


def test_case_filter_and_batch_override():
  args = run_lib.parse_args(['--sections', 'train,ops', '--cases', 'ncsnv2_cifar10',
                             '--batch', '16'])
  assert args.sections == ['train', 'ops'] and args.cases == ['ncsnv2_cifar10']
  cases = run_lib._selected(run_lib.cases_lib.train_cases(False, batch_size=args.batch), args)
  assert [(c.name, c.batch_size, c.config.train.batch_size) for c in cases] == [
      ('ncsnv2_cifar10 (batch 16)', 16, 16)]


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


@pytest.mark.skipif(not measure.reset_peak_memory(), reason='needs Linux /proc/self/clear_refs')
def test_peak_memory_sees_a_256mb_allocation():
  """The per-case peak (VmHWM after a reset) rises by what the case touched: 256 MB here."""
  with measure.PeakMemory() as memory:
    block = np.ones(256 * measure.MB // 8)  # float64, every page written
  del block
  assert memory.result['peak_source'].startswith('process peak RSS (VmHWM')
  assert memory.result['peak_mb'] - memory.result['start_mb'] > 200


def test_compiled_flops_equal_analytic_counts():
  """XLA's cost analysis, as read by `measure.compiled_flops`: 2·m·k·n for a matmul and
  2·B·H'·W'·kh·kw·C_in·C_out for a VALID convolution."""
  a, b = jnp.ones((8, 16)), jnp.ones((16, 4))
  matmul = jax.jit(jnp.matmul).lower(a, b).compile()
  assert measure.compiled_flops(matmul) == 2 * 8 * 16 * 4
  x, w = jnp.ones((2, 7, 6, 3)), jnp.ones((3, 3, 3, 5))
  conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))).lower(x, w).compile()
  assert measure.compiled_flops(conv) == 2 * 2 * 5 * 4 * 3 * 3 * 3 * 5


def _conv_loss(x, w):
  y = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jnp.sum(jnp.tanh(y))


def test_op_profile_names_the_convolutions_of_a_gradient():
  """parse_hlo + classify on a compiled conv gradient: forward, input-grad and weight-grad
  convolutions are told apart, and the weight gradient is counted as backward."""
  x, w = jnp.ones((2, 16, 16, 4)), jnp.ones((3, 3, 4, 4))
  compiled = jax.jit(jax.value_and_grad(_conv_loss, (0, 1))).lower(x, w).compile()
  instructions = op_profile.parse_hlo(compiled.as_text())
  kinds = {op_profile.classify(i): op_profile.pass_of(i) for i in instructions.values()}
  assert kinds['conv forward'] == 'forward'
  assert kinds['conv input-grad'] == 'backward' and kinds['conv weight-grad'] == 'backward'


def test_op_profile_times_the_programs_own_instructions():
  """Every timed event is an instruction of the compiled program, and the three convolutions are
  among them (the trace is matched by name, not by order or timing)."""
  x, w = jnp.ones((2, 16, 16, 4)), jnp.ones((3, 3, 4, 4))
  compiled = jax.jit(jax.value_and_grad(_conv_loss, (0, 1))).lower(x, w).compile()
  jax.block_until_ready(compiled(x, w))
  times = op_profile.op_times(compiled.as_text(), lambda: compiled(x, w))
  assert set(times['ms']) <= set(times['instructions']) and times['wall_ms'] > 0
  timed_kinds = {op_profile.classify(times['instructions'][name]) for name in times['ms']}
  assert {'conv forward', 'conv input-grad', 'conv weight-grad'} <= timed_kinds
  result = op_profile.breakdown(times, top=3)
  assert len(result['top']) == 3
  assert result['traced_ms'] == pytest.approx(sum(times['ms'].values()))


def test_span_of_an_asynchronous_instruction_ends_at_its_end_event():
  """Start to `end:` event, less what ran inline on the end's thread; k-th start with k-th end;
  an instruction without end events keeps its own duration."""
  events = [
      dict(name='dot.1', ts=0, dur=3, tid=1),           # dispatch only; the work ends at 50
      dict(name='fusion.2', ts=40, dur=8, tid=2),       # ran inline before dot.1's end event
      dict(name='end: dot.1', ts=50, dur=1, tid=2),
      dict(name='dot.1', ts=100, dur=2, tid=1),         # the second execution: 100 -> 130
      dict(name='end: dot.1', ts=129, dur=1, tid=1),
      dict(name='fusion.3', ts=60, dur=5, tid=1),       # no end event: its own duration
      dict(name='end: unknown.9', ts=70, dur=1, tid=1),
  ]
  spans = op_profile.instruction_span_us(events, {'dot.1', 'fusion.2', 'fusion.3'})
  assert spans == {'dot.1': (51 - 8) + 30, 'fusion.2': 8, 'fusion.3': 5}


def test_op_profile_times_eigen_dots_to_their_end():
  """The lhs-transposed product runs on XLA:CPU's thread pool (an Eigen dot thunk): timed to its
  end event it is most of the wall time, not the dispatch's few percent."""
  h, dy = jnp.ones((4096, 512)), jnp.ones((4096, 2048))
  product = lambda a, b: jax.lax.dot_general(a, b, (((0,), (0,)), ((), ()))) * 2.
  compiled = jax.jit(product).lower(h, dy).compile()
  jax.block_until_ready(compiled(h, dy))
  times = op_profile.op_times(compiled.as_text(), lambda: compiled(h, dy), runs=2)
  dots = [ms for name, ms in times['ms'].items() if times['instructions'][name].opcode == 'dot'
          or op_profile.classify(times['instructions'][name]).startswith('dot')]
  assert len(dots) == 1 and dots[0] > 0.5 * times['wall_ms'], times


def test_markdown_table_formats_missing_values():
  text = report.table(['a', 'b', 'c'], [['x', None, 1234.5], ['y', 0.01234, 7]])
  assert text.splitlines()[0] == '| a | b | c |'
  assert '| x | – | 1,234 |' in text and '| y | 0.0123 | 7 |' in text
