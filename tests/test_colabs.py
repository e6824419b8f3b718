"""The colabs run top to bottom, so they never rot; their saved outputs and install cell stay right.

Each notebook is executed with nbclient in a fresh python3 kernel with NCSN_RIN_COLAB_QUICK=1, which
its "parameters" cell turns into small sizes (same code path). The kernel sees one CPU device, as a
Colab CPU runtime does, and compiles with XLA's backend optimisation lowered (compile time dominates
these small runs). The notebook's working directory is colabs/, as when a person opens it.

The notebooks are committed with the outputs of a full run (plots visible on opening): every code
cell that draws a figure must have its PNG saved. The first cell (the same in every notebook) finds
the checkout and calls colabs/colab_setup.py, which installs only the runtime stack with the jax of
the runtime's accelerator; `colab_setup.plan` is checked here for each runtime.
"""

import os
import re
import subprocess
import sys
import zipfile

import nbformat
import pytest

from tests import helpers

COLABS = os.path.join(helpers.ROOT, 'colabs')
NOTEBOOKS = ('noise_schedules.ipynb', 'ncsnv2_techniques.ipynb', 'sampling.ipynb')
KERNEL = 'python3'
FAST_COMPILE = '--xla_backend_optimization_level=0'
MAX_NOTEBOOK_BYTES = 2 * 2**20
# Never in the install cell: the test / notebook-execution tools (requirements-dev.txt) must not
# replace Colab's kernel, and the CPU TensorFlow must not replace Colab's TensorFlow.
NOT_IN_INSTALL_CELL = ('tensorflow-cpu', 'pytest', 'nbclient', 'ipykernel')
PLOTS = re.compile(r'plt\.show\(\)|show_grid\(')  # code that draws a figure in these notebooks

sys.path.insert(0, COLABS)
import colab_setup  # pylint: disable=g-import-not-at-top,wrong-import-position


def _read(name):
  return nbformat.read(os.path.join(COLABS, name), as_version=4)


def _code_cells(nb):
  return [c for c in nb.cells if c.cell_type == 'code']


def _runs_this_python(spec) -> bool:
  """True when the kernel spec starts this interpreter (jupyter_client maps 'python' to it)."""
  exe = spec.argv[0]
  if exe in ('python', f'python{sys.version_info[0]}',
             f'python{sys.version_info[0]}.{sys.version_info[1]}'):
    return True
  return os.path.realpath(exe) == os.path.realpath(sys.executable)


@pytest.fixture(scope='module')
def kernel_name(tmp_path_factory):
  """'python3' when its spec runs this venv's Python; else a spec installed into a temp prefix."""
  from jupyter_client import kernelspec  # pylint: disable=g-import-not-at-top
  try:
    if _runs_this_python(kernelspec.get_kernel_spec(KERNEL)):
      return KERNEL
  except kernelspec.NoSuchKernel:
    pass
  prefix = tmp_path_factory.mktemp('jupyter')
  name = 'ncsn-rin-test'
  subprocess.run([sys.executable, '-m', 'ipykernel', 'install', '--prefix', str(prefix),
                  '--name', name], check=True, stdout=subprocess.DEVNULL)
  os.environ['JUPYTER_PATH'] = os.pathsep.join(
      [str(prefix / 'share' / 'jupyter')] + [p for p in [os.environ.get('JUPYTER_PATH')] if p])
  return name


def _kernel_env(tmp_path):
  env = dict(os.environ)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env['XLA_FLAGS'] = ' '.join(flags + [FAST_COMPILE])
  env['NCSN_RIN_COLAB_QUICK'] = '1'
  env['JAX_PLATFORMS'] = 'cpu'
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  env['TMPDIR'] = str(tmp_path)          # the sampling notebook's temporary workdir
  env['MPLBACKEND'] = 'module://matplotlib_inline.backend_inline'
  return env


def _outputs(nb, kind):
  for cell in nb.cells:
    for output in cell.get('outputs', []):
      if kind == 'text' and output.get('output_type') == 'stream':
        yield output['text']
      if kind == 'png' and 'image/png' in output.get('data', {}):
        yield output['data']['image/png']


