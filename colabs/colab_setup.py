"""Installs the project on a notebook runtime (Colab) without replacing the runtime's accelerator stack.

The first cell of every notebook finds the checkout (or clones it) and calls `prepare(root)`:

1. Python >= 3.11 (jax 0.10.2 has no wheels for older ones), else one line saying so;
2. the runtime's accelerator (`detect_accelerator`): an NVIDIA device -> 'gpu', a TPU device
   (/dev/accel*, /dev/vfio/<n>) -> 'tpu', else 'cpu'; NCSN_RIN_ACCELERATOR=cpu|gpu|tpu overrides;
3. what to install (`plan`): requirements.txt (the runtime stack only; the test tools live in
   requirements-dev.txt and are never read here) with its CPU jax/jaxlib pins replaced by the jax of
   this runtime, `jax[cuda12]==V` on a GPU and `jax[tpu]==V` on a TPU (V = the pinned jax), and
   without its TensorFlow/TensorBoard pins when TensorFlow is already installed (Colab's own
   TensorFlow and the TensorBoard that belongs to it stay; on a runtime without TensorFlow the
   pinned CPU build is installed);
4. `pip install` of only the requirements not already met, so a re-run, or a local virtualenv with
   the pinned stack, installs nothing. Outside Colab it installs only when a package is missing;
5. when pip replaced a package this kernel had already imported, one line asks for a restart.

Standard library only: it runs before anything is installed.
"""

import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time

MIN_PYTHON = (3, 11)
ACCELERATORS = ('cpu', 'gpu', 'tpu')
JAX_EXTRA = {'gpu': 'cuda12', 'tpu': 'tpu'}
# Distributions that show a jax extra is installed: jax[cuda12] brings the CUDA plugin, jax[tpu]
# brings libtpu.
EXTRA_DISTRIBUTIONS = {'cuda12': ('jax-cuda12-plugin',), 'tpu': ('libtpu',)}
# Pins that belong to TensorFlow: dropped when the runtime already has a TensorFlow (the CPU build
# must not replace it, and a TensorFlow depends on its own TensorBoard version).
TENSORFLOW_PINS = ('tensorflow-cpu', 'tensorflow', 'tensorboard')


class SetupError(Exception):
  """A setup problem the user can fix; IPython shows the one line instead of a traceback."""

  def _render_traceback_(self):
    return [f'Setup stopped: {self}']


def _normalise(name: str) -> str:
  return re.sub(r'[-_.]+', '-', name).lower()


def parse_requirements(text: str) -> list[tuple[str, str, str]]:
  """'name[extra]==version  # comment' lines -> [(name, extra, version)]; options (-r ...) skipped."""
  out = []
  for line in text.splitlines():
    line = line.split('#', 1)[0].strip()
    if not line or line.startswith('-'):
      continue
    match = re.fullmatch(r'([A-Za-z0-9_.\-]+)(?:\[([A-Za-z0-9_,\-]+)\])?\s*==\s*([^\s;]+)', line)
    if not match:
      raise SetupError(f'requirements.txt line {line!r} is not name==version')
    out.append((match[1], match[2] or '', match[3]))
  return out


def detect_accelerator(env=None) -> str:
  """'gpu', 'tpu' or 'cpu' for this machine (NCSN_RIN_ACCELERATOR overrides)."""
  env = os.environ if env is None else env
  forced = env.get('NCSN_RIN_ACCELERATOR', '').strip().lower()
  if forced:
    if forced not in ACCELERATORS:
      raise SetupError(f'NCSN_RIN_ACCELERATOR={forced!r}: use one of {", ".join(ACCELERATORS)}')
    return forced
  if os.path.exists('/dev/nvidia0') or _nvidia_smi_lists_a_gpu():
    return 'gpu'
  tpu_devices = [p for p in _listdir('/dev') if re.fullmatch(r'accel\d+', p)]
  tpu_devices += [p for p in _listdir('/dev/vfio') if p.isdigit()]
  if tpu_devices or env.get('COLAB_TPU_ADDR') or env.get('TPU_ACCELERATOR_TYPE'):
    return 'tpu'
  return 'cpu'


def _listdir(path: str) -> list[str]:
  try:
    return os.listdir(path)
  except OSError:
    return []


def _nvidia_smi_lists_a_gpu() -> bool:
  if not shutil.which('nvidia-smi'):
    return False
  try:
    result = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, timeout=20)
  except (OSError, subprocess.SubprocessError):
    return False
  return result.returncode == 0 and 'GPU' in result.stdout


