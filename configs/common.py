"""Shared defaults for every experiment config.

Each experiment file (`configs/rin_*.py`, `configs/ncsnv2_*.py`) calls `base_config()` and then sets
what differs. The field names below are a contract: launch scripts, `main.py` and the tests read them.

    config.method            'diffusion' (Chen 2023 schedules on RIN) or 'ncsn' (NCSNv2 on RefineNet)
    config.seed              int; the RNG of step s is fold_in(PRNGKey(seed), s)
    config.data.*            data set, resolution, per-host pipeline options
    config.model.*           network name and typed constructor arguments
    config.diffusion.*       γ schedules, input scale b, prediction target, self-conditioning
    config.ncsn.*            σ_1, σ_L, L, T, ε (NCSNv2 techniques 1, 2, 4)
    config.optim.*           optimiser, schedule, clipping, weight decay, EMA
    config.train.*           global batch, steps, logging / sampling / checkpoint intervals
    config.sample.*          sampler used by --mode=sample and the training sample grids
    config.eval.*            FID evaluation (--mode=eval / fid_stats)
    config.sharding.*        mesh layout and parameter sharding
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Returns the defaults every experiment starts from (locked by main.py after overrides)."""
  config = ml_collections.ConfigDict()
  config.method = 'diffusion'
  config.seed = 0

  config.data = data = ml_collections.ConfigDict()
  data.name = 'digits'          # digits | cifar10 | celeb_a | imagenet2012 | lsun/church_outdoor | lsun/bedroom | image_folder
  data.image_size = 32
  data.num_channels = 3
  data.num_classes = 0          # > 0: class-conditional (labels fed to the model)
  data.split = 'train'
  data.data_dir = ''            # TFDS data_dir ('' = TFDS default)
  data.manual_dir = ''          # imagenet2012 / lsun manual download directory
  data.image_folder = ''        # root of an image folder (image_folder data set)
  data.random_flip = True
  data.shuffle_buffer = 10_000
  data.download = False         # never touch the network unless asked

  config.model = model = ml_collections.ConfigDict()
  model.name = 'rin'
  model.dtype = 'float32'       # compute dtype; parameters stay float32

  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.train_schedule = 'cosine'
  diffusion.sample_schedule = 'cosine'
  diffusion.input_scale = 1.0
  diffusion.normalize_input = False
  diffusion.pred_target = 'eps'  # eps | x | v
  diffusion.self_cond_rate = 0.9
  diffusion.label_dropout = 0.0  # > 0 enables classifier-free guidance at sampling

  config.ncsn = ncsn = ml_collections.ConfigDict()
  ncsn.sigma_max = 50.0
  ncsn.sigma_min = 0.01
  ncsn.num_scales = 232
  ncsn.n_steps_each = 5
  ncsn.step_lr = 6.2e-6
  ncsn.denoise = True
  ncsn.target_overlap = 0.5

  config.optim = optim = ml_collections.ConfigDict()
  optim.name = 'adam'           # adam | lamb
  optim.learning_rate = 1e-4
  optim.warmup_steps = 0
  optim.decay = 'constant'      # constant | cosine
  optim.weight_decay = 0.0
  optim.grad_clip = 1.0         # global-norm clip; 0 disables
  optim.beta1 = 0.9
  optim.beta2 = 0.999
  optim.eps = 1e-8
  optim.ema_rate = 0.9999

  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 128        # global, over all devices of all hosts
  train.num_steps = 100_000
  train.log_every = 100
  train.checkpoint_every = 5_000
  train.sample_every = 10_000
  train.max_to_keep = 3
  train.num_sample_grid = 64    # images in the training-time PNG grid

  config.sample = sample = ml_collections.ConfigDict()
  sample.num_samples = 64
  sample.batch_size = 64
  sample.method = 'ddpm'        # ddpm | ddim | dpm_solver++ (diffusion); langevin (ncsn)
  sample.num_steps = 1000
  sample.time_difference = 0.0
  sample.ddpm_variance = 'large'
  sample.guidance_scale = 0.0   # classifier-free guidance weight (needs label_dropout > 0 in training)
  sample.clip_x0 = True

  config.eval = evaluation = ml_collections.ConfigDict()
  evaluation.num_samples = 50_000
  evaluation.batch_size = 500
  evaluation.ref_stats = ''     # path of the reference statistics .npz ('' = workdir/fid_stats.npz)
  evaluation.inception_weights = ''  # local default_1.pt or converted .npz ('' = cache)
  evaluation.fid_stats_num = 50_000  # images of the data set used for reference statistics

  config.sharding = sharding = ml_collections.ConfigDict()
  sharding.fsdp = False         # shard parameters and optimiser state over the data axis
  sharding.remat = False        # jax.checkpoint each network block
  return config


def set_rin_model(config: ml_collections.ConfigDict, *, patch_size: int, num_blocks: int,
                  num_layers_per_block: int, num_latents: int, latent_dim: int, tape_dim: int,
                  latent_heads: int = 16, rw_heads: int = 16, latent_mlp_ratio: int = 4,
                  tape_mlp_ratio: int = 4, dropout: float = 0., drop_path: float = 0.,
                  time_scale: float = 1000., self_cond: bool = True, dtype: str = 'float32'):
  """Fills config.model with the RIN constructor arguments (see ncsn_rin/models/rin.py)."""
  m = config.model
  m.name = 'rin'
  m.dtype = dtype
  m.patch_size = patch_size
  m.num_blocks = num_blocks
  m.num_layers_per_block = num_layers_per_block
  m.num_latents = num_latents
  m.latent_dim = latent_dim
  m.tape_dim = tape_dim
  m.latent_heads = latent_heads
  m.rw_heads = rw_heads
  m.latent_mlp_ratio = latent_mlp_ratio
  m.tape_mlp_ratio = tape_mlp_ratio
  m.dropout = dropout
  m.drop_path = drop_path
  m.time_scale = time_scale
  m.self_cond = self_cond


