"""The non-training modes: sample, eval (FID), fid_stats (reference statistics), tune_noise.

`--mode=eval` is resumable: every `_PROGRESS_EVERY` batches it saves the running Inception
statistics (float64 sums) and the next batch index to `eval_progress_step<N>.npz` (atomic write);
batch i is generated from fold_in(key, i), so a killed run resumes where it stopped and gives the
same FID as an uninterrupted one.
"""

import os
import time
from typing import Any, Dict

from absl import logging
import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from ncsn_rin import checkpoints
from ncsn_rin import input_pipeline
from ncsn_rin import noise_scales
from ncsn_rin import sampling
from ncsn_rin import summaries
from ncsn_rin import train as train_lib

_PROGRESS_EVERY = 5


def _show_progress() -> bool:
  return jax.process_index() == 0


def restore_for_inference(config: ml_collections.ConfigDict, workdir: str):
  """(experiment, EMA params, step) from the workdir's latest restorable checkpoint."""
  exp = train_lib.Experiment(config)
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  manager = checkpoints.make_manager(ckpt_dir, max_to_keep=config.train.max_to_keep)
  state, step = checkpoints.restore_latest(manager, exp.abstract_sharded_state)
  if state is None:
    raise FileNotFoundError(f'no checkpoint in {ckpt_dir}; train first with '
                            f'`python main.py --mode=train --workdir={workdir} --config=...`.')
  logging.info('restored EMA parameters of step %d from %s', step, ckpt_dir)
  return exp, state['ema_params'], step


