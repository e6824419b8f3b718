"""The non-training modes: sample, eval (FID of one or many checkpoints), fid_stats, tune_noise.

Pod scale: samples stay global `jax.Array`s from the sampler into the sharded Inception; only the
2048-d features cross hosts (every host gets all of them and accumulates the same float64
statistics; process 0 writes). `fid_stats` reads each host's share of the data. Results therefore
do not depend on the number of hosts.

`--mode=eval` scores `config.eval.checkpoints` ('latest', 'all', or listed steps) and appends one
row per checkpoint to eval_results.json (never overwriting a row), TensorBoard, and a plot
fid_vs_step.png; the best row is logged. It is resumable at two levels: finished rows (same
checkpoint and settings) are skipped, and inside a row every `_PROGRESS_EVERY` batches the running
statistics are saved to eval_progress_step<N>_<settings>.npz (batch i is generated from
fold_in(key, i), so a killed run gives the same FID as an uninterrupted one).
"""

import functools
import hashlib
import io
import json
import os
import time
from typing import Any, Dict, List

from absl import logging
from clu import metric_writers
import jax
from matplotlib import figure
import ml_collections
import numpy as np
from tqdm import tqdm

from ncsn_rin import checkpoints
from ncsn_rin import files
from ncsn_rin import images
from ncsn_rin import input_pipeline
from ncsn_rin import noise_scales
from ncsn_rin import sampling
from ncsn_rin import sharding
from ncsn_rin import validation
from ncsn_rin.metrics import fid
from ncsn_rin.metrics import inception

_PROGRESS_EVERY = 5
RESULTS_FILE = 'eval_results.json'


def _is_main() -> bool:
  return jax.process_index() == 0


def restore_ema_params(exp, manager, step: int):
  """EMA parameters of checkpoint `step` (what sampling uses, as pix2seq's `denoiser_ema`)."""
  state = checkpoints.restore(manager, step, exp.abstract_sharded_state)
  logging.info('restored the EMA parameters of step %d from %s', step, manager.directory)
  return state['ema_params']


