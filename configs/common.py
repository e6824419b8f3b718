"""Shared defaults for every experiment config.

Each experiment file (`configs/rin_*.py`, `configs/ncsnv2_*.py`) calls `base_config()` (or one of
the recipe builders below) and sets what differs. `get_config(arg)` of every file accepts
`'tiny'` (`--config=configs/rin_digits.py:tiny`): the same experiment with a network that compiles
and steps in seconds (tests, smoke runs).

    config.method            'diffusion' (Chen 2023 schedules on RIN) or 'ncsn' (NCSNv2 on RefineNet)
    config.seed              int; the RNG of step s is fold_in(PRNGKey(seed), s)
    config.data.*            data set, resolution, per-host pipeline options
    config.model.*           `name` + the network's constructor arguments, splatted into it
                             (`ncsn_rin.models.MODELS[name](**config.model, ...)`)
    config.diffusion.*       γ schedules, input scale b, prediction target, self-conditioning
    config.ncsn.*            σ_1, σ_L, L, T, ε (NCSNv2 techniques 1, 2, 4)
    config.optim.*           optimiser, schedule, clipping, weight decay, EMA
    config.train.*           global batch, steps, logging / sampling / checkpoint intervals
    config.sample.*          sampler used by --mode=sample and the training sample grids
    config.eval.*            FID evaluation (--mode=eval / fid_stats)
    config.sharding.*        parameter sharding and rematerialisation

Every value is checked by `ncsn_rin/validation.py` before anything runs.
"""

import dataclasses

import ml_collections

from ncsn_rin import models

# Constructor arguments that come from config.data / config.sharding, never from config.model.
_NOT_MODEL_FIELDS = ('parent', 'name', 'image_size', 'num_channels', 'num_classes', 'remat')


def model_config(name: str, **values) -> ml_collections.ConfigDict:
  """config.model for network `name`: its constructor defaults, overridden by `values`.

  A key that is not a constructor argument of `models.MODELS[name]` is an error, so a config can
  never set a field the network ignores.
  """
  fields = {f.name: f.default for f in dataclasses.fields(models.MODELS[name])
            if f.name not in _NOT_MODEL_FIELDS}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ValueError(f'{unknown} are not arguments of models.MODELS[{name!r}]; '
                     f'allowed: {sorted(fields)}')
  fields.update(values)
  fields['dtype'] = str(getattr(fields['dtype'], '__name__', fields['dtype']))
  return ml_collections.ConfigDict({'name': name, **fields})


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

  config.model = model_config('rin')

  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.train_schedule = 'cosine'
  diffusion.sample_schedule = 'cosine'
  diffusion.input_scale = 1.0
  diffusion.normalize_input = False
  diffusion.pred_target = 'eps'  # eps | x | v
  diffusion.self_cond_rate = 0.9  # per-example keep rate of the self-conditioning latents
  diffusion.label_dropout = 0.0  # > 0 trains the null class for classifier-free guidance

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
  optim.cosine_fraction = 1.0   # part of the cosine curve traversed by the last step (pix2seq 'cosine@f')
  optim.weight_decay = 0.0      # decoupled; never on biases or norm parameters
  optim.grad_clip = 0.0         # global-norm clip; 0 disables
  optim.beta1 = 0.9
  optim.beta2 = 0.999
  optim.eps = 1e-8
  optim.ema_rate = 0.9999

  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 128        # global, over all devices of all hosts
  train.num_steps = 100_000
  train.log_every = 100
  train.checkpoint_every = 5_000
  train.keep_every = 0          # > 0: also keep every checkpoint whose step is a multiple (sweeps)
  train.sample_every = 10_000   # 0: no sample grids during training
  train.max_to_keep = 3
  train.num_sample_grid = 64    # images in the training-time PNG grid
  train.profile_every = 0       # > 0: a profiler trace of a few steps every this many steps

  config.sample = sample = ml_collections.ConfigDict()
  sample.num_samples = 64
  sample.batch_size = 64
  sample.method = 'ddpm'        # ddpm | ddim | dpm_solver++ (diffusion); langevin (ncsn)
  sample.num_steps = 1000
  sample.time_difference = 0.0
  sample.ddpm_variance = 'large'
  sample.guidance_scale = 0.0   # classifier-free guidance weight (needs diffusion.label_dropout > 0)
  sample.clip_x0 = True

  config.eval = evaluation = ml_collections.ConfigDict()
  evaluation.num_samples = 50_000
  evaluation.batch_size = 500
  evaluation.ref_stats = ''     # path of the reference statistics .npz ('' = workdir/fid_stats.npz)
  evaluation.inception_weights = ''  # local default_1.pt or converted .npz ('' = cache)
  evaluation.fid_stats_num = 50_000  # images of the data set used for reference statistics
  evaluation.protocol = 'tfgan'  # tfgan (TTUR / TF-GAN; RIN papers) | pytorch_fid (NCSNv2) | clean
  evaluation.ref_protocol = ''  # protocol of ref_stats ('' = protocol); NCSNv2's CIFAR-10 used TTUR's (tfgan)
  evaluation.inception_batch = 0  # images per device per Inception call; 0: automatic (1 on CPU)
  evaluation.checkpoints = 'latest'  # latest | all | '10000,20000' (FID of each, one row each)
  evaluation.balanced_labels = False  # class labels of FID samples: uniform random (pix2seq) or cycled

  config.sharding = sharding = ml_collections.ConfigDict()
  sharding.fsdp = False         # shard parameters and optimiser state over the data axis
  sharding.remat = False        # jax.checkpoint each network block
  return config