def sample_to_workdir(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Writes `config.sample.num_samples` images as samples_<step>.png (grid) and .npz (uint8)."""
  exp, params, step = restore_for_inference(config, workdir)
  n = config.sample.num_samples
  batch = sampling.device_batch_size(min(config.sample.batch_size, n), exp.mesh)
  sample_fn = sampling.make_sample_fn(config, exp.model, exp.mesh, batch)
  key = jax.random.PRNGKey(config.seed + 2)
  images = []
  t0 = time.time()
  batches = sampling.generate(sample_fn, params, key, n, batch,
                              num_classes=config.data.num_classes)
  for chunk in tqdm(batches, total=-(-n // batch), desc='sampling', disable=not _show_progress()):
    images.append(chunk)
  images = np.concatenate(images)[:n]
  seconds = time.time() - t0
  result = {'step': step, 'num_samples': int(images.shape[0]), 'seconds': seconds}
  if jax.process_index() == 0:
    base = os.path.join(workdir, f'samples_{config.sample.method}_step{step:07d}')
    summaries.save_png(base + '.png', summaries.image_grid(images))
    summaries.save_npz(base + '.npz', images=images)
    result.update(png=base + '.png', npz=base + '.npz')
  return result


# ----------------------------------------------------------------------------------------------
# FID
# ----------------------------------------------------------------------------------------------

def _fid_modules():
  from ncsn_rin.metrics import fid  # pylint: disable=g-import-not-at-top
  from ncsn_rin.metrics import inception  # pylint: disable=g-import-not-at-top
  return fid, inception


def default_stats_path(config: ml_collections.ConfigDict, workdir: str) -> str:
  return config.eval.ref_stats or os.path.join(workdir, 'fid_stats.npz')


def compute_reference_statistics(config: ml_collections.ConfigDict,
                                 workdir: str) -> Dict[str, Any]:
  """Inception pool3 statistics of the first `config.eval.fid_stats_num` training images."""
  fid, inception = _fid_modules()
  path = default_stats_path(config, workdir)
  num = config.eval.fid_stats_num
  feature_fn = inception.make_feature_fn(
      inception.load_inception_params(config.eval.inception_weights or None))
  stats = fid.RunningStatistics(2048)
  batches = input_pipeline.make_eval_iterator(config, num_examples=num,
                                              batch_size=config.eval.batch_size)
  total = -(-num // config.eval.batch_size)
  for batch in tqdm(batches, total=total, desc='fid_stats', disable=not _show_progress()):
    stats.update(np.asarray(feature_fn(batch['image'])))
  mu, sigma = stats.mean_and_cov()
  description = (f'{config.data.name} split={config.data.split} first {stats.count} images at '
                 f'{config.data.image_size}px (uint8), TF1 bilinear resize to 299, '
                 'Inception pool3 (inception-2015-12-05)')
  if jax.process_index() == 0:
    fid.save_statistics(path, mu, sigma, stats.count, description)
  return {'path': path, 'n': int(stats.count), 'description': description}


def evaluate_fid(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Generates `config.eval.num_samples` images with the EMA params and reports FID."""
  fid, inception = _fid_modules()
  ref_mu, ref_sigma, ref_n, _ = fid.load_statistics(default_stats_path(config, workdir))
  exp, params, step = restore_for_inference(config, workdir)
  n = config.eval.num_samples
  batch = sampling.device_batch_size(config.eval.batch_size, exp.mesh)
  sample_fn = sampling.make_sample_fn(config, exp.model, exp.mesh, batch)
  feature_fn = inception.make_feature_fn(
      inception.load_inception_params(config.eval.inception_weights or None), mesh=exp.mesh)
  progress_path = os.path.join(workdir, f'eval_progress_step{step:07d}.npz')
  stats, start_batch = _load_eval_progress(progress_path, fid)
  key = jax.random.PRNGKey(config.seed + 3)
  num_batches = -(-n // batch)
  batches = sampling.generate(sample_fn, params, key, n, batch, start_batch=start_batch,
                              num_classes=config.data.num_classes)
  for i, images in enumerate(tqdm(batches, total=num_batches, initial=start_batch, desc='eval',
                                  disable=not _show_progress()), start=start_batch):
    stats.update(np.asarray(feature_fn(images)))
    if (i + 1) % _PROGRESS_EVERY == 0 and jax.process_index() == 0:
      _save_eval_progress(progress_path, stats, i + 1)
  mu, sigma = stats.mean_and_cov()
  score = float(fid.frechet_distance(mu, sigma, ref_mu, ref_sigma))
  s = config.sample
  result = {'fid': score, 'num_samples': int(stats.count), 'reference_n': int(ref_n),
            'checkpoint_step': int(step), 'sampler': s.method,
            'sampler_steps': s.num_steps if config.method == 'diffusion' else
            config.ncsn.num_scales * config.ncsn.n_steps_each,
            'sample_schedule': config.diffusion.sample_schedule
            if config.method == 'diffusion' else None,
            'guidance_scale': s.guidance_scale}
  if jax.process_index() == 0:
    summaries.save_json(os.path.join(workdir, 'eval_results.json'), result)
    writer = summaries.SummaryWriter(os.path.join(workdir, 'tensorboard'))
    writer.scalars(step, {'fid': score})
    writer.close()
  logging.info('FID %.3f over %d samples (checkpoint step %d)', score, stats.count, step)
  return result


def _save_eval_progress(path: str, stats, next_batch: int):
  summaries.save_npz(path, next_batch=next_batch, **stats.state_dict())


def _load_eval_progress(path: str, fid):
  stats = fid.RunningStatistics(2048)
  if not os.path.exists(path):
    return stats, 0
  with np.load(path) as f:
    state = {k: f[k] for k in f.files}
  next_batch = int(state.pop('next_batch'))
  stats.load_state_dict(state)
  logging.info('resuming eval at batch %d (%d samples done) from %s', next_batch, stats.count,
               path)
  return stats, next_batch


# ----------------------------------------------------------------------------------------------
# NCSNv2 noise hyperparameters from data
# ----------------------------------------------------------------------------------------------

def tune_noise(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Techniques 1, 2, 4: σ1 from the data, L from the overlap, ε from Proposition 3; prints them."""
  num, _ = input_pipeline.dataset_info(config)
  batches = input_pipeline.make_eval_iterator(config, num_examples=num,
                                              batch_size=config.eval.batch_size)
  total = -(-num // config.eval.batch_size)
  data = (train_lib.images_to_unit(b['image']).reshape(len(b['image']), -1)
          for b in tqdm(batches, total=total, desc='tune_noise', disable=not _show_progress()))
  max_dist = float(noise_scales.max_pairwise_distance(data))
  dim = config.data.image_size ** 2 * config.data.num_channels
  derived = noise_scales.derive_noise_config(
      max_dist, dim, config.ncsn.sigma_min, config.ncsn.n_steps_each,
      target_overlap=config.ncsn.target_overlap)
  snippet = noise_scales.format_config_snippet(derived)
  print(f'\nNCSNv2 noise hyperparameters derived from {num} images of {config.data.name} '
        f'(D={dim}):\n{snippet}\n')
  if jax.process_index() == 0:
    summaries.save_json(os.path.join(workdir, 'tune_noise.json'),
                        {k: float(v) if isinstance(v, (float, np.floating)) else v
                         for k, v in derived.items()})
  return {k: (float(v) if np.ndim(v) == 0 else v) for k, v in derived.items()}
