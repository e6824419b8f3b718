r"""NCSNv2 (Song & Ermon 2020) on image_folder at 256², official hyperparameters.

Command:
    python main.py --config=configs/ncsnv2_ffhq256.py --workdir=/path/to/ncsnv2_ffhq256
    python main.py --config=configs/ncsnv2_ffhq256.py --workdir=/path/to/ncsnv2_ffhq256 --mode=tune_noise
    python main.py --config=configs/ncsnv2_ffhq256.py --workdir=/path/to/ncsnv2_ffhq256 --mode=eval

Network: ncsnv2_deepest (ngf 128). σ1 = 348.0, σ_L = 0.01, L = 2311, T = 3, ε = 9e-7 (the official config values),
batch 32, 80_000 steps, Adam lr 1e-4, EMA 0.999, final denoising step on.
FFHQ 256² as an image folder (--config.data.image_folder=/path/to/ffhq_root, layout root/train/<label>/*.png). Adam eps 1e-3.
"""

from configs import common


def get_config(arg: str = ''):
  config = common.ncsnv2_config(data_name='image_folder', image_size=256, model='ncsnv2_deepest',
                               sigma_max=348.0, num_scales=2311, step_lr=9e-7, batch_size=32,
                               num_steps=80_000, n_steps_each=3,
                               adam_eps=1e-3)
  return common.finish(config, arg)
