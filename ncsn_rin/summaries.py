"""What a person looks at during a run: TensorBoard scalars, PNG grids, progress lines.

Only process 0 writes (`enabled=False` elsewhere); every writer is a no-op when disabled.
"""

import json
import math
import os
import time
from typing import Dict, Optional

from absl import logging
import numpy as np
from PIL import Image


def image_grid(images: np.ndarray, pad: int = 2) -> np.ndarray:
  """uint8 [N, H, W, C] -> one uint8 grid [rows·(H+pad)+pad, cols·(W+pad)+pad, C], near-square."""
  n, h, w, c = images.shape
  cols = int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / cols))
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    top, left = pad + r * (h + pad), pad + q * (w + pad)
    grid[top:top + h, left:left + w] = images[i]
  return grid


def save_png(path: str, image: np.ndarray):
  """Writes uint8 [H, W, 1|3] atomically (tmp file, then rename)."""
  image = image[..., 0] if image.shape[-1] == 1 else image
  tmp = path + '.tmp.png'
  Image.fromarray(image).save(tmp)
  os.replace(tmp, path)


def save_npz(path: str, **arrays):
  """Atomic np.savez (tmp file, then rename) so a kill never leaves a truncated result."""
  tmp = path + '.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def save_json(path: str, obj):
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


class SummaryWriter:
  """TensorBoard event files under `logdir` (scalars and images), through tf.summary."""

  def __init__(self, logdir: str, enabled: bool = True):
    self.enabled = enabled
    self._writer = None
    if enabled:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      tf.config.set_visible_devices([], 'GPU')  # keep TF off the accelerators JAX uses
      self._tf = tf
      self._writer = tf.summary.create_file_writer(logdir)

  def scalars(self, step: int, values: Dict[str, float]):
    if not self.enabled:
      return
    with self._writer.as_default():
      for name, value in values.items():
        self._tf.summary.scalar(name, float(value), step=step)
    self._writer.flush()

  def image(self, step: int, name: str, image: np.ndarray):
    if not self.enabled:
      return
    with self._writer.as_default():
      self._tf.summary.image(name, image[None], step=step)
    self._writer.flush()

  def close(self):
    if self._writer is not None:
      self._writer.close()


class Progress:
  """Steps/s over the last window and ETA to `total`."""

  def __init__(self, start_step: int, total: int):
    self.total = total
    self._last_step, self._last_time = start_step, time.time()

  def update(self, step: int) -> Dict[str, float]:
    now = time.time()
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    eta = (self.total - step) / rate if rate > 0 else float('inf')
    return {'steps_per_sec': rate, 'eta_sec': eta}


def format_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s'


def log_line(step: int, total: int, metrics: Dict[str, float], progress: Optional[Dict] = None):
  parts = [f'step {step}/{total}'] + [f'{k}={v:.4g}' for k, v in sorted(metrics.items())]
  if progress:
    parts += [f"{progress['steps_per_sec']:.2f} steps/s", f"ETA {format_eta(progress['eta_sec'])}"]
  logging.info(' | '.join(parts))
