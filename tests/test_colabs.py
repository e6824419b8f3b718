"""The colabs run top to bottom, so they never rot.

Each notebook is executed with nbclient in a fresh python3 kernel with NCSN_RIN_COLAB_QUICK=1, which
its "parameters" cell turns into small sizes (same code path). The kernel sees one CPU device, as a
Colab CPU runtime does, and compiles with XLA's backend optimisation lowered (compile time dominates
these small runs). The notebook's working directory is colabs/, as when a person opens it.
"""

import os
import subprocess
import sys

import nbformat
import pytest

from tests import helpers

COLABS = os.path.join(helpers.ROOT, 'colabs')
NOTEBOOKS = ('noise_schedules.ipynb', 'ncsnv2_techniques.ipynb', 'sampling.ipynb')
KERNEL = 'python3'
FAST_COMPILE = '--xla_backend_optimization_level=0'


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


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_is_well_formed(name):
  nb = nbformat.read(os.path.join(COLABS, name), as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert 'pip install -q -r requirements.txt' in code[0].source  # installs itself in Colab
  parameters = [c for c in code if 'parameters' in c.metadata.get('tags', [])]
  assert len(parameters) == 1 and 'NCSN_RIN_COLAB_QUICK' in parameters[0].source
  assert all(not c.get('outputs') for c in code), f'{name}: clear the outputs before committing'


@pytest.mark.slow
@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, kernel_name, tmp_path):
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  nb = nbformat.read(os.path.join(COLABS, name), as_version=4)
  client = NotebookClient(nb, kernel_name=kernel_name, timeout=600,
                          resources={'metadata': {'path': COLABS}})
  try:
    client.execute(env=_kernel_env(tmp_path))  # raises CellExecutionError naming the cell
  finally:
    nbformat.write(nb, str(tmp_path / name))  # the executed notebook, for debugging
  text = ''.join(_outputs(nb, 'text'))
  assert 'project root: ' in text
  assert list(_outputs(nb, 'png')), 'no figure was displayed'
  if name == 'ncsnv2_techniques.ipynb':
    assert 'config.ncsn.num_scales = ' in text and 'annealed Langevin' in text
  if name == 'sampling.ipynb':
    assert 'FID of 16 images' in text
    assert not [p for p in os.listdir(tmp_path) if p.startswith('ncsn_rin_sampling_')]