def sample_to_workdir(exp, workdir: str) -> Dict[str, Any]:
  """Writes `config.sample.num_samples` images of the latest checkpoint as a PNG grid and an .npz
  (uint8 images [N, H, W, C] and, class-conditional, their int32 labels [N])."""
  config = exp.config
  manager = exp.checkpoint_manager(workdir)
  state, step = checkpoints.restore_latest(manager, exp.abstract_sharded_state)
  n = config.sample.num_samples
  sample_fn = exp.sample_fn(min(config.sample.batch_size, n))
  batch = sampling.device_batch_size(min(config.sample.batch_size, n), exp.mesh.devices.size)
  chunks, labels, start = [], [], time.time()
  batches = sampling.generate(sample_fn, state['ema_params'], jax.random.PRNGKey(config.seed + 2),
                              n, batch)
  for _, samples, lbls in tqdm(batches, total=-(-n // batch), desc='sampling',
                               disable=not _is_main()):
    chunks.append(sharding.to_host(samples))
    labels.append(sharding.to_host(lbls))
  samples = np.concatenate(chunks)[:n]
  result = {'step': step, 'num_samples': n, 'seconds': time.time() - start,
            'sample_config': config.sample.to_dict()}
  if _is_main():
    base = os.path.join(workdir, f'samples_{config.sample.method}_step{step:07d}')
    arrays = {'images': samples}
    if labels[0] is not None:
      arrays['labels'] = np.concatenate(labels)[:n]
    result['npz'] = files.write_npz(base + '.npz', **arrays)
    result['png'] = images.save_png(base + '.png',
                                    images.sample_grid(samples, config.data.num_classes))
    logging.info('wrote %s and %s', result['png'], result['npz'])
  return result


# FID --------------------------------------------------------------------------------------------

def feature_fn_for(config, mesh):
  """The sharded Inception feature function of `config.eval` (protocol, chunk, weights) on `mesh`;
  built and compiled once per process for each combination (fid_stats, eval and sweeps share it)."""
  e = config.eval
  return _cached_feature_fn(e.inception_weights or None, e.protocol, e.inception_batch or None,
                            mesh)


@functools.lru_cache(maxsize=4)
def _cached_feature_fn(weights, protocol, chunk_size, mesh):
  params = inception.load_inception_params(weights)
  return inception.make_feature_fn(params, mesh, protocol=protocol, chunk_size=chunk_size)


def default_stats_path(config: ml_collections.ConfigDict, workdir: str) -> str:
  return config.eval.ref_stats or os.path.join(workdir, 'fid_stats.npz')


def compute_reference_statistics(config: ml_collections.ConfigDict, workdir: str,
                                 mesh=None) -> Dict[str, Any]:
  """Inception statistics of the first `config.eval.fid_stats_num` images of the data split.

  Each host reads its contiguous share (zero-padded to equal batches, with a mask), the batch is
  one global array, and every host accumulates the features of all real rows.
  """
  mesh = mesh or sharding.make_mesh()
  e = config.eval
  feature_fn = feature_fn_for(config, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  stats = fid.RunningStatistics(inception.FEATURE_DIM)
  batches = input_pipeline.make_eval_iterator(config, num_examples=e.fid_stats_num,
                                              batch_size=e.batch_size, pad=True)
  total = -(-e.fid_stats_num // e.batch_size)
  for local in tqdm(batches, total=total, desc='fid_stats', disable=not _is_main()):
    batch = input_pipeline.global_batch(local, batch_sharding)
    mask = np.asarray(sharding.to_host(batch['mask']), bool)
    stats.update(feature_fn(batch['image'])[mask])
  path = default_stats_path(config, workdir)
  description = (f'{config.data.name} split={config.data.split} first {stats.count} images at '
                 f'{config.data.image_size}px, FID protocol {e.protocol}')
  if _is_main():
    mu, sigma = stats.mean_and_cov()
    fid.save_statistics(path, mu, sigma, stats.count, description, protocol=e.protocol)
    logging.info('wrote %s (%d images)', path, stats.count)
  return {'path': path, 'n': int(stats.count), 'description': description,
          'protocol': e.protocol}


def _row_settings(config) -> Dict[str, Any]:
  """What a FID row depends on besides the checkpoint (rows with equal settings are comparable)."""
  s, e = config.sample, config.eval
  settings = {'num_samples': e.num_samples, 'protocol': e.protocol, 'seed': config.seed,
              'ref_protocol': e.ref_protocol or e.protocol,
              'reference': e.ref_stats or 'fid_stats.npz', 'balanced_labels': e.balanced_labels}
  if config.method == 'diffusion':
    settings.update(sampler=s.method, sampler_steps=s.num_steps,
                    sample_schedule=config.diffusion.sample_schedule,
                    guidance_scale=s.guidance_scale, time_difference=s.time_difference,
                    ddpm_variance=s.ddpm_variance)
  else:
    n = config.ncsn
    settings.update(sampler='langevin', sampler_steps=n.num_scales * n.n_steps_each,
                    step_lr=n.step_lr, denoise=n.denoise)
  return settings


def _settings_id(settings: Dict[str, Any]) -> str:
  return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def _steps_to_score(spec, manager) -> List[int]:
  available = sorted(manager.all_steps())
  if spec == 'latest':
    return available[-1:]
  if spec == 'all':
    return available
  missing = sorted(set(spec) - set(available))
  if missing:
    raise validation.UserError(
        f'--config.eval.checkpoints asks for steps {missing} but the workdir keeps {available}; '
        'train with --config.train.keep_every=K to keep every K-th checkpoint.')
  return sorted(spec)


def _load_rows(path: str) -> List[Dict[str, Any]]:
  rows = files.read_json(path, default=[])
  return [rows] if isinstance(rows, dict) else rows  # a single-result file of older versions


def _fid_of_checkpoint(exp, manager, step: int, settings_id: str, feature_fn, ref,
                       workdir: str) -> Dict[str, Any]:
  """FID of checkpoint `step` over `config.eval.num_samples` EMA samples (resumable)."""
  config = exp.config
  n = config.eval.num_samples
  sample_fn = exp.sample_fn(config.eval.batch_size)
  batch = sampling.device_batch_size(config.eval.batch_size, exp.mesh.devices.size)
  progress_path = os.path.join(workdir, f'eval_progress_step{step:07d}_{settings_id}.npz')
  stats, start_batch = _load_eval_progress(progress_path)
  params = restore_ema_params(exp, manager, step)
  batches = sampling.generate(sample_fn, params, jax.random.PRNGKey(config.seed + 3), n, batch,
                              start_batch=start_batch)
  start = time.time()
  for i, samples, _ in tqdm(batches, total=-(-n // batch), initial=start_batch,
                            desc=f'eval step {step}', disable=not _is_main()):
    features = feature_fn(samples)
    stats.update(features[:n - i * batch])
    if (i + 1) % _PROGRESS_EVERY == 0 and _is_main():
      files.write_npz(progress_path, next_batch=i + 1, **stats.state_dict())
  mu, sigma = stats.mean_and_cov()
  score = float(fid.frechet_distance(mu, sigma, ref.mu, ref.sigma))
  return {'fid': score, 'checkpoint_step': int(step), 'num_samples': int(stats.count),
          'reference_n': int(ref.n), 'seconds': time.time() - start,
          'images_per_sec': (stats.count - start_batch * batch) / max(time.time() - start, 1e-9),
          'progress_path': progress_path}


def _load_eval_progress(path: str):
  """(statistics, next batch) saved by an interrupted row; empty statistics and 0 if none."""
  stats = fid.RunningStatistics(inception.FEATURE_DIM)
  if not os.path.exists(path):
    return stats, 0
  with np.load(path) as f:
    stats.load_state_dict(f)
    next_batch = int(f['next_batch'])
  logging.info('resuming at batch %d (%d samples done) from %s', next_batch, stats.count, path)
  return stats, next_batch


def _plot_fid_vs_step(rows: List[Dict[str, Any]], path: str) -> str:
  rows = sorted(rows, key=lambda r: r['checkpoint_step'])
  fig = figure.Figure(figsize=(5, 3.5), dpi=120)
  ax = fig.subplots()
  ax.plot([r['checkpoint_step'] for r in rows], [r['fid'] for r in rows], 'o-')
  ax.set_xlabel('training step')
  ax.set_ylabel(f'FID ({rows[0]["num_samples"]} samples, {rows[0]["protocol"]})')
  ax.grid(alpha=0.3)
  buffer = io.BytesIO()
  fig.tight_layout()
  fig.savefig(buffer, format='png')
  return files.write_bytes(path, buffer.getvalue())


def evaluate_fid(exp, workdir: str) -> Dict[str, Any]:
  """FID of each checkpoint in `config.eval.checkpoints` (see the module docstring)."""
  config = exp.config
  ref = fid.load_statistics(default_stats_path(config, workdir),
                            protocol=config.eval.ref_protocol or config.eval.protocol)
  manager = exp.checkpoint_manager(workdir)
  settings = _row_settings(config)
  settings_id = _settings_id(settings)
  results_path = os.path.join(workdir, RESULTS_FILE)
  rows = _load_rows(results_path)
  done = {r['checkpoint_step'] for r in rows if r.get('settings_id') == settings_id}
  writer = metric_writers.create_default_writer(os.path.join(workdir, 'tensorboard'),
                                                just_logging=not _is_main())
  feature_fn = None
  for step in _steps_to_score(validation.checkpoint_steps(config.eval.checkpoints), manager):
    if step in done:
      logging.info('FID of step %d with these settings is already in %s: skipped', step,
                   results_path)
      continue
    feature_fn = feature_fn or feature_fn_for(config, exp.mesh)
    row = _fid_of_checkpoint(exp, manager, step, settings_id, feature_fn, ref, workdir)
    progress_path = row.pop('progress_path')
    row.update(settings, settings_id=settings_id,
               time=time.strftime('%Y-%m-%dT%H:%M:%S%z'))
    rows.append(row)
    if _is_main():
      files.write_json(results_path, rows)
      if os.path.exists(progress_path):
        os.remove(progress_path)
    writer.write_scalars(step, {f'fid_{config.eval.protocol}_{config.eval.num_samples}':
                                row['fid']})
    logging.info('FID %.3f at step %d (%d samples, %s)', row['fid'], step, row['num_samples'],
                 config.eval.protocol)
  writer.flush()
  same = [r for r in rows if r.get('settings_id') == settings_id]
  if not same:
    return {'rows': 0}
  best = min(same, key=lambda r: r['fid'])
  result = {'best_fid': best['fid'], 'best_step': best['checkpoint_step'], 'rows': len(same),
            'results': results_path}
  if _is_main():
    result['plot'] = _plot_fid_vs_step(same, os.path.join(workdir, 'fid_vs_step.png'))
    logging.info('best FID %.3f at step %d of %d checkpoints; wrote %s and %s', best['fid'],
                 best['checkpoint_step'], len(same), results_path, result['plot'])
  return result


# NCSNv2 noise hyperparameters from data ---------------------------------------------------------

def tune_noise(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Techniques 1, 2, 4: σ1 from the data, L from the overlap, ε from Proposition 3; prints them
  and writes tune_noise.json."""
  num, _ = input_pipeline.dataset_info(config)
  batches = input_pipeline.make_eval_iterator(config, num_examples=num,
                                              batch_size=config.eval.batch_size)
  total = -(-num // config.eval.batch_size)
  data = (images.uint8_to_unit(b['image']).reshape(len(b['image']), -1)
          for b in tqdm(batches, total=total, desc='tune_noise', disable=not _is_main()))
  max_dist = float(noise_scales.max_pairwise_distance(data))
  dim = config.data.image_size ** 2 * config.data.num_channels
  derived = noise_scales.derive_noise_config(
      max_dist, dim, config.ncsn.sigma_min, config.ncsn.n_steps_each,
      target_overlap=config.ncsn.target_overlap)
  print(f'\nNCSNv2 noise hyperparameters derived from {num} images of {config.data.name} '
        f'(D={dim}):\n{noise_scales.format_config_snippet(derived, "config.ncsn")}\n')
  result = {k: float(v) if np.ndim(v) == 0 and not isinstance(v, (int, np.integer)) else v
            for k, v in derived.items()}
  if _is_main():
    path = files.write_json(os.path.join(workdir, 'tune_noise.json'), result)
    logging.info('wrote %s', path)
  return result
