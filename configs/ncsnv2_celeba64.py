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


def get_config():
  config = common.base_config()
  config.method = 'ncsn'
  config.data.name = 'celeb_a'
  config.data.image_size = 64
  config.data.num_channels = 3
  config.data.num_classes = 0
  config.data.random_flip = True
  common.set_refinenet_model(config, variant='ncsnv2', ngf=128)
  n = config.ncsn
  n.sigma_max = 90.0
  n.sigma_min = 0.01
  n.num_scales = 500
  n.n_steps_each = 5
  n.step_lr = 3.3e-6
  n.denoise = True
  o = config.optim
  o.name = 'adam'
  o.learning_rate = 1e-4
  o.warmup_steps = 0
  o.decay = 'constant'
  o.grad_clip = 0.0
  o.ema_rate = 0.999
  t = config.train
  t.batch_size = 128
  t.num_steps = 210_000
  t.checkpoint_every = 5_000
  t.sample_every = 10_000
  s = config.sample
  s.method = 'langevin'
  s.batch_size = 1000 if 64 <= 64 else 100
  config.eval.num_samples = 50_000
  config.eval.fid_stats_num = 50_000
  return config
