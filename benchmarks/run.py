r"""Benchmarks: train-step throughput and utilisation, sampler overhead, FID features, memory.

Command:
    python -m benchmarks.run            # full run: writes benchmarks/results/<machine>.json
    python -m benchmarks.run --quick --out /tmp/b.json    # tiny shapes, 1 iteration (< ~90 s)
    python -m benchmarks.run --markdown benchmarks/results/cpu-2core.md   # also write the tables
    python -m benchmarks.run --sections train,ops --cases ncsnv2_cifar10 --batch 16   # one case,
                                        # forward/backward split and its top XLA ops

Sections (`--sections`, comma-separated; default all):
  matmul    the machine's reference peak: a jitted float32 matmul (GFLOP/s);
  train     the compiled train step of RIN and RefineNet configs (configs/ shapes, CPU-sized batch):
            step time, images/s, XLA cost-analysis FLOPs, achieved GFLOP/s and its fraction of
            the peak, and the split forward (loss) / backward (value_and_grad − forward) /
            optimiser (step − value_and_grad);
  ops       per-op breakdown of one train step per case (benchmarks/op_profile.py, from a
            jax.profiler trace): the top `--top` XLA ops by time, and time by kind (conv forward /
            input-grad / weight-grad, max-pool backward, layout copies, ...) and by pass;
  samplers  time per sampler step / time of one network evaluation, for DDPM, DDIM, DPM-Solver++
            (RIN) and annealed Langevin (RefineNet);
  fid       InceptionV3 feature extraction images/s on 32² uint8 input
            (`benchmarks/fid_features.py`).
Every row records its compile time and peak memory (see benchmarks/measure.py for what that means
per backend). Everything is compiled once per shape and warmed up before timing.
The exit status is 1 if any case failed (its error is in the JSON).
"""

import argparse
import json
import math
import os
import sys
import traceback
from typing import Any, Callable, Dict, List

from ncsn_rin import allocator

if __name__ == '__main__':  # before JAX starts: re-executes under jemalloc where installed
  allocator.maybe_reexec()

# pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import cases as cases_lib
from benchmarks import measure
from benchmarks import report
from benchmarks import samplers as samplers_lib
from benchmarks import train_step as train_step_lib

SECTIONS = ('matmul', 'train', 'ops', 'samplers', 'fid')
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


