"""NCSNv2 score networks (Song & Ermon 2020, "Improved Techniques for Training Score-Based
Generative Models"): RefineNet with InstanceNorm++, ELU and pre-activation residual blocks.

Three depths, as in ermongroup/ncsnv2 `models/ncsnv2.py`:
  * `NCSNv2`        — 32–64 px (CIFAR-10, CelebA 64). Stage widths [1, 2, 2, 2]·ngf, dilations
                      [-, -, 2, 4]: one real down-sampling (x1/2), since a 'down' block with
                      dilation keeps the resolution.
  * `NCSNv2Deeper`  — 96–128 px (LSUN church 96, bedroom/tower 128). Widths [1, 2, 2, 4, 4],
                      dilations [-, -, -, 2, 4]: x1/4.
  * `NCSNv2Deepest` — 256 px (FFHQ). Widths [1, 2, 2, 2, 4, 4], dilations [-, -, -, -, 2, 4]: x1/8.

Each stage is two `ResidualBlock`s; a `RefineBlock` chain goes from the deepest stage back up.
Technique 3 of the paper: the network is unconditional and its output is divided by σ,
s_θ(x, σ) = f_θ(x) / σ. Data in [0, 1] is mapped to 2x − 1 inside the network unless
`data_centered` (the official `if not logit_transform and not rescaled: h = 2x − 1`).

Shapes: x [B, H, W, C] (H, W divisible by 2^(#non-dilated down stages)), sigma [B]
-> score [B, H, W, C] float32.

Parameter counts (ngf=128, C=3; conv nets, so independent of the image size): NCSNv2 29,694,083
(29.69M), NCSNv2Deeper 83,445,379 (83.45M), NCSNv2Deepest 94,132,611 (94.13M) — the figures of
the NCSNv2 paper. tests/test_refinenet.py also re-derives them layer by layer from the official
PyTorch constructors (nn.Conv2d weights + biases, InstanceNorm2dPlus α, γ, β), and they agree
exactly.
"""

from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ncsn_rin.models.layers import Conv2d, InstanceNormPlus, RefineBlock, ResidualBlock

Dtype = Any


def _stages(res: str, refine: str, mults: Sequence[int], dilations: Sequence[Any]) -> tuple:
  """Stages (res name, paired refine name, channel multiplier, dilation or None), deepest last. The
  names follow the official attributes (res31 / refine31 in the deepest model) so that converted
  checkpoints map one to one; every stage but the first starts with a 'down' block."""
  return tuple(zip([f'res{n}' for n in res.split()], [f'refine{n}' for n in refine.split()],
                   mults, dilations))


class _RefineNetBase(nn.Module):
  """Shared NCSNv2 body; subclasses only fix `stages` (`_stages`).

  begin_conv(3×3) → stages of 2 ResidualBlocks → RefineBlocks from the deepest stage up, each
  fusing its stage's features with the refined features from below → InstanceNorm++ → ELU →
  end_conv(3×3) → / σ.
  """
  ngf: int = 128
  num_channels: int = 3
  data_centered: bool = False
  remat: bool = False
  dtype: Dtype = jnp.float32

  stages: ClassVar[tuple] = ()  # fixed by subclasses, not a constructor argument

  @nn.compact
  def __call__(self, x: jax.Array, sigma: jax.Array) -> jax.Array:
    if x.ndim != 4 or x.shape[-1] != self.num_channels:
      raise ValueError(f'x must be [B, H, W, {self.num_channels}] (NHWC), got {x.shape}.')
    if sigma.shape != x.shape[:1]:
      raise ValueError(f'sigma must have shape [B]={x.shape[:1]}, got {sigma.shape}.')
    res_cls = nn.remat(ResidualBlock) if self.remat else ResidualBlock
    refine_cls = nn.remat(RefineBlock) if self.remat else RefineBlock

    h = x.astype(jnp.float32)
    if not self.data_centered:
      h = 2. * h - 1.
    h = Conv2d(self.ngf, 3, dtype=self.dtype, name='begin_conv')(h)

    # Encoder: two residual blocks per stage.
    layers = []
    for k, (res_name, _, mult, dilation) in enumerate(self.stages):
      for j in range(2):
        h = res_cls(mult * self.ngf, resample='down' if k > 0 and j == 0 else None,
                    dilation=dilation, dtype=self.dtype, name=f'{res_name}_{j}')(h)
      layers.append(h)

    # Decoder: the refine block at stage k outputs the channel count of stage k−1.
    ref = None
    for k in reversed(range(len(self.stages))):
      feats = self.stages[max(k - 1, 0)][2] * self.ngf
      xs = (layers[k],) if ref is None else (layers[k], ref)
      ref = refine_cls(feats, end=(k == 0), dtype=self.dtype, name=self.stages[k][1])(xs)

    h = nn.elu(InstanceNormPlus(dtype=self.dtype, name='normalizer')(ref))
    h = Conv2d(self.num_channels, 3, dtype=self.dtype, name='end_conv')(h)
    return h.astype(jnp.float32) / sigma.astype(jnp.float32)[:, None, None, None]


class NCSNv2(_RefineNetBase):
  """NCSNv2 for 32–64 px images (official `NCSNv2`; 29.69M parameters at ngf=128).

  `NCSNv2(ngf=128, num_channels=3, data_centered=False, remat=False, dtype=jnp.float32)`;
  `__call__(x [B, H, W, C], sigma [B]) -> [B, H, W, C]` = f(x) / σ.
  """
  stages = _stages('1 2 3 4', '4 3 2 1', (1, 2, 2, 2), (None, None, 2, 4))


class NCSNv2Deeper(_RefineNetBase):
  """NCSNv2 for 96–128 px images (official `NCSNv2Deeper`; 83.45M parameters at ngf=128)."""
  stages = _stages('1 2 3 4 5', '5 4 3 2 1', (1, 2, 2, 4, 4), (None, None, None, 2, 4))


class NCSNv2Deepest(_RefineNetBase):
  """NCSNv2 for 256 px images (official `NCSNv2Deepest`; 94.13M parameters at ngf=128)."""
  stages = _stages('1 2 3 31 4 5', '5 4 3 31 2 1', (1, 2, 2, 2, 4, 4), (None,) * 4 + (2, 4))
