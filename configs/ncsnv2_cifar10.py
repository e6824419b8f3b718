r"""NCSNv2 (Song & Ermon 2020) on cifar10 at 32², official hyperparameters.

Command:
    python main.py --config=configs/ncsnv2_cifar10.py --workdir=/path/to/ncsnv2_cifar10
    python main.py --config=configs/ncsnv2_cifar10.py --workdir=/path/to/ncsnv2_cifar10 --mode=tune_noise
    python main.py --config=configs/ncsnv2_cifar10.py --workdir=/path/to/ncsnv2_cifar10 --mode=eval

Network: ncsnv2 (ngf 128). σ1 = 50.0, σ_L = 0.01, L = 232, T = 5, ε = 6.2e-6 (the official config values),
batch 128, 300_000 steps, Adam lr 1e-4, EMA 0.999, final denoising step on.
Expected: FID 10.87 (paper, Table 1, with denoising); not reproduced here.
"""

from configs import common


def get_config(arg: str = ''):
  config = common.ncsnv2_config(data_name='cifar10', image_size=32, model='ncsnv2', sigma_max=50.0,
                               num_scales=232, step_lr=6.2e-6, batch_size=128, num_steps=300_000)
  return common.finish(config, arg)
