r"""RIN on CIFAR-10 32² (Jabri et al. 2022 recipe; Chen 2023 sigmoid training schedule).

Command:
    python main.py --config=configs/rin_cifar10.py --workdir=/path/to/rin_cifar10
    python main.py --config=configs/rin_cifar10.py --workdir=/path/to/rin_cifar10 --mode=fid_stats
    python main.py --config=configs/rin_cifar10.py --workdir=/path/to/rin_cifar10 --mode=eval

Hardware: one TPU v3-8 / 8 GPUs class machine (batch 256, 150k steps). Parameters: 31.0M
(`ncsn_rin.models.param_count`; the RIN paper reports 31M). Expected: FID ≈ 1.8 (RIN paper,
unconditional, 50k samples vs the training set); not reproduced here.
Training schedule `sigmoid@-3,3,0.9`, sampling DDPM 1000 steps with `cosine` (compound strategy).
Unconditional; set --config.data.num_classes=10 for the class-conditional variant of the official code.
"""

from configs import common


def get_config():
  config = common.base_config()
  config.method = 'diffusion'
  config.data.name = 'cifar10'
  config.data.image_size = 32
  config.data.num_channels = 3
  config.data.num_classes = 0
  config.data.random_flip = True
  common.set_rin_model(config, patch_size=2, num_blocks=3, num_layers_per_block=2,
                       num_latents=128, latent_dim=512, tape_dim=256, latent_heads=16,
                       rw_heads=8, latent_mlp_ratio=4, tape_mlp_ratio=2, dropout=0.1,
                       drop_path=0.1)
  d = config.diffusion
  d.train_schedule = 'sigmoid@-3,3,0.9'
  d.sample_schedule = 'cosine'
  d.input_scale = 1.0
  d.normalize_input = False
  d.pred_target = 'eps'
  d.self_cond_rate = 0.9
  o = config.optim
  o.name = 'lamb'
  o.learning_rate = 3e-3
  o.warmup_steps = 10_000
  o.decay = 'cosine'
  o.weight_decay = 1e-2
  o.beta2 = 0.999
  o.ema_rate = 0.9999
  t = config.train
  t.batch_size = 256
  t.num_steps = 150_000
  t.checkpoint_every = 10_000
  t.sample_every = 10_000
  s = config.sample
  s.method = 'ddpm'
  s.num_steps = 1000
  s.batch_size = 500
  config.eval.num_samples = 50_000
  config.eval.fid_stats_num = 50_000
  return config
