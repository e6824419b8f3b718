"""The one gate for a config: every check of a config value, with its allowed range and its fix.

`validate(config, num_devices=..., num_processes=...)` runs before anything slow (no data read, no
network traced, nothing written) and raises `ConfigError` naming the field, the value, the allowed
range and the fix. Every function below the gate assumes a valid config. `UserError` is the base
of every error a user can fix (bad config, missing data, unusable workdir, incompatible
checkpoint): `main.py` prints those as one line and exits with status 2.
"""

import math
import numbers
from typing import Any, Iterable

import ml_collections

from ncsn_rin import datasets
from ncsn_rin import schedules
from ncsn_rin.metrics import inception

METHODS = ('diffusion', 'ncsn')
MODEL_METHOD = {'rin': 'diffusion', 'ncsnv2': 'ncsn', 'ncsnv2_deeper': 'ncsn',
                'ncsnv2_deepest': 'ncsn'}
# Resolution divisor of each network: RIN needs patches; a RefineNet halves the resolution at every
# non-dilated 'down' stage (1, 2 and 3 of them).
REFINENET_DIVISOR = {'ncsnv2': 2, 'ncsnv2_deeper': 4, 'ncsnv2_deepest': 8}
FID_PROTOCOLS = tuple(inception.PROTOCOLS)  # tfgan, pytorch_fid, clean


class UserError(Exception):
  """An error the user fixes by changing a flag, a file or the workdir (printed as one line)."""


class ConfigError(UserError, ValueError):
  """A config value outside its allowed range."""


def _require(ok: bool, field: str, value: Any, allowed: str, fix: str = ''):
  if not ok:
    fix = f'; {fix}' if fix else ''
    raise ConfigError(f'--config.{field}={value!r} is invalid: allowed {allowed}{fix}.')


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _int_at_least(config, field: str, low: int, fix: str = ''):
  value = _get(config, field)
  _require(_is_int(value) and value >= low, field, value, f'an integer >= {low}', fix)


def _number_in(config, field: str, low: float, high: float, *, low_open=False, high_open=False,
               fix: str = ''):
  """Checks a finite number in [low, high] (open ends as asked)."""
  value = _get(config, field)
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
  ok = ok and (value > low if low_open else value >= low)
  ok = ok and (value < high if high_open else value <= high)
  interval = f'{"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'
  _require(ok, field, value, f'a number in {interval}', fix)


def _one_of(config, field: str, choices: Iterable[str], fix: str = ''):
  value = _get(config, field)
  choices = tuple(choices)
  _require(value in choices, field, value, 'one of ' + ', '.join(map(repr, choices)), fix)


def _get(config, field: str):
  value = config
  for part in field.split('.'):
    value = value[part]
  return value


def _schedule(config, field: str):
  try:
    schedules.get_gamma_fn(_get(config, field))
  except ValueError as e:
    raise ConfigError(f'--config.{field}: {e}.') from None


# ------------------------------------------------------------------------------------------------

def _validate_data(config, num_processes: int):
  d = config.data
  _one_of(config, 'data.name', datasets.DATASET_NAMES)
  _int_at_least(config, 'data.image_size', 8)
  _require(d.num_channels in (1, 3), 'data.num_channels', d.num_channels, '1 or 3')
  _int_at_least(config, 'data.num_classes', 0, '0 = unconditional')
  _int_at_least(config, 'data.shuffle_buffer', 1)
  if d.name == 'image_folder':
    _require(bool(d.image_folder), 'data.image_folder', d.image_folder, 'a folder of images',
             'pass --config.data.image_folder=/path/to/images')
  b = config.train.batch_size
  _require(_is_int(b) and b >= 1 and b % num_processes == 0, 'train.batch_size', b,
           f'a positive multiple of the number of processes ({num_processes})')


def _validate_model(config):
  m, d = config.model, config.data
  _one_of(config, 'model.name', MODEL_METHOD)
  _require(MODEL_METHOD[m.name] == config.method, 'model.name', m.name,
           f'a {config.method} network: ' + ', '.join(
               repr(k) for k, v in MODEL_METHOD.items() if v == config.method))
  _one_of(config, 'model.dtype', ('float32', 'bfloat16', 'float16'),
          "use 'bfloat16' on TPU/GPU, 'float32' on CPU")
  if m.name == 'rin':
    _validate_rin(config)
  else:
    k = REFINENET_DIVISOR[m.name]
    _require(d.image_size % k == 0, 'data.image_size', d.image_size,
             f'a multiple of {k} for model.name={m.name!r} (it halves the resolution '
             f'{int(math.log2(k))} time(s))')
    _int_at_least(config, 'model.ngf', 1, 'the paper uses 128')