def test_every_notebook_is_tested():
  assert sorted(f for f in os.listdir(COLABS) if f.endswith('.ipynb')) == sorted(NOTEBOOKS)


# ----------------------------------------------------------------------------- the saved notebooks


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_is_well_formed(name):
  nb = _read(name)
  nbformat.validate(nb)
  parameters = [c for c in _code_cells(nb) if 'parameters' in c.metadata.get('tags', [])]
  assert len(parameters) == 1 and 'NCSN_RIN_COLAB_QUICK' in parameters[0].source
  assert os.path.getsize(os.path.join(COLABS, name)) < MAX_NOTEBOOK_BYTES


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_saved_outputs_show_every_plot(name):
  """Each code cell that draws a figure has a PNG saved, so the notebook shows it on opening."""
  nb = _read(name)
  plotting = [c for c in _code_cells(nb) if PLOTS.search(c.source)]
  assert plotting, f'{name}: no plotting cell found (update PLOTS)'
  for cell in plotting:
    pngs = [o for o in cell.get('outputs', []) if 'image/png' in o.get('data', {})]
    assert pngs, f'{name}: cell {cell.source.splitlines()[0]!r} has no saved figure: rerun it fully'
  errors = [o for c in _code_cells(nb) for o in c.get('outputs', []) if o.output_type == 'error']
  assert not errors, f'{name}: saved with an error output'


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_saved_outputs_have_no_volatile_metadata(name):
  nb = _read(name)
  assert 'widgets' not in nb.metadata
  for cell in _code_cells(nb):
    assert 'execution' not in cell.metadata, f'{name}: strip the execution timing'


def test_first_cell_is_the_same_install_cell_everywhere():
  first = {name: _code_cells(_read(name))[0].source for name in NOTEBOOKS}
  assert len(set(first.values())) == 1, 'the notebooks differ in their first (install) cell'
  cell = first[NOTEBOOKS[0]]
  assert "REPO_URL = ''" in cell and 'colab_setup.prepare(ROOT)' in cell
  assert 'github.com' not in cell  # the URL is the user's setting, never a guess
  for word in NOT_IN_INSTALL_CELL:
    assert word not in cell, f'the install cell mentions {word}'
  assert '%pip' not in cell and '!' not in cell.replace('!=', '')  # plain Python: testable here


@pytest.mark.parametrize('path', [os.path.join('colabs', n) for n in NOTEBOOKS]
                         + ['colabs/colab_setup.py'])
def test_no_placeholder_repository_url(path):
  with open(os.path.join(helpers.ROOT, path)) as f:
    text = f.read()
  assert not re.findall(r'github\.com/(?:<[^>]*>|ncsn-rin/|your|user|username|owner|example)',
                        text, re.I)


# ----------------------------------------------------------------------------- the install cell


def _requirements():
  with open(os.path.join(helpers.ROOT, 'requirements.txt')) as f:
    return colab_setup.parse_requirements(f.read())


@pytest.mark.parametrize('have_tensorflow', [True, False])
@pytest.mark.parametrize('accelerator', colab_setup.ACCELERATORS)
def test_install_plan_keeps_the_runtime_stack(accelerator, have_tensorflow):
  pins = {name: version for name, _, version in _requirements()}
  wanted = colab_setup.plan(_requirements(), accelerator, have_tensorflow)
  names = [re.split(r'[\[=]', r)[0] for r in wanted]
  for word in ('pytest', 'nbclient', 'nbformat', 'ipykernel'):
    assert word not in ' '.join(wanted)
  assert len(names) == len(set(names))
  jax = [r for r in wanted if r.startswith('jax')]
  if accelerator == 'cpu':
    assert jax == [f"jax=={pins['jax']}", f"jaxlib=={pins['jaxlib']}"]
  else:
    extra = {'gpu': 'cuda12', 'tpu': 'tpu'}[accelerator]
    assert jax == [f"jax[{extra}]=={pins['jax']}"]  # brings its jaxlib and plugin
  tensorflow = {'tensorflow-cpu', 'tensorboard'} & set(names)
  assert tensorflow == (set() if have_tensorflow else {'tensorflow-cpu', 'tensorboard'})
  others = set(pins) - {'jax', 'jaxlib', 'tensorflow-cpu', 'tensorboard'}
  assert others <= set(names), 'every other runtime pin is installed as pinned'


