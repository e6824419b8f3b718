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


def get_config():
  config = common.base_config()
  config.method = 'ncsn'
  config.data.name = 'image_folder'
  config.data.image_size = 256
  config.data.num_channels = 3
  config.data.num_classes = 0
  config.data.random_flip = True
  common.set_refinenet_model(config, variant='ncsnv2_deepest', ngf=128)
  n = config.ncsn
  n.sigma_max = 348.0
  n.sigma_min = 0.01
  n.num_scales = 2311
  n.n_steps_each = 3
  n.step_lr = 9e-7
  n.denoise = True
  o = config.optim
  o.name = 'adam'
  o.learning_rate = 1e-4
  o.warmup_steps = 0
  o.decay = 'constant'
  o.grad_clip = 0.0
  o.eps = 1e-3
  o.ema_rate = 0.999
  t = config.train
  t.batch_size = 32
  t.num_steps = 80_000
  t.checkpoint_every = 5_000
  t.sample_every = 10_000
  s = config.sample
  s.method = 'langevin'
  s.batch_size = 1000 if 256 <= 64 else 100
  config.eval.num_samples = 50_000
  config.eval.fid_stats_num = 50_000
  return config
