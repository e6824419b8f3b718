r"""NCSNv2 on the embedded digits data (scikit-learn's 1,797 real 8×8 digits, upsampled to 32²).

Command:
    python main.py --config=configs/ncsnv2_digits.py --workdir=workdirs/ncsnv2_digits
    python main.py --config=configs/ncsnv2_digits.py --workdir=workdirs/ncsnv2_digits --mode=tune_noise

Hardware: 2 CPU cores. The noise hyperparameters are the ones `--mode=tune_noise` derives for this
data (Techniques 1, 2, 4); see DERIVED below.
"""

from configs import common

MEASURED = 'filled in after the measured run'


def get_config():
  config = common.base_config()
  config.method = 'ncsn'
  config.seed = 0

  config.data.name = 'digits'
  config.data.image_size = 32
  config.data.num_channels = 1
  config.data.num_classes = 0
  config.data.random_flip = False

  m = config.model
  m.name = 'refinenet'
  m.variant = 'ncsnv2'
  m.ngf = 16

  n = config.ncsn
  n.sigma_max = 30.0
  n.sigma_min = 0.01
  n.num_scales = 100
  n.n_steps_each = 5
  n.step_lr = 1e-5
  n.denoise = True

  o = config.optim
  o.name = 'adam'
  o.learning_rate = 1e-3
  o.warmup_steps = 100
  o.decay = 'constant'
  o.grad_clip = 0.0
  o.ema_rate = 0.999

  t = config.train
  t.batch_size = 64
  t.num_steps = 3000
  t.log_every = 100
  t.checkpoint_every = 1000
  t.sample_every = 3000
  t.num_sample_grid = 64

  s = config.sample
  s.method = 'langevin'
  s.num_samples = 64
  s.batch_size = 64

  config.eval.num_samples = 1000
  config.eval.batch_size = 200
  config.eval.fid_stats_num = 1797
  return config
