"""What is benchmarked: the configs/ experiments at their own shapes, with a CPU-sized batch.

Each case is (name, config, batch): the network and data shape are exactly the experiment's
(`configs/<name>.py`); only the batch (and, on CPU, the compute dtype) differ from the paper run.
`--quick` replaces every case by a tiny network with the same code path.
"""

from typing import List, NamedTuple, Optional

import jax
import ml_collections

from configs import common
from configs import ncsnv2_cifar10
from configs import ncsnv2_digits
from configs import rin_cifar10
from configs import rin_digits
from configs import rin_imagenet64


class Case(NamedTuple):
  name: str                       # shown in the table, e.g. 'rin_cifar10 (batch 8)'
  config: ml_collections.ConfigDict
  batch_size: int


def _with_batch(config, batch_size: int, keep_dtype: bool):
  config.train.batch_size = batch_size
  # The reference peak is a float32 matmul, and bfloat16 is emulated (slow) on CPUs: on CPU the
  # paper configs' bfloat16 compute is replaced by float32 unless --keep_dtype.
  if not keep_dtype and jax.devices()[0].platform == 'cpu':
    config.model.dtype = 'float32'
  return config


def tiny_rin():
  """configs/rin_digits.py shrunk to a RIN that compiles and steps in seconds (quick mode)."""
  return common.shrink_to_tiny(rin_digits.get_config())


def tiny_refinenet():
  """configs/ncsnv2_digits.py shrunk to RefineNet ngf 8 at 16² (quick mode)."""
  return common.shrink_to_tiny(ncsnv2_digits.get_config())


def train_cases(quick: bool, keep_dtype: bool = False,
                batch_size: Optional[int] = None) -> List[Case]:
  """Train-step cases: the digits demos at their batch, the paper shapes at a CPU-sized batch
  (every case at `batch_size` if given)."""
  if quick:
    b = batch_size or 8
    return [Case('rin tiny (quick)', _with_batch(tiny_rin(), b, keep_dtype), b),
            Case('refinenet tiny (quick)', _with_batch(tiny_refinenet(), b, keep_dtype), b)]
  specs = [('rin_digits', rin_digits, 64), ('ncsnv2_digits', ncsnv2_digits, 64),
           ('rin_cifar10', rin_cifar10, 8), ('rin_imagenet64', rin_imagenet64, 4),
           ('ncsnv2_cifar10', ncsnv2_cifar10, 4)]
  cases = []
  for name, module, batch in specs:
    batch = batch_size or batch
    config = _with_batch(module.get_config(), batch, keep_dtype)
    cases.append(Case(f'{name} (batch {batch})', config, batch))
  return cases


class SamplerCase(NamedTuple):
  name: str
  config: ml_collections.ConfigDict
  batch_size: int
  methods: tuple                 # diffusion samplers, or ('langevin',)
  num_steps: int                 # diffusion steps N, or Langevin levels L (× n_steps_each)


def _langevin_levels(config, num_scales: int, n_steps_each: int):
  config.ncsn.num_scales = num_scales
  config.ncsn.n_steps_each = n_steps_each
  return config


def sampler_cases(quick: bool, keep_dtype: bool = False) -> List[SamplerCase]:
  """Sampler-overhead cases: each sampler's step time over one network evaluation."""
  diffusion = ('ddpm', 'ddim', 'dpm_solver++')
  if quick:
    return [SamplerCase('rin tiny (quick)', _with_batch(tiny_rin(), 8, keep_dtype), 8,
                        diffusion, 4),
            SamplerCase('refinenet tiny (quick)',
                        _langevin_levels(_with_batch(tiny_refinenet(), 8, keep_dtype), 2, 2), 8,
                        ('langevin',), 2)]
  return [
      SamplerCase('rin_digits (batch 64)', _with_batch(rin_digits.get_config(), 64, keep_dtype),
                  64, diffusion, 100),
      SamplerCase('rin_cifar10 (batch 8)', _with_batch(rin_cifar10.get_config(), 8, keep_dtype),
                  8, diffusion, 10),
      SamplerCase('ncsnv2_digits (batch 64)',
                  _langevin_levels(_with_batch(ncsnv2_digits.get_config(), 64, keep_dtype), 20, 5),
                  64, ('langevin',), 20),
  ]
