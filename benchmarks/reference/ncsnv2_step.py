r"""The official NCSNv2 CIFAR-10 train step (ermongroup/ncsnv2: DSM loss, Adam, EMA), timed on CPU.

For side-by-side measurements only (`side_by_side.sh`); needs PyTorch and a checkout of the official
code, neither of which the project or its tests use:
    python benchmarks/reference/ncsnv2_step.py /path/to/ncsnv2 BATCH ITERS [fwd]
Prints the median and best of ITERS steps after one warm-up (`fwd`: one score evaluation instead).
"""

import sys
import types

import torch

import timing  # benchmarks/reference/timing.py (this script's folder is on sys.path)
import yaml

repo, batch, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
forward_only = sys.argv[4:] == ['fwd']
sys.path.insert(0, repo)
from losses import get_optimizer  # pylint: disable=g-import-not-at-top
from losses.dsm import anneal_dsm_score_estimation  # pylint: disable=g-import-not-at-top
from models import get_sigmas  # pylint: disable=g-import-not-at-top
from models.ema import EMAHelper  # pylint: disable=g-import-not-at-top
from models.ncsnv2 import NCSNv2  # pylint: disable=g-import-not-at-top


def namespace(d):
  return types.SimpleNamespace(**{k: namespace(v) if isinstance(v, dict) else v
                                  for k, v in d.items()})


config = namespace(yaml.safe_load(open(f'{repo}/configs/cifar10.yml')))
config.device = torch.device('cpu')
torch.manual_seed(0)
score = NCSNv2(config)
optimizer = get_optimizer(config, score.parameters())
ema = EMAHelper(mu=config.model.ema_rate)
ema.register(score)
sigmas = get_sigmas(config)
images = torch.rand(batch, 3, 32, 32)


def step():
  if forward_only:
    with torch.no_grad():
      return score(images, torch.randint(0, len(sigmas), (batch,)))
  loss = anneal_dsm_score_estimation(score, images, sigmas, None, config.training.anneal_power)
  optimizer.zero_grad()
  loss.backward()
  optimizer.step()
  ema.update(score)
  return loss


median, best = timing.time_steps(step, iters)
print(f'reference ncsnv2 batch {batch} {"forward" if forward_only else "step"}: median '
      f'{median:.3f} s, best {best:.3f} s; torch {torch.__version__}, '
      f'{torch.get_num_threads()} threads, '
      f'{sum(p.numel() for p in score.parameters()):,} params, peak RSS '
      f'{timing.peak_rss_gb():.2f} GB', flush=True)
