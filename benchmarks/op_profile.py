"""Per-op breakdown of a compiled XLA program: which HLO instructions the time goes to.

How: the compiled program is run once under `jax.profiler.trace(..., create_perfetto_trace=True)`.
On XLA:CPU each top-level HLO instruction (a fusion, a convolution, a copy, ...) is one thunk and
shows up in the trace as an event named after the instruction (`convolution.12`,
`loop_fusion.3`); on GPU the kernels carry the same names. Those events are matched by name with
the instructions of `compiled.as_text()`, which give each one its opcode, shape and the JAX
`op_name` metadata (`jit(step)/transpose(jvp(...))/conv_general_dilated`). The JAX autodiff
convention puts every backward op under `transpose(...)`, which splits the time into forward and
backward without re-running anything.

Kinds (`classify`): a convolution whose window spans more than 7 pixels is a kernel (weight)
gradient — XLA writes dW as a convolution of the activations with the whole output gradient as
window; other convolutions are forward or input-gradient convolutions by their metadata. A
variadic (tuple-shaped) reduce-window is the argmax of a max-pool backward; u32 fusions of adds,
shifts and xors are random-bit generation (threefry).

Thunks may run concurrently on several threads, so the per-op sum can exceed the wall time; the
`traced_ms` / `wall_ms` pair in the result says by how much.

Asynchronous thunks. XLA:CPU runs some thunks (the Eigen dots and convolutions, e.g. the weight
gradients that YNNPACK does not take) on its thread pool: their event covers only the dispatch
(3 ms of a 49 ms [4096, 512]ᵀ × [4096, 2048] product, 2026-12-03), and the work ends at the
instruction's `end: NAME` event. Every instruction has one; its time here is the span from its start
to its end event less the instructions that ran inline on the end event's thread in between (the
end event is recorded after the continuations it triggers). `instruction_span_us` does this.
"""

import bisect
import collections
import gzip
import json
import os
import re
import tempfile
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import jax