def _validate_rin(config):
  m, d = config.model, config.data
  p = m.patch_size
  _require(_is_int(p) and p >= 1 and d.image_size % p == 0, 'model.patch_size', p,
           f'a positive divisor of config.data.image_size={d.image_size}')
  for field in ('num_blocks', 'num_layers_per_block', 'latent_heads', 'rw_heads'):
    _int_at_least(config, f'model.{field}', 1)
  _require(_is_int(m.latent_dim) and m.latent_dim % 8 == 0 and m.latent_dim > 0,
           'model.latent_dim', m.latent_dim,
           'a positive multiple of 8 (the time token has latent_dim/4 sin/cos features)')
  _require(m.latent_dim % m.latent_heads == 0, 'model.latent_heads', m.latent_heads,
           f'a divisor of model.latent_dim={m.latent_dim}')
  rw_width = min(m.latent_dim, m.tape_dim)
  _require(rw_width % m.rw_heads == 0, 'model.rw_heads', m.rw_heads,
           f'a divisor of min(latent_dim, tape_dim)={rw_width}')
  tokens = 2 if d.num_classes > 0 else 1
  _require(_is_int(m.latent_slots) and m.latent_slots > tokens, 'model.latent_slots',
           m.latent_slots, f'an integer > {tokens}: it counts the time'
           f'{" and class tokens" if tokens == 2 else " token"} too (pix2seq convention)')
  _int_at_least(config, 'model.latent_mlp_ratio', 1)
  _int_at_least(config, 'model.tape_mlp_ratio', 0)
  _number_in(config, 'model.dropout', 0., 1., high_open=True)
  _number_in(config, 'model.drop_path', 0., 1., high_open=True)
  _number_in(config, 'model.time_scale', 0., math.inf, low_open=True, high_open=True)


def _validate_diffusion(config):
  _schedule(config, 'diffusion.train_schedule')
  _schedule(config, 'diffusion.sample_schedule')
  _number_in(config, 'diffusion.input_scale', 0., math.inf, low_open=True, high_open=True,
             fix='b = 1 is no scaling; Chen 2023 uses e.g. 0.5 at 256², 0.1 at 1024²')
  _one_of(config, 'diffusion.pred_target', ('eps', 'x', 'v'))
  _number_in(config, 'diffusion.self_cond_rate', 0., 1.)
  _number_in(config, 'diffusion.label_dropout', 0., 1., high_open=True)
  s, d = config.sample, config.diffusion
  _one_of(config, 'sample.method', ('ddpm', 'ddim', 'dpm_solver++'))
  _int_at_least(config, 'sample.num_steps', 1)
  _number_in(config, 'sample.time_difference', 0., math.inf, high_open=True,
             fix='0 (none) or e.g. 0.5 steps')
  _one_of(config, 'sample.ddpm_variance', ('large', 'small'))
  _number_in(config, 'sample.guidance_scale', 0., math.inf, high_open=True)
  if s.guidance_scale != 0:
    _require(config.data.num_classes > 0 and d.label_dropout > 0, 'sample.guidance_scale',
             s.guidance_scale, '0 unless the model was trained for guidance: classifier-free '
             f'guidance needs config.data.num_classes > 0 (now {config.data.num_classes}) and '
             f'config.diffusion.label_dropout > 0 (now {d.label_dropout}), else the null class is '
             'untrained', 'set --config.sample.guidance_scale=0 or train with '
             '--config.diffusion.label_dropout=0.1')


def _validate_ncsn(config):
  n = config.ncsn
  _number_in(config, 'ncsn.sigma_min', 0., math.inf, low_open=True, high_open=True,
             fix='NCSNv2 uses 0.01 for images in [0, 1]')
  _number_in(config, 'ncsn.sigma_max', n.sigma_min, math.inf, low_open=True, high_open=True,
             fix='σ1 is the largest pairwise distance of the data (Technique 1): '
             'run --mode=tune_noise')
  _int_at_least(config, 'ncsn.num_scales', 2, 'L from Technique 2: run --mode=tune_noise')
  _int_at_least(config, 'ncsn.n_steps_each', 1, 'NCSNv2 uses T = 5')
  _number_in(config, 'ncsn.step_lr', 0., 2. * n.sigma_min ** 2, low_open=True, high_open=True,
             fix='ε < 2·σ_L² keeps the Langevin iteration stable; ε from Technique 4: run '
             '--mode=tune_noise')
  _number_in(config, 'ncsn.target_overlap', 0., 0.9973, low_open=True, high_open=True,
             fix='NCSNv2 Technique 2 uses 0.5; even γ → 1 only reaches Φ(3) − Φ(−3) = 0.9973')
  _require(config.data.num_classes == 0, 'data.num_classes', config.data.num_classes,
           '0 for NCSNv2 (an unconditional score network, Technique 3)')
  _require(config.sample.method == 'langevin', 'sample.method', config.sample.method,
           "'langevin' for NCSNv2")