def rin_recipe(config: ml_collections.ConfigDict, *, learning_rate: float, cosine_fraction: float,
               batch_size: int, num_steps: int) -> ml_collections.ConfigDict:
  """The official RIN training recipe (pix2seq `config_diffusion_{cifar10,imagenet64}.py` sweeps).

  LAMB (β2 0.999, ε 1e-8, weight decay 1e-2 except biases and norm parameters, trust ratio on the
  same parameters), no gradient clipping (pix2seq builds LAMB without `global_clipnorm`), 10k linear
  warm-up, then the `cosine@f` part of a cosine curve (ends at 0.5·(1 + cos(π·f)) of the peak),
  EMA 0.9999, latent self-conditioning masked per example with keep rate 0.9, ε-prediction.
  """
  config.method = 'diffusion'
  d = config.diffusion
  d.pred_target = 'eps'
  d.self_cond_rate = 0.9
  o = config.optim
  o.name = 'lamb'
  o.learning_rate = learning_rate
  o.warmup_steps = 10_000
  o.decay = 'cosine'
  o.cosine_fraction = cosine_fraction
  o.weight_decay = 1e-2
  o.grad_clip = 0.0
  o.beta1, o.beta2, o.eps = 0.9, 0.999, 1e-8
  o.ema_rate = 0.9999
  t = config.train
  t.batch_size = batch_size
  t.num_steps = num_steps
  s = config.sample
  s.method = 'ddpm'
  s.num_steps = 1000
  config.eval.num_samples = 50_000
  config.eval.fid_stats_num = 50_000
  config.eval.protocol = 'tfgan'
  return config


def imagenet_rin_config(*, image_size: int, model: dict, input_scale: float,
                        normalize_input: bool, learning_rate: float, cosine_fraction: float,
                        num_steps: int, batch_size: int = 1024) -> ml_collections.ConfigDict:
  """Class-conditional pixel-space ImageNet with RIN (Chen 2023, Sec. 4): `rin_recipe` with the
  linear schedule γ = 1 − t for training (pix2seq 'simple_linear'), input scale b, variance
  normalisation, cosine DDPM sampling (the compound strategy), bfloat16 compute."""
  config = base_config()
  config.data.name = 'imagenet2012'
  config.data.image_size = image_size
  config.data.num_classes = 1000
  config.model = model_config('rin', dtype='bfloat16', **model)
  d = config.diffusion
  d.train_schedule = 'linear'
  d.sample_schedule = 'cosine'
  d.input_scale = input_scale
  d.normalize_input = normalize_input
  rin_recipe(config, learning_rate=learning_rate, cosine_fraction=cosine_fraction,
             batch_size=batch_size, num_steps=num_steps)
  t = config.train
  t.checkpoint_every = 10_000
  t.keep_every = 50_000
  t.sample_every = 20_000
  config.sample.batch_size = 256
  config.sharding.fsdp = image_size >= 256
  config.sharding.remat = image_size >= 512
  return config


