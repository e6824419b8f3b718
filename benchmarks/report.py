"""Markdown tables of a benchmark result (printed by `benchmarks.run` and pasted in the README)."""

from typing import Any, Dict, List, Sequence


def _fmt(value, digits: int = 3) -> str:
  if value is None:
    return '–'
  if isinstance(value, str):
    return value
  if isinstance(value, int):
    return f'{value:,}'
  if abs(value) >= 100:
    return f'{value:,.0f}'
  return f'{value:.{digits}g}'


def table(headers: Sequence[str], rows: List[Sequence[Any]]) -> str:
  lines = ['| ' + ' | '.join(headers) + ' |', '|' + '|'.join('---' for _ in headers) + '|']
  lines += ['| ' + ' | '.join(_fmt(v) for v in row) + ' |' for row in rows]
  return '\n'.join(lines)


def _ms(seconds):
  return None if seconds is None else seconds * 1e3


def _pct(fraction):
  return None if fraction is None else f'{100 * fraction:.1f}%'


def train_table(rows: List[Dict[str, Any]]) -> str:
  return table(
      ['case', 'params', 'dtype', 'step ms', 'img/s', 'forward ms', 'backward ms',
       'optimiser+rest ms', 'GFLOP/step', 'GFLOP/s', 'of matmul peak', 'compile s',
       'XLA program MB', 'peak MB'],
      [[r['case'], r['params'], r['dtype'], _ms(r['step_s']), r['images_per_s'],
        _ms(r.get('forward_s')), _ms(r.get('backward_s')), _ms(r.get('optimizer_and_rest_s')),
        r['gflop_per_step'], r['gflops_per_s'], _pct(r['fraction_of_matmul_peak']),
        r['compile_s'], r['xla_program_mb'], r['peak_mb']] for r in rows])


def ops_tables(rows: List[Dict[str, Any]], kinds: int = 10) -> str:
  """Per case: time by pass, the top kinds, and the top instructions of one profiled step."""
  parts = []
  for r in rows:
    traced = r['traced_ms'] or 1.
    share = lambda ms: f'{100 * ms / traced:.1f}%'
    passes = ', '.join(f'{k} {v:,.0f} ms ({share(v)})' for k, v in r['by_pass_ms'].items())
    parts += [f"\n*{r['case']}*: one step {r['wall_ms']:,.0f} ms wall, {traced:,.0f} ms summed over "
              f"{r['num_instructions_timed']} XLA ops (threads overlap); by pass: {passes}.\n",
              table(['kind', 'ms', 'share'],
                    [[k, v, share(v)] for k, v in list(r['by_kind_ms'].items())[:kinds]]),
              '',
              table(['#', 'ms', 'share', 'pass', 'kind', 'shape', 'window', 'op'],
                    [[i + 1, o['ms'], share(o['ms']), o['pass'], o['kind'], o['shape'],
                      o['window'] or '', o['op_name']] for i, o in enumerate(r['top'])])]
  return '\n'.join(parts)


def sampler_table(rows: List[Dict[str, Any]]) -> str:
  return table(
      ['case', 'sampler', 'network evals', 'ms / step', 'ms / network eval', 'step / eval',
       'compile s', 'peak MB'],
      [[r['case'], r['sampler'], r['network_evals'], _ms(r['step_s']), _ms(r['network_eval_s']),
        f"{r['overhead_ratio']:.3f}", r['compile_s'], r['peak_mb']] for r in rows])


def fid_table(row: Dict[str, Any]) -> str:
  return table(['input', 'batch', 'images', 'img/s', 'compile s', 'peak MB'],
               [[f"{row['image_size']}² uint8 → 299²", row['batch_size'], row['num_images'],
                 row['images_per_s'], row['compile_s'], row['peak_mb']]])


def markdown(result: Dict[str, Any]) -> str:
  """The whole result as markdown: machine line, matmul peak, then one table per section."""
  m = result['machine']
  peak = result.get('matmul_peak')
  parts = [f"Command: `{result['command']}`  ",
           f"Date: {m['date']}; {m['platform']} ({m['device_kind']}, {m['num_devices']} device(s), "
           f"{m['cpu_count']} CPU cores); JAX {m['jax']}; host allocator "
           f"{m.get('allocator', 'glibc')}; load average at start "
           f"{m['load_average_start']}, at end {m.get('load_average_end')}."]
  if peak:
    parts.append(f"\nReference peak: float32 matmul {peak['size']}² → "
                 f"**{peak['gflops_per_s']:.1f} GFLOP/s** (best of {peak['iters']}).")
  if result.get('train_step'):
    parts += [f"\n**Train step** (the compiled `Experiment` step: loss, gradients, optimiser, EMA; "
              "forward = the loss alone, backward = value_and_grad − forward; "
              f"best of {result['iters']} timed step(s) after a warm-up; FLOPs from XLA cost "
              "analysis)\n",
              train_table(result['train_step'])]
  if result.get('ops'):
    parts += ['\n**Per-op breakdown** (one profiled train step; `benchmarks/op_profile.py`)',
              ops_tables(result['ops'])]
  if result.get('samplers'):
    parts += ['\n**Sampler overhead** (time per sampler step / time of one network evaluation at '
              f"the same batch; best of {result['iters']} timed sampler run(s))\n",
              sampler_table(result['samplers'])]
  if result.get('fid_features'):
    parts += ['\n**FID feature extraction** (InceptionV3 pool3, TF1 bilinear resize to 299²)\n',
              fid_table(result['fid_features'])]
  if result.get('notes'):
    parts += ['\n' + '\n'.join(f'* {n}' for n in result['notes'])]
  return '\n'.join(parts) + '\n'