def plan(requirements: list[tuple[str, str, str]], accelerator: str,
         have_tensorflow: bool) -> list[str]:
  """The pip requirement strings for this runtime (see the module docstring, step 3)."""
  if accelerator not in ACCELERATORS:
    raise ValueError(f'accelerator {accelerator!r} is not one of {ACCELERATORS}')
  versions = {_normalise(name): version for name, _, version in requirements}
  if 'jax' not in versions:
    raise SetupError('requirements.txt pins no jax version')
  out = []
  for name, extra, version in requirements:
    key = _normalise(name)
    if key in ('jax', 'jaxlib') and accelerator != 'cpu':
      continue
    if key in TENSORFLOW_PINS and have_tensorflow:
      continue
    out.append(f'{name}[{extra}]=={version}' if extra else f'{name}=={version}')
  if accelerator != 'cpu':
    out.insert(0, f'jax[{JAX_EXTRA[accelerator]}]=={versions["jax"]}')
  return out


def installed_version(name: str):
  """The installed version of distribution `name`, or None."""
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def is_met(requirement: str) -> bool:
  """Whether 'name==V' / 'jax[extra]==V' is installed (an extra: jaxlib==V and its plugin)."""
  match = re.fullmatch(r'([^\[=]+)(?:\[([^\]]+)\])?==(.+)', requirement)
  name, extra, version = match[1], match[2], match[3]
  if installed_version(name) != version:
    return False
  if extra in EXTRA_DISTRIBUTIONS:
    return (installed_version('jaxlib') == version
            and all(installed_version(d) for d in EXTRA_DISTRIBUTIONS[extra]))
  return True


def _base_name(requirement: str) -> str:
  return _normalise(re.split(r'[\[=]', requirement, maxsplit=1)[0])


def _replaced_imported_packages(before: dict) -> list[str]:
  """Distributions whose version pip changed and whose modules this process already imported."""
  changed = {name for name, version in before.items()
             if version is not None and installed_version(name) != version}
  if not changed:
    return []
  loaded = {m.split('.', 1)[0] for m in sys.modules}
  owners = importlib.metadata.packages_distributions()
  return sorted({_normalise(d) for m in loaded for d in owners.get(m, [])} & changed)


def _pip_install(requirements: list[str]):
  command = [sys.executable, '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check',
             *requirements]
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode:
    last = ' | '.join((result.stderr or result.stdout).strip().splitlines()[-3:])
    raise SetupError(f'pip install failed (status {result.returncode}): {last}')


def _first(items: list[str], n: int) -> str:
  return ', '.join(items[:n]) + (', ...' if len(items) > n else '')


def in_colab() -> bool:
  return importlib.util.find_spec('google.colab') is not None


def prepare(root: str, *, install=None):
  """Installs what this runtime lacks (module docstring), then makes `root` the working directory
  and importable. `install`: None = in Colab, or when a package is missing; True / False force it."""
  if sys.version_info[:2] < MIN_PYTHON:
    raise SetupError(f'this runtime has Python {sys.version_info[0]}.{sys.version_info[1]}; the '
                     'project (jax 0.10.2) needs 3.11 or newer: pick a newer runtime version')
  accelerator = detect_accelerator()
  have_tensorflow = importlib.util.find_spec('tensorflow') is not None
  with open(os.path.join(root, 'requirements.txt')) as f:
    wanted = plan(parse_requirements(f.read()), accelerator, have_tensorflow)
  missing = [r for r in wanted if not is_met(r)]
  absent = [r for r in missing if installed_version(_base_name(r)) is None]
  if install is None:
    install = in_colab() or bool(absent)
  runtime = f'{accelerator.upper()} runtime'
  if not missing:
    print(f"{runtime}: the project's runtime packages are installed")
  elif not install:
    print(f'{runtime}: using the installed packages; {len(missing)} differ from the pins '
          f'({_first(missing, 4)})')
  else:
    kept = ", keeping this runtime's TensorFlow" if have_tensorflow else ''
    print(f'{runtime}: installing {len(missing)} packages ({_first(missing, 3)}){kept}; '
          'this takes a few minutes')
    before = {_base_name(r): installed_version(_base_name(r)) for r in missing}
    start = time.time()
    _pip_install(missing)
    print(f'installed in {time.time() - start:.0f} s')
    replaced = _replaced_imported_packages(before)
    if replaced:
      raise SetupError(f'pip replaced {", ".join(replaced)}, which this session had already '
                       'imported: restart the session (Runtime > Restart session) and run all '
                       'cells again')
  os.chdir(root)
  if root not in sys.path:
    sys.path.insert(0, root)
  print('project root:', root)


if __name__ == '__main__':  # python colabs/colab_setup.py: what would be installed here
  _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(_root, 'requirements.txt')) as _f:
    _accelerator = detect_accelerator()
    _wanted = plan(parse_requirements(_f.read()), _accelerator,
                   importlib.util.find_spec('tensorflow') is not None)
  print(f'{_accelerator}:', ' '.join(_wanted))
  print('not yet met:', ' '.join(r for r in _wanted if not is_met(r)) or 'none')