def set_refinenet_model(config: ml_collections.ConfigDict, *, variant: str, ngf: int = 128,
                        dtype: str = 'float32'):
  """Fills config.model for NCSNv2 RefineNets ('ncsnv2', 'ncsnv2_deeper', 'ncsnv2_deepest')."""
  m = config.model
  m.name = 'refinenet'
  m.dtype = dtype
  m.variant = variant
  m.ngf = ngf


def imagenet_rin_config(*, image_size: int, patch_size: int, num_blocks: int,
                        num_layers_per_block: int, num_latents: int, latent_dim: int,
                        tape_dim: int, input_scale: float, normalize_input: bool,
                        train_schedule: str = 'linear', batch_size: int = 1024,
                        learning_rate: float = 1e-3, num_steps: int = 1_000_000):
  """Class-conditional pixel-space ImageNet RIN (Chen 2023 Sec. 4): LAMB, EMA 0.9999, DDPM."""
  config = base_config()
  config.method = 'diffusion'
  config.data.name = 'imagenet2012'
  config.data.image_size = image_size
  config.data.num_channels = 3
  config.data.num_classes = 1000
  config.data.random_flip = True
  set_rin_model(config, patch_size=patch_size, num_blocks=num_blocks,
                num_layers_per_block=num_layers_per_block, num_latents=num_latents,
                latent_dim=latent_dim, tape_dim=tape_dim, dtype='bfloat16')
  d = config.diffusion
  d.train_schedule = train_schedule
  d.sample_schedule = 'cosine'
  d.input_scale = input_scale
  d.normalize_input = normalize_input
  d.pred_target = 'eps'
  d.self_cond_rate = 0.9
  d.label_dropout = 0.0
  o = config.optim
  o.name = 'lamb'
  o.learning_rate = learning_rate
  o.warmup_steps = 10_000
  o.decay = 'cosine'
  o.weight_decay = 1e-2
  o.beta2 = 0.999
  o.grad_clip = 1.0
  o.ema_rate = 0.9999
  t = config.train
  t.batch_size = batch_size
  t.num_steps = num_steps
  t.log_every = 100
  t.checkpoint_every = 5_000
  t.sample_every = 20_000
  s = config.sample
  s.method = 'ddpm'
  s.num_steps = 1000
  s.batch_size = 256
  config.eval.num_samples = 50_000
  config.eval.batch_size = 500
  config.eval.fid_stats_num = 50_000
  config.sharding.fsdp = image_size >= 256
  config.sharding.remat = image_size >= 512
  return config


def ncsnv2_config(*, data_name: str, image_size: int, variant: str, sigma_max: float,
                  num_scales: int, step_lr: float, batch_size: int, num_steps: int,
                  sigma_min: float = 0.01, n_steps_each: int = 5,
                  ngf: int = 128, adam_eps: float = 1e-8) -> ml_collections.ConfigDict:
  """An NCSNv2 experiment with the paper's training recipe (Song & Ermon 2020, App. B).

  The noise hyperparameters (σ1 = sigma_max, L = num_scales, ε = step_lr, T = n_steps_each) are the
  official ones for the paper's data sets; `--mode=tune_noise` derives them for new data
  (Techniques 1, 2, 4). Fixed here: unconditional RefineNet (Technique 3), Adam lr 1e-4 with no
  warm-up, decay or clipping, EMA 0.999 (Technique 5), annealed Langevin with the final denoising
  step, 50k-sample FID.
  """
  config = base_config()
  config.method = 'ncsn'
  config.data.name = data_name
  config.data.image_size = image_size
  config.data.num_channels = 3
  config.data.num_classes = 0
  config.data.random_flip = True
  set_refinenet_model(config, variant=variant, ngf=ngf)
  n = config.ncsn
  n.sigma_max = sigma_max
  n.sigma_min = sigma_min
  n.num_scales = num_scales
  n.n_steps_each = n_steps_each
  n.step_lr = step_lr
  n.denoise = True
  o = config.optim
  o.name = 'adam'
  o.learning_rate = 1e-4
  o.warmup_steps = 0
  o.decay = 'constant'
  o.grad_clip = 0.0
  o.eps = adam_eps
  o.ema_rate = 0.999
  t = config.train
  t.batch_size = batch_size
  t.num_steps = num_steps
  t.checkpoint_every = 5_000
  t.sample_every = 10_000
  s = config.sample
  s.method = 'langevin'
  s.batch_size = 1000 if image_size <= 64 else 100
  config.eval.num_samples = 50_000
  config.eval.fid_stats_num = 50_000
  return config


def shrink_to_tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same experiment with a network that compiles and steps in seconds (tests, quick modes).

  16² images; RIN: patch 4, one block of one layer, 8 latents of width 32, tape width 16, 2 heads;
  RefineNet: ngf 8. No warm-up. Batch sizes and noise levels are left to the caller.
  """
  config.data.image_size = 16
  m = config.model
  if m.name == 'rin':
    m.patch_size, m.num_blocks, m.num_layers_per_block = 4, 1, 1
    m.num_latents, m.latent_dim, m.tape_dim, m.latent_heads, m.rw_heads = 8, 32, 16, 2, 2
  else:
    m.ngf = 8
  config.optim.warmup_steps = 0
  return config
