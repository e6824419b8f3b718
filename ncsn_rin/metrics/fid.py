"""Fréchet Inception Distance: streaming feature statistics, the distance, reference statistics.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", https://arxiv.org/abs/1706.08500) is the Fréchet distance between Gaussians fitted to
Inception pool3 features of two image sets:

  d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

`frechet_distance` follows the TTUR reference implementation (`calculate_frechet_distance` in
https://github.com/bioinf-jku/TTUR/blob/master/fid.py), including its eps offset for singular
products and its tolerance for imaginary parts. Statistics are accumulated in float64 one batch at a
time (count, sum, sum of outer products), so 50k samples never sit in memory together; the
covariance is the unbiased one (ddof=1), as `np.cov(features, rowvar=False)` in TTUR.

A statistics file records the Inception input protocol it was computed with (`inception.PROTOCOLS`);
FIDs are only comparable within one protocol, so loading refuses a file of another protocol.
"""
import io
from typing import NamedTuple

import numpy as np

from ncsn_rin import files

IMAG_TOLERANCE = 1e-3


class Statistics(NamedTuple):
  """Gaussian summary of a feature set: mu float64 [D], sigma float64 [D, D], n samples."""
  mu: np.ndarray
  sigma: np.ndarray
  n: int
  description: str
  protocol: str


class RunningStatistics:
  """Streaming float64 mean/covariance of features [B, D] (count, sum [D], sum of outer products
  [D, D]); `state_dict`/`load_state_dict` checkpoint a partial evaluation."""

  def __init__(self, dim=2048):
    self.count = 0
    self.sum = np.zeros(dim, np.float64)
    self.sum_outer = np.zeros((dim, dim), np.float64)

  def update(self, features):
    """Adds a batch of features [B, D] (numpy or jax)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != self.sum.shape[0]:
      raise ValueError(f'expected features [B, {self.sum.shape[0]}], got shape {f.shape}')
    self.count += f.shape[0]
    self.sum += f.sum(axis=0)
    self.sum_outer += f.T @ f
    return self

  def state_dict(self):
    """Arrays to checkpoint a partial evaluation: count int64 [], sum [D], sum_outer [D, D]."""
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


def frechet_distance(mu1, sigma1, mu2, sigma2):
  """Fréchet distance d^2 of N(mu1, sigma1) and N(mu2, sigma2): mu [D], sigma [D, D] -> float.

  As TTUR's calculate_frechet_distance, with Tr((Σ1 Σ2)^(1/2)) = Σ_i sqrt(λ_i), λ the eigenvalues of
  Σ1^(1/2) Σ2 Σ1^(1/2): similar to Σ1 Σ2 and symmetric positive semi-definite, so two symmetric
  eigendecompositions give TTUR's `trace(sqrtm(sigma1 @ sigma2))` — to 5e-8 relative on 2048-d
  Inception statistics, singular ones included (where TTUR needs its eps offset) — 2-3× faster than
  scipy's general `sqrtm`. ValueError on a shape mismatch, or an eigenvalue below −1e-6 (the square
  root would have an imaginary part above TTUR's tolerance 1e-3: not covariances).
  """
  mu1, mu2 = (np.atleast_1d(np.asarray(mu, np.float64)) for mu in (mu1, mu2))
  sigma1, sigma2 = (np.atleast_2d(np.asarray(sigma, np.float64)) for sigma in (sigma1, sigma2))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f'shape mismatch: mu {mu1.shape} vs {mu2.shape}, '
                     f'sigma {sigma1.shape} vs {sigma2.shape}')
  w, v = np.linalg.eigh(sigma1)
  root1 = (v * np.sqrt(np.clip(w, 0., None))) @ v.T
  lam = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
  if lam.min() < -IMAG_TOLERANCE ** 2:
    raise ValueError(f'sqrt(sigma1 sigma2) has an imaginary component {np.sqrt(-lam.min()):.3g} '
                     f'> {IMAG_TOLERANCE} (covariances not positive semi-definite?)')
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2. * np.sqrt(np.clip(lam, 0., None)).sum())


# ----------------------------------------------------------------------------- reference files


def save_statistics(path, mu, sigma, n, description='', *, protocol):
  """Atomically writes a statistics .npz (mu [D], sigma [D, D], n, protocol, description) to a
  local `path` (parent directories are created) or gs://; returns the path."""
  target = files.path(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  return files.write_npz(target, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64),
                         n=np.asarray(n, np.int64), protocol=np.asarray(protocol),
                         description=np.asarray(str(description)))


def load_statistics(path, protocol) -> Statistics:
  """Reads a file of `save_statistics`: FileNotFoundError naming the command that creates it,
  ValueError (one line naming both protocols and the fix) if not computed with `protocol`."""
  source = files.path(path)
  if not source.exists():
    raise FileNotFoundError(
        f'FID reference statistics {path} not found. Create them with `python main.py '
        '--mode=fid_stats --config=...` (the config names the dataset and this path).')
  with np.load(io.BytesIO(source.read_bytes()), allow_pickle=False) as npz:
    data = dict(npz)
  missing = {'mu', 'sigma'} - data.keys()
  if missing:
    raise ValueError(f'{path} is not an FID statistics file (missing {sorted(missing)}).')
  stats = Statistics(data['mu'].astype(np.float64), data['sigma'].astype(np.float64),
                     int(data.get('n', 0)), str(data.get('description', '')),
                     str(data.get('protocol', 'tfgan')))  # Older files: all TF-GAN.
  if stats.protocol != protocol:
    raise ValueError(
        f"FID statistics {path} were computed with protocol '{stats.protocol}', this evaluation "
        f"uses '{protocol}': recompute them with --mode=fid_stats "
        f'--config.eval.protocol={protocol} (or evaluate with '
        f'--config.eval.protocol={stats.protocol}).')
  return stats
