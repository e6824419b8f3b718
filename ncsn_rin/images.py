"""Image conventions in one place: uint8 ↔ the float ranges of each method, grids, PNG files.

Data and samples travel as uint8 [B, H, W, C]. Diffusion works in [−1, 1] (pix2seq: x·2 − 1),
NCSNv2 in [0, 1] (ermongroup/ncsnv2 without `rescaled`).
"""

import io
import math

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from ncsn_rin import files


def uint8_to_signed(images: jax.Array) -> jax.Array:
  """uint8 [B, H, W, C] -> float32 in [−1, 1] (diffusion data)."""
  return images.astype(jnp.float32) / 127.5 - 1.


def uint8_to_unit(images: jax.Array) -> jax.Array:
  """uint8 [B, H, W, C] -> float32 in [0, 1] (NCSNv2 data)."""
  return images.astype(jnp.float32) / 255.


def signed_to_uint8(x: jax.Array) -> jax.Array:
  """[−1, 1] float -> uint8, rounded (pix2seq: (x + 1)/2 · 255)."""
  return jnp.clip(jnp.round((x + 1.) * 127.5), 0, 255).astype(jnp.uint8)


def unit_to_uint8(x: jax.Array) -> jax.Array:
  """[0, 1] float -> uint8, rounded."""
  return jnp.clip(jnp.round(x * 255.), 0, 255).astype(jnp.uint8)


def grid(images: np.ndarray, pad: int = 2, cols: int = 0, scale: int = 1) -> np.ndarray:
  """uint8 [N, H, W, C] -> one uint8 image [rows·(s·H+pad)+pad, cols·(s·W+pad)+pad, C].

  `cols` = 0 gives a near-square grid; `scale` repeats every pixel (nearest neighbour) so that
  small images (16² digits) are readable.
  """
  images = np.repeat(np.repeat(np.asarray(images), scale, axis=1), scale, axis=2)
  n, h, w, c = images.shape
  cols = cols or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / cols))
  out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
  for i, image in enumerate(images):
    top, left = pad + (i // cols) * (h + pad), pad + (i % cols) * (w + pad)
    out[top:top + h, left:left + w] = image
  return out


def sample_grid(samples: np.ndarray, num_classes: int) -> np.ndarray:
  """The grid of a set of samples as the project shows it: one column per class when the classes
  fit on a row (column k = class k with balanced labels), and pixels repeated up to ~64 px."""
  cols = num_classes if 0 < num_classes <= len(samples) else 0
  return grid(samples, cols=cols, scale=max(1, 64 // samples.shape[1]))


def save_png(target, image: np.ndarray) -> str:
  """Writes uint8 [H, W, 1|3] as a PNG (atomically); returns the path."""
  image = image[..., 0] if image.shape[-1] == 1 else image
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return files.write_bytes(target, buffer.getvalue())
