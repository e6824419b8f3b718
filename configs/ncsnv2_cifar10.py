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


def get_config():
  config = common.base_config()
  config.method = 'ncsn'
  config.data.name = 'cifar10'
  config.data.image_size = 32
  config.data.num_channels = 3
  config.data.num_classes = 0
  config.data.random_flip = True
  common.set_refinenet_model(config, variant='ncsnv2', ngf=128)
  n = config.ncsn
  n.sigma_max = 50.0
  n.sigma_min = 0.01
  n.num_scales = 232
  n.n_steps_each = 5
  n.step_lr = 6.2e-6
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
  t.num_steps = 300_000
  t.checkpoint_every = 5_000
  t.sample_every = 10_000
  s = config.sample
  s.method = 'langevin'
  s.batch_size = 1000 if 32 <= 64 else 100
  config.eval.num_samples = 50_000
  config.eval.fid_stats_num = 50_000
  return config