def _validate_optim(config):
  _one_of(config, 'optim.name', ('adam', 'lamb'))
  _number_in(config, 'optim.learning_rate', 0., math.inf, low_open=True, high_open=True)
  _int_at_least(config, 'optim.warmup_steps', 0)
  _one_of(config, 'optim.decay', ('constant', 'cosine'))
  _number_in(config, 'optim.cosine_fraction', 0., 1., low_open=True,
             fix='1 decays to 0 at the last step; pix2seq RIN uses 0.8 (CIFAR-10), 0.7 (ImageNet)')
  _number_in(config, 'optim.weight_decay', 0., math.inf, high_open=True)
  _number_in(config, 'optim.grad_clip', 0., math.inf, high_open=True, fix='0 disables clipping')
  _number_in(config, 'optim.ema_rate', 0., 1., high_open=True)


def _validate_train(config, num_devices: int):
  t = config.train
  for field in ('num_steps', 'log_every', 'checkpoint_every', 'max_to_keep', 'num_sample_grid'):
    _int_at_least(config, f'train.{field}', 1)
  for field in ('sample_every', 'keep_every', 'profile_every'):
    _int_at_least(config, f'train.{field}', 0, '0 disables it')
  b = t.batch_size
  lower = max(num_devices, b // num_devices * num_devices)
  _require(b % num_devices == 0, 'train.batch_size', b,
           f'a positive multiple of the number of devices ({num_devices})',
           f'use --config.train.batch_size={lower} or {lower + num_devices}')


def _validate_eval(config, num_processes: int):
  _int_at_least(config, 'sample.num_samples', 1)
  _int_at_least(config, 'sample.batch_size', 1)
  _int_at_least(config, 'eval.num_samples', 2, 'FID needs a covariance')
  _int_at_least(config, 'eval.batch_size', 1)
  _require(config.eval.batch_size % num_processes == 0, 'eval.batch_size', config.eval.batch_size,
           f'a multiple of the number of processes ({num_processes})')
  _int_at_least(config, 'eval.fid_stats_num', 2, 'FID needs a covariance')
  _int_at_least(config, 'eval.inception_batch', 0,
                '0 = automatic (1 on CPU, a 2 GiB budget on GPU/TPU) or images per device per call')
  _one_of(config, 'eval.protocol', FID_PROTOCOLS,
          "'tfgan' (TTUR/TF-GAN, the RIN papers), 'pytorch_fid' (NCSNv2), 'clean' (clean-fid)")
  _one_of(config, 'eval.ref_protocol', ('',) + FID_PROTOCOLS, "'' = the same as eval.protocol")
  checkpoint_steps(config.eval.checkpoints)


def checkpoint_steps(spec) -> Any:
  """Parses `config.eval.checkpoints`: 'latest', 'all', or steps '10000,20000' -> list of ints."""
  if spec in ('latest', 'all'):
    return spec
  try:
    steps = [int(s) for s in str(spec).split(',')]
  except ValueError:
    steps = []
  _require(bool(steps) and all(s >= 0 for s in steps), 'eval.checkpoints', spec,
           "'latest', 'all' or comma-separated checkpoint steps like '10000,20000'")
  return steps


def validate(config: ml_collections.ConfigDict, *, num_devices: int = 1,
             num_processes: int = 1) -> None:
  """Checks every field of `config`; raises ConfigError on the first bad value (see module doc)."""
  _one_of(config, 'method', METHODS)
  _validate_data(config, num_processes)
  _validate_model(config)
  if config.method == 'diffusion':
    _validate_diffusion(config)
  else:
    _validate_ncsn(config)
  _validate_optim(config)
  _validate_train(config, num_devices)
  _validate_eval(config, num_processes)