# `%name = shape opcode(operands), attr=..., metadata={op_name="..." ...}` in compiled.as_text().
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S.*?)\s+([a-z][\w\-]*)\((.*)$')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_WINDOW = re.compile(r'window=\{size=([\dx]+)')
_CALLS = re.compile(r'calls=%?([\w.\-]+)')
_COMPUTATION = re.compile(r'^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->.*\{\s*$')
_MAX_KERNEL = 7  # the largest network kernel; a wider conv window is a weight gradient


class Instruction(NamedTuple):
  name: str
  opcode: str
  shape: str
  op_name: str            # JAX metadata (the fusion root's, or a fused op's when the root has none)
  window: Optional[str]   # 'HxW' for convolutions / reduce-windows
  fused_opcodes: tuple    # opcodes inside a fusion's computation


_KEY_OPCODES = ('convolution', 'dot', 'scatter', 'gather', 'select-and-scatter', 'reduce-window',
                'custom-call', 'rng-bit-generator')


def parse_hlo(hlo_text: str) -> Dict[str, Instruction]:
  """Instructions of every computation of `compiled.as_text()`, by name.

  A fusion (XLA:CPU also wraps single convolutions, reduce-windows and scatters in fusions) takes
  the window and op_name of its key fused op (convolution, dot, scatter, ...), else of its root,
  else of the last fused op that has metadata.
  """
  computations: Dict[str, List[tuple]] = collections.defaultdict(list)
  current = None
  for line in hlo_text.splitlines():
    head = _COMPUTATION.match(line)
    if head:
      current = head.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if m and current is not None:
      computations[current].append(m.groups())
  instructions = {}
  for body in computations.values():
    for name, shape, opcode, rest in body:
      op_name, window, fused = _OP_NAME.search(rest), _WINDOW.search(rest), ()
      op_name = op_name.group(1) if op_name else ''
      window = window.group(1) if window else None
      calls = _CALLS.search(rest)
      if opcode == 'fusion' and calls:
        inner = computations.get(calls.group(1), [])
        fused = tuple(sorted({op for _, _, op, _ in inner} - {'parameter', 'constant'}))
        key = [r for _, _, op, r in inner if op in _KEY_OPCODES]
        with_meta = [r for _, _, _, r in inner if _OP_NAME.search(r)]
        source = key[0] if key else (with_meta[-1] if with_meta and not op_name else None)
        if source is not None:
          inner_name, inner_window = _OP_NAME.search(source), _WINDOW.search(source)
          op_name = inner_name.group(1) if (inner_name and (key or not op_name)) else op_name
          window = inner_window.group(1) if inner_window else window
      instructions[name] = Instruction(name=name, opcode=opcode, shape=shape.split('{')[0],
                                       op_name=op_name, window=window, fused_opcodes=fused)
  return instructions


def _has(inst: Instruction, *opcodes: str) -> bool:
  return inst.opcode in opcodes or bool(set(opcodes) & set(inst.fused_opcodes))


def _is_weight_grad(inst: Instruction) -> bool:
  """XLA writes dW of a conv as a conv whose window is the whole (padded) output gradient."""
  if not inst.window:
    return False
  return max(int(s) for s in inst.window.split('x')) > _MAX_KERNEL


def _is_argmax_window(inst: Instruction) -> bool:
  """The max-pool backward's variadic reduce-window (value + argmax indices: a tuple shape)."""
  return _has(inst, 'reduce-window') and inst.shape.startswith('(')


def pass_of(inst: Instruction) -> str:
  """'backward' (JAX's transpose(...) metadata, or a kind only the backward has), 'forward', or
  'other' (no metadata: layout copies between the two, parameter copies)."""
  if 'transpose(' in inst.op_name:
    return 'backward'
  if _has(inst, 'convolution') and _is_weight_grad(inst):
    return 'backward'
  if _is_argmax_window(inst):
    return 'backward'
  return 'forward' if inst.op_name else 'other'


def classify(inst: Instruction) -> str:
  """A readable kind: 'conv weight-grad', 'conv input-grad', 'conv forward', 'dot', 'max-pool
  backward: argmax window', 'layout copy/transpose', 'rng', 'fusion (elementwise): <prim>', ..."""
  prim = inst.op_name.rsplit('/', 1)[-1] if inst.op_name else ''
  backward = 'transpose(' in inst.op_name
  if _has(inst, 'convolution'):
    if _is_weight_grad(inst):
      return 'conv weight-grad'
    return 'conv input-grad' if backward else 'conv forward'
  if _has(inst, 'dot', 'custom-call'):
    return 'dot (backward)' if backward else 'dot'
  if _is_argmax_window(inst):
    return 'max-pool backward: argmax window'
  if _has(inst, 'select-and-scatter') or 'select_and_scatter' in inst.op_name:
    return 'max-pool backward: scatter'
  if _has(inst, 'reduce-window'):
    return 'max-pool forward (reduce-window)'
  if _has(inst, 'gather', 'scatter'):
    return f'gather/scatter: {prim or "?"}'
  if (_has(inst, 'rng-bit-generator', 'rng') or 'threefry' in inst.op_name
      or (inst.shape.startswith('u32') and _has(inst, 'xor', 'shift-left', 'shift-right-logical',
                                                 'add'))):
    return 'rng (random bits)'  # threefry's rounds are u32 adds, rotates and xors
  if inst.opcode in ('copy', 'transpose') or (inst.opcode == 'fusion' and set(
      inst.fused_opcodes) <= {'copy', 'transpose', 'bitcast', 'reshape'}):
    return 'layout copy/transpose'
  if inst.opcode == 'fusion':
    kind = 'reduction' if 'reduce' in inst.fused_opcodes else 'elementwise'
    return f'fusion ({kind}): {prim or "?"}'
  return f'{inst.opcode}: {prim}' if prim else inst.opcode


# ----------------------------------------------------------------------------------------------
# Trace
# ----------------------------------------------------------------------------------------------

def _trace_events(trace_dir: str) -> List[dict]:
  paths = []
  for root, _, files in os.walk(trace_dir):
    paths += [os.path.join(root, f) for f in files if f.endswith('.trace.json.gz')]
  if not paths:
    raise RuntimeError(f'jax.profiler.trace wrote no perfetto trace under {trace_dir}.')
  with gzip.open(sorted(paths)[-1]) as f:
    trace = json.load(f)
  events = trace['traceEvents'] if isinstance(trace, dict) else trace
  return [e for e in events if e.get('ph') == 'X' and 'dur' in e]


def op_times(hlo_text: str, run_once: Callable[[], Any], runs: int = 1) -> Dict[str, Any]:
  """Calls `run_once()` (one call of the compiled program whose `as_text()` is `hlo_text`; it may
  carry donated state in a closure) `runs` times under the profiler: time per instruction in ms,
  the mean over runs, and the wall time per run."""
  instructions = parse_hlo(hlo_text)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      start = time.perf_counter()
      for _ in range(runs):
        jax.block_until_ready(run_once())
      wall = (time.perf_counter() - start) / runs
    events = _trace_events(trace_dir)
  totals = collections.Counter()
  for name, us in instruction_span_us(events, instructions).items():
    totals[name] += us / 1e3 / runs
  return {'instructions': instructions, 'ms': dict(totals), 'wall_ms': wall * 1e3}


_END = 'end: '


def instruction_span_us(events: List[dict], names) -> Dict[str, float]:
  """Microseconds per instruction (summed over its executions) from complete trace events.

  An execution is the instruction's event and its next `end: NAME` event (the k-th start with the
  k-th end). Its time is the span start -> end, less the instructions whose events lie entirely
  inside that span on the end event's thread (continuations run inline before the end is recorded),
  and never less than the start event's own duration. Without end events, the event's duration.
  """
  starts, ends = collections.defaultdict(list), collections.defaultdict(list)
  by_thread = collections.defaultdict(list)  # tid -> [(ts, end_ts)] of instruction events
  for e in events:
    name = e['name']
    if name in names:
      starts[name].append(e)
      by_thread[e.get('tid')].append((e['ts'], e['ts'] + e['dur']))
    elif name.startswith(_END) and name[len(_END):] in names:
      ends[name[len(_END):]].append(e)
  for spans in by_thread.values():
    spans.sort()
  totals = collections.Counter()
  for name, begun in starts.items():
    begun.sort(key=lambda e: e['ts'])
    finished = sorted(ends.get(name, []), key=lambda e: e['ts'])
    for i, start in enumerate(begun):
      total = start['dur']
      if i < len(finished):
        end = finished[i]
        lo, hi = start['ts'] + start['dur'], end['ts']
        spans = by_thread[end.get('tid')]
        inline = sum(b - a for a, b in spans[bisect.bisect_left(spans, (lo,)):
                                             bisect.bisect_right(spans, (hi, hi))] if b <= hi)
        total = max(total, end['ts'] + end['dur'] - start['ts'] - inline)
      totals[name] += total
  return dict(totals)


def breakdown(times: Dict[str, Any], top: int = 25) -> Dict[str, Any]:
  """Top instructions, and time by kind and by pass, from `op_times`."""
  instructions, ms = times['instructions'], times['ms']
  traced = sum(ms.values())
  by_kind, by_pass = collections.Counter(), collections.Counter()
  for name, t in ms.items():
    by_kind[classify(instructions[name])] += t
    by_pass[pass_of(instructions[name])] += t
  rows = []
  for name, t in sorted(ms.items(), key=lambda kv: -kv[1])[:top]:
    inst = instructions[name]
    rows.append({'name': name, 'opcode': inst.opcode, 'kind': classify(inst),
                 'pass': pass_of(inst), 'shape': inst.shape, 'window': inst.window,
                 'op_name': _short_op_name(inst.op_name), 'ms': t,
                 'fraction': t / traced if traced else None})
  return {
      'wall_ms': times['wall_ms'], 'traced_ms': traced,
      'num_instructions_timed': len(ms),
      'by_pass_ms': dict(by_pass.most_common()),
      'by_kind_ms': dict(by_kind.most_common()),
      'top': rows,
  }


def _short_op_name(op_name: str, keep: int = 3) -> str:
  """'jit(step)/transpose(jvp(NCSNv2))/refine1/crp/conv' -> the last `keep` components."""
  parts = op_name.split('/')
  return '/'.join(parts[-keep:])


def profile_compiled(compiled, run_once: Callable[[], Any], top: int = 25,
                     runs: int = 1) -> Dict[str, Any]:
  """`breakdown(op_times(...))` of a compiled program called by `run_once` (already warm)."""
  return breakdown(op_times(compiled.as_text(), run_once, runs), top)


def profile_function(fn: Callable, *args, top: int = 25) -> Dict[str, Any]:
  """Compiles `jax.jit(fn)` for `args`, warms it up and profiles one call."""
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  return profile_compiled(compiled, lambda: compiled(*args), top)