def test_accelerator_detection_can_be_forced():
  assert colab_setup.detect_accelerator({'NCSN_RIN_ACCELERATOR': 'TPU'}) == 'tpu'
  with pytest.raises(colab_setup.SetupError, match='NCSN_RIN_ACCELERATOR'):
    colab_setup.detect_accelerator({'NCSN_RIN_ACCELERATOR': 'npu'})


def test_this_venv_meets_the_cpu_plan():
  """Locally (the pinned venv) the install cell installs nothing."""
  wanted = colab_setup.plan(_requirements(), 'cpu', have_tensorflow=True)
  assert [r for r in wanted if not colab_setup.is_met(r)] == []


def _run_install_cell(cwd):
  cell = _code_cells(_read(NOTEBOOKS[0]))[0].source
  env = dict(os.environ, NCSN_RIN_ACCELERATOR='cpu')
  return subprocess.run([sys.executable, '-c', cell], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=120)


def test_install_cell_without_a_checkout_says_what_to_do(tmp_path):
  result = _run_install_cell(tmp_path)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert 'SetupStopped' in last and 'set REPO_URL' in last and 'upload a zip' in last


def test_install_cell_unpacks_an_uploaded_zip(tmp_path):
  """A zip of a checkout next to the notebook (Colab: uploaded to /content) is unpacked and used."""
  with zipfile.ZipFile(tmp_path / 'ncsn_rin-main.zip', 'w') as z:
    for path in ('colabs/colab_setup.py', 'requirements.txt'):
      z.write(os.path.join(helpers.ROOT, path), f'ncsn_rin-main/{path}')
  result = _run_install_cell(tmp_path)
  assert result.returncode == 0, result.stderr
  root = tmp_path / 'ncsn_rin-main' / 'ncsn_rin-main'
  assert f'project root: {root}' in result.stdout
  assert "the project's runtime packages are installed" in result.stdout  # nothing to install
  again = _run_install_cell(tmp_path)  # a second run finds the unpacked checkout
  assert f'project root: {root}' in again.stdout


def test_setup_error_is_one_line_in_ipython(capsys):
  from IPython.core.interactiveshell import InteractiveShell  # pylint: disable=g-import-not-at-top
  shell = InteractiveShell.instance()
  try:
    shell.run_cell('import colab_setup\nraise colab_setup.SetupError("do X")')
  finally:
    InteractiveShell.clear_instance()
  shown = capsys.readouterr()
  assert 'Setup stopped: do X' in shown.out + shown.err
  assert 'Traceback' not in shown.out + shown.err


# ----------------------------------------------------------------------------- quick runs


@pytest.mark.slow
@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, kernel_name, tmp_path):
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  nb = _read(name)
  for cell in _code_cells(nb):
    cell.outputs = []
  client = NotebookClient(nb, kernel_name=kernel_name, timeout=600,
                          resources={'metadata': {'path': COLABS}})
  try:
    client.execute(env=_kernel_env(tmp_path))  # raises CellExecutionError naming the cell
  finally:
    nbformat.write(nb, str(tmp_path / name))  # the executed notebook, for debugging
  text = ''.join(_outputs(nb, 'text'))
  assert 'project root: ' in text
  assert "the project's runtime packages are installed" in text  # nothing installed locally
  assert list(_outputs(nb, 'png')), 'no figure was displayed'
  if name == 'ncsnv2_techniques.ipynb':
    assert 'config.ncsn.num_scales = ' in text and 'annealed Langevin' in text
  if name == 'sampling.ipynb':
    assert 'FID of 16 images' in text
    assert not [p for p in os.listdir(tmp_path) if p.startswith('ncsn_rin_sampling_')]
