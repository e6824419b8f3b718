r"""NCSNv2 (Song & Ermon 2020) on lsun/bedroom at 128², official hyperparameters.

Command:
    python main.py --config=configs/ncsnv2_bedroom128.py --workdir=/path/to/ncsnv2_bedroom128
    python main.py --config=configs/ncsnv2_bedroom128.py --workdir=/path/to/ncsnv2_bedroom128 --mode=tune_noise
    python main.py --config=configs/ncsnv2_bedroom128.py --workdir=/path/to/ncsnv2_bedroom128 --mode=eval

Network: ncsnv2_deeper (ngf 128). σ1 = 190.0, σ_L = 0.01, L = 1086, T = 3, ε = 1.8e-6 (the official config values),
batch 128, 150_000 steps, Adam lr 1e-4, EMA 0.999, final denoising step on.
LSUN bedroom (manual download).
"""

from configs import common


def get_config(arg: str = ''):
  config = common.ncsnv2_config(data_name='lsun/bedroom', image_size=128, model='ncsnv2_deeper',
                               sigma_max=190.0, num_scales=1086, step_lr=1.8e-6, batch_size=128,
                               num_steps=150_000, n_steps_each=3)
  return common.finish(config, arg)
