r"""lucidrains `rin-pytorch` at the CIFAR-10 shape (the RIN paper's: patch 2, 3 blocks × 2 latent
self-attention layers, 128 latents of 512, tape 256), train step with the self-conditioning pass
always taken, Adam and an EMA, timed on CPU.

For side-by-side measurements only (`side_by_side.sh`); needs `pip install torch rin-pytorch`, which
the project and its tests never use:
    python benchmarks/reference/rin_step.py BATCH ITERS [fwd]
"""

import sys

from rin_pytorch import GaussianDiffusion
from rin_pytorch import RIN
import torch

import timing  # benchmarks/reference/timing.py (this script's folder is on sys.path)

batch, iters = int(sys.argv[1]), int(sys.argv[2])
forward_only = sys.argv[3:] == ['fwd']
torch.manual_seed(0)
model = RIN(dim=256, dim_latent=512, image_size=32, patch_size=2, channels=3, depth=3,
            latent_self_attn_depth=2, num_latents=128)
diffusion = GaussianDiffusion(model, timesteps=1000, train_prob_self_cond=1.0)
optimizer = torch.optim.Adam(diffusion.parameters(), lr=1e-4)
ema = [p.detach().clone() for p in diffusion.parameters()]
images = torch.rand(batch, 3, 32, 32)


def step():
  if forward_only:
    with torch.no_grad():
      return model(images, torch.rand(batch))
  loss = diffusion(images)
  optimizer.zero_grad()
  loss.backward()
  optimizer.step()
  with torch.no_grad():
    for average, p in zip(ema, diffusion.parameters()):
      average.lerp_(p, 1e-4)
  return loss


median, best = timing.time_steps(step, iters)
print(f'reference rin batch {batch} {"forward" if forward_only else "step"}: median '
      f'{median:.3f} s, best {best:.3f} s; torch {torch.__version__}, '
      f'{torch.get_num_threads()} threads, {sum(p.numel() for p in model.parameters()):,} params, '
      f'peak RSS {timing.peak_rss_gb():.2f} GB', flush=True)
