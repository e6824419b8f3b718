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


def get_config():
  config = common.base_config()
  config.method = 'ncsn'
  config.data.name = 'lsun/church_outdoor'
  config.data.image_size = 96
  config.data.num_channels = 3
  config.data.num_classes = 0
  config.data.random_flip = True
  common.set_refinenet_model(config, variant='ncsnv2_deeper', ngf=128)
  n = config.ncsn
  n.sigma_max = 140.0
  n.sigma_min = 0.01
  n.num_scales = 788
  n.n_steps_each = 4
  n.step_lr = 4.9e-6
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
  t.num_steps = 200_000
  t.checkpoint_every = 5_000
  t.sample_every = 10_000
  s = config.sample
  s.method = 'langevin'
  s.batch_size = 1000 if 96 <= 64 else 100
  config.eval.num_samples = 50_000
  config.eval.fid_stats_num = 50_000
  return config
