r"""NCSNv2 (Song & Ermon 2020) on celeb_a at 64², official hyperparameters.

Command:
    python main.py --config=configs/ncsnv2_celeba64.py --workdir=/path/to/ncsnv2_celeba64
    python main.py --config=configs/ncsnv2_celeba64.py --workdir=/path/to/ncsnv2_celeba64 --mode=tune_noise
    python main.py --config=configs/ncsnv2_celeba64.py --workdir=/path/to/ncsnv2_celeba64 --mode=eval

Network: ncsnv2 (ngf 128). σ1 = 90.0, σ_L = 0.01, L = 500, T = 5, ε = 3.3e-6 (the official config values),
batch 128, 210_000 steps, Adam lr 1e-4, EMA 0.999, final denoising step on.
Expected: FID 10.23 (paper, CelebA 64²); not reproduced here. Images: 140×140 centre crop → 64².
"""

from configs import common


def get_config(arg: str = ''):
  config = common.ncsnv2_config(data_name='celeb_a', image_size=64, model='ncsnv2', sigma_max=90.0,
                               num_scales=500, step_lr=3.3e-6, batch_size=128, num_steps=210_000)
  return common.finish(config, arg)
