r"""NCSNv2 (Song & Ermon 2020) on lsun/church_outdoor at 96², official hyperparameters.

Command:
    python main.py --config=configs/ncsnv2_church96.py --workdir=/path/to/ncsnv2_church96
    python main.py --config=configs/ncsnv2_church96.py --workdir=/path/to/ncsnv2_church96 --mode=tune_noise
    python main.py --config=configs/ncsnv2_church96.py --workdir=/path/to/ncsnv2_church96 --mode=eval

Network: ncsnv2_deeper (ngf 128). σ1 = 140.0, σ_L = 0.01, L = 788, T = 4, ε = 4.9e-6 (the official config values),
batch 128, 200_000 steps, Adam lr 1e-4, EMA 0.999, final denoising step on.
LSUN church_outdoor (manual download). No FID is claimed for it in the paper's table.
"""

from configs import common


def get_config(arg: str = ''):
  config = common.ncsnv2_config(data_name='lsun/church_outdoor', image_size=96, model='ncsnv2_deeper',
                               sigma_max=140.0, num_scales=788, step_lr=4.9e-6, batch_size=128,
                               num_steps=200_000, n_steps_each=4)
  return common.finish(config, arg)