def ncsnv2_config(*, data_name: str, image_size: int, model: str, sigma_max: float,
                  num_scales: int, step_lr: float, batch_size: int, num_steps: int,
                  sigma_min: float = 0.01, n_steps_each: int = 5,
                  ngf: int = 128, adam_eps: float = 1e-8) -> ml_collections.ConfigDict:
  """An NCSNv2 experiment with the paper's training recipe (Song & Ermon 2020, App. B).

  The noise hyperparameters (σ1 = sigma_max, L = num_scales, ε = step_lr, T = n_steps_each) are the
  official ones for the paper's data sets; `--mode=tune_noise` derives them for new data
  (Techniques 1, 2, 4). Fixed here: unconditional RefineNet (Technique 3), Adam lr 1e-4 with no
  warm-up, decay or clipping, EMA 0.999 (Technique 5), annealed Langevin with the final denoising
  step; FID as the official code measured it: pytorch-fid's preprocessing on 10,000 samples per
  checkpoint (`ncsnv2/runners/ncsn_runner.py` fast_fid), the best of a checkpoint sweep.
  """
  config = base_config()
  config.method = 'ncsn'
  config.data.name = data_name
  config.data.image_size = image_size
  config.data.num_channels = 3
  config.data.num_classes = 0
  config.data.random_flip = True
  config.model = model_config(model, ngf=ngf)
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
  o.eps = adam_eps
  o.ema_rate = 0.999
  t = config.train
  t.batch_size = batch_size
  t.num_steps = num_steps
  t.checkpoint_every = 5_000
  t.keep_every = 5_000
  t.sample_every = 10_000
  s = config.sample
  s.method = 'langevin'
  s.batch_size = 1000 if image_size <= 64 else 100
  config.eval.num_samples = 10_000
  config.eval.fid_stats_num = 50_000
  config.eval.protocol = 'pytorch_fid'
  config.eval.checkpoints = 'all'
  return config


def shrink_to_tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same experiment with a network that compiles and steps in seconds (tests, quick modes).

  16² images; RIN: patch 4, one block of one layer, 8 latent slots of width 32, tape width 16,
  2 heads; RefineNet: ngf 8. Batch 16, no warm-up, 4 sampler steps (diffusion) or 4 levels × 2
  steps (NCSNv2), grids of 8.
  """
  config.data.image_size = 16
  m = config.model
  if m.name == 'rin':
    m.patch_size, m.num_blocks, m.num_layers_per_block = 4, 1, 1
    m.latent_slots, m.latent_dim, m.tape_dim, m.latent_heads, m.rw_heads = 8, 32, 16, 2, 2
  else:
    m.ngf = 8
  config.ncsn.num_scales, config.ncsn.n_steps_each = 4, 2
  config.optim.warmup_steps = 0
  config.train.batch_size = 16
  config.train.num_sample_grid = 8
  config.sample.num_steps = 4
  config.sample.num_samples = config.sample.batch_size = 8
  return config


def finish(config: ml_collections.ConfigDict, arg: str = '') -> ml_collections.ConfigDict:
  """Applies the `get_config(arg)` variant: '' as is, 'tiny' shrunk (`shrink_to_tiny`)."""
  if arg == 'tiny':
    return shrink_to_tiny(config)
  if arg:
    raise ValueError(f"unknown config variant {arg!r}: use 'configs/X.py' or 'configs/X.py:tiny'")
  return config