def parse_args(argv: List[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m benchmarks.run',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='tiny networks and 1 timing iteration: a smoke run (< ~90 s on 2 cores)')
  parser.add_argument('--out', default=None,
                      help='JSON path (default benchmarks/results/<machine>.json, '
                           'e.g. cpu-2core.json)')
  parser.add_argument('--markdown', default=None, help='also write the tables to this .md file')
  parser.add_argument('--sections', default=','.join(SECTIONS),
                      help=f'comma-separated subset of {",".join(SECTIONS)}')
  parser.add_argument('--iters', type=int, default=None,
                      help='timed iterations per case (default 1 with --quick, else 3)')
  parser.add_argument('--cases', default=None,
                      help='comma-separated substrings: only the train/ops/sampler cases whose name '
                           'contains one (e.g. ncsnv2_cifar10)')
  parser.add_argument('--batch', type=int, default=None,
                      help='batch size of the train/ops cases (default: each case\'s own)')
  parser.add_argument('--top', type=int, default=15, help='ops section: how many top ops to keep')
  parser.add_argument('--keep_dtype', action='store_true',
                      help="keep the configs' compute dtype on CPU (default: float32 on CPU)")
  args = parser.parse_args(argv)
  sections = [s for s in args.sections.split(',') if s]
  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown:
    parser.error(f'--sections: unknown {unknown}; allowed: {",".join(SECTIONS)}')
  args.sections = sections
  args.argv = list(argv)
  if args.iters is None:
    args.iters = 1 if args.quick else 3
  if args.iters < 1:
    parser.error(f'--iters={args.iters} must be >= 1')
  if args.batch is not None and args.batch < 1:
    parser.error(f'--batch={args.batch} must be >= 1')
  args.cases = [c for c in (args.cases or '').split(',') if c]
  return args


def _guarded(name: str, fn: Callable[[], Any], errors: List[Dict[str, str]]):
  """Runs one case; a failure is recorded (and printed) instead of ending the whole run."""
  print(f'[benchmarks] {name} ...', flush=True)
  try:
    return fn()
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    errors.append({'case': name, 'error': f'{type(e).__name__}: {e}'})
    return None


def run_benchmarks(args: argparse.Namespace) -> Dict[str, Any]:
  """Runs the requested sections; returns the JSON-ready result."""
  result: Dict[str, Any] = {
      'command': ' '.join(['python -m benchmarks.run'] + args.argv),
      'quick': args.quick, 'iters': args.iters, 'keep_dtype': args.keep_dtype,
      'machine': measure.machine_info(), 'notes': [], 'errors': []}
  result['machine']['baseline_rss_mb'] = measure.current_rss_mb()
  errors = result['errors']
  peak = None
  if 'matmul' in args.sections or 'train' in args.sections:
    size = 512 if args.quick else 2048
    peak = _guarded('matmul peak', lambda: measure.matmul_peak(size, 3 if args.quick else 10),
                    errors)
    result['matmul_peak'] = peak
  peak_gflops = peak['gflops_per_s'] if peak else None

  if 'train' in args.sections or 'ops' in args.sections:
    train_rows, ops_rows = [], []
    top = args.top if 'ops' in args.sections else 0
    for case in _selected(cases_lib.train_cases(args.quick, args.keep_dtype, args.batch), args):
      row = _guarded(f'train step: {case.name}', lambda c=case: train_step_lib.benchmark_train_step(
          c, args.iters, peak_gflops, profile_ops=top), errors)
      if row:
        ops = row.pop('ops', None)
        if ops is not None:
          ops_rows.append({'case': row['case'], 'step_s': row['step_s'], **ops})
        train_rows.append(row)
    if 'train' in args.sections:
      result['train_step'] = train_rows
    if 'ops' in args.sections:
      result['ops'] = ops_rows

  if 'samplers' in args.sections:
    rows = []
    for case in _selected(cases_lib.sampler_cases(args.quick, args.keep_dtype), args):
      case_rows = _guarded(
          f'samplers: {case.name}',
          lambda c=case: samplers_lib.benchmark_sampler_case(c, args.iters), errors)
      rows += case_rows or []
    result['samplers'] = rows

  if 'fid' in args.sections:
    result['fid_features'] = _guarded('fid features', lambda: _fid_features(args.quick), errors)

  result['machine']['load_average_end'] = measure.load_average()
  result['notes'] = _notes(result)
  return result


def _selected(cases, args):
  """The cases whose name contains one of `--cases` (all without it)."""
  return [c for c in cases if not args.cases or any(sub in c.name for sub in args.cases)]


def _fid_features(quick: bool) -> Dict[str, Any]:
  from benchmarks import fid_features  # pylint: disable=g-import-not-at-top
  batch = 4 if quick else 64
  with measure.PeakMemory() as memory:
    row = fid_features.benchmark_feature_throughput(
        image_size=32, num_images=batch if quick else 256, batch_size=batch)
  return {**row, **memory.result}


def _notes(result: Dict[str, Any]) -> List[str]:
  notes = []
  m = result['machine']
  if m['platform'] == 'cpu':
    if not result['keep_dtype']:
      notes.append('CPU: the paper configs\' bfloat16 compute runs in float32 (bfloat16 is '
                   'emulated on CPUs), at the batch shown.')
    notes.append('"peak MB" is the process\'s peak RSS during the case: it includes the process '
                 f'baseline ({m.get("baseline_rss_mb")} MB of Python/JAX/TF before any case) and '
                 'the compiler; "XLA program MB" is XLA\'s estimate of the compiled program '
                 '(arguments + outputs − donated buffers + temporaries).')
  loads = [(m.get(k) or [0.])[0] for k in ('load_average_start', 'load_average_end')]
  cores = m.get('cpu_count') or 1
  if loads and max(loads) > 0.5 * cores and m['platform'] == 'cpu':
    notes.append(f'The machine was busy (1-min load average up to {max(loads)} on {cores} cores): '
                 'times are pessimistic.')
  if result['quick']:
    notes.append('--quick: tiny networks, 1 iteration, XLA backend optimisation level 0 (fast '
                 'compiles): a smoke run, not a measurement.')
  return notes


def _json_safe(value):
  """NaN / inf -> None so the file is strict JSON."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  return value


def write_json(path: str, result: Dict[str, Any]):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(_json_safe(result), f, indent=2, allow_nan=False)
    f.write('\n')
  os.replace(tmp, path)


QUICK_XLA_FLAG = '--xla_backend_optimization_level=0'


def _fast_compile_for_quick():
  """--quick: lower XLA:CPU's backend optimisation (compiles dominate a smoke run; recorded in
  the JSON's machine.xla_flags). Must run before the backend starts; a no-op afterwards."""
  flags = os.environ.get('XLA_FLAGS', '')
  if 'xla_backend_optimization_level' not in flags:
    os.environ['XLA_FLAGS'] = (flags + ' ' + QUICK_XLA_FLAG).strip()


def main(argv: List[str]) -> int:
  args = parse_args(argv)
  if args.quick:
    _fast_compile_for_quick()
  out = args.out or os.path.join(RESULTS_DIR, f'{measure.default_machine_name()}.json')
  result = run_benchmarks(args)
  write_json(out, result)
  text = report.markdown(result)
  if args.markdown:
    with open(args.markdown, 'w') as f:
      f.write(text)
  print('\n' + text)
  print(f'[benchmarks] wrote {out}' + (f' and {args.markdown}' if args.markdown else ''))
  if result['errors']:
    print(f'[benchmarks] {len(result["errors"])} case(s) failed: {result["errors"]}',
          file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
