"""Per-host input pipelines: uint8 image batches whose order depends only on (seed, step).

Every batch is a dict of NumPy arrays local to this host:

    'image'  uint8 [B_local, H, W, C]   values 0..255 (the train step converts on device)
    'label'  int32 [B_local]            class id; zeros when the data set has no labels
    'mask'   bool  [B_local]            eval iterator only: False marks padding (pad=True)

with B_local = global batch / process_count, H = W = config.data.image_size and
C = config.data.num_channels. `global_batch` turns a local batch into global `jax.Array`s.

Data sets (config.data.name; see `datasets`) and their geometry:

    digits               bilinear upsampling of the 8x8 digits; ignores random_flip (a mirrored
                         digit is not a digit).
    cifar10              bilinear resize (none at 32).
    celeb_a              center crop 140x140 of the 218x178 image, then resize (NCSNv2).
    imagenet2012, lsun/church_outdoor, lsun/bedroom, image_folder
                         the largest central square, bicubic antialiased resize.

Grey images are replicated to num_channels = 3; RGB is converted to luma for num_channels = 1.
The config is assumed valid (`ncsn_rin/validation.py`); a missing data set fails with how to get
it (`datasets.check_prepared`).

Determinism and resumption: the batch of step s depends only on (config, seed, s, process
index/count), so `make_train_iterator(config, start_step=s)` yields exactly what an iterator
started at 0 yields at step s.

* In-memory / file-list data sets (digits, image_folder) are "indexed": step s of epoch
  e = s // steps_per_epoch reads the global slice [offset*B, (offset+1)*B) of a NumPy permutation
  seeded by (seed, e); host p takes rows [p*B_local, (p+1)*B_local) of it. Resuming costs nothing
  and the global batch content does not depend on the number of hosts.
* TFDS data sets: host p reads its own share `tfds.split_for_jax_process(split,
  drop_remainder=True)` (equal sizes, so every host has the same steps per epoch). Each epoch is a
  fresh, deterministic tf.data pipeline: files shuffled with ReadConfig(shuffle_seed=seed_e),
  `.shuffle(shuffle_buffer, seed=seed_e)`, where seed_e depends on (seed, e). Images stay encoded
  until after `.skip()`, so resuming in the middle of an epoch skips raw records (still a linear
  read; a warning is logged). There is a short refill stall at each epoch boundary.
* Random flips are stateless, seeded by (seed_e, position in epoch), so they are resumable too.

Every training batch is full (the remainder of each epoch is dropped). The eval iterator yields
a smaller last batch, or, with pad=True, zero-pads it and marks the real rows with 'mask'.
"""

import itertools
import logging
import os
from typing import Callable, Dict, Iterator, Optional, Tuple

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ncsn_rin import datasets

try:  # The pipeline runs on the host CPU; never let TF grab accelerator memory.
  tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):  # Already initialised, or no GPU build.
  pass

Batch = Dict[str, np.ndarray]
Load = Callable[[tf.Tensor], Tuple[tf.Tensor, tf.Tensor]]  # raw -> (uint8 image [h, w, c], label)

# NCSNv2 (ermongroup/ncsnv2 datasets/__init__.py): CenterCrop(140) of the 218x178 CelebA image.
CELEBA_CROP = 140


# ----------------------------------------------------------------------------------------------
# Seeds.


def _processes(process_index: Optional[int], process_count: Optional[int]) -> Tuple[int, int]:
  """Defaults to this JAX process."""
  return (jax.process_index() if process_index is None else int(process_index),
          jax.process_count() if process_count is None else int(process_count))


def _epoch_seed(seed: int, epoch: int) -> int:
  """A 31-bit seed that depends only on (seed, epoch); stable across NumPy versions."""
  state = np.random.SeedSequence([int(seed) % 2**63, int(epoch)]).generate_state(1)[0]
  return int(state) & 0x7FFFFFFF


def _steps_per_epoch(num_examples: int, batch_size: int, what: str) -> int:
  """Full batches per epoch; errors when the data set is smaller than one batch."""
  steps = num_examples // batch_size
  if steps < 1:
    raise ValueError(f'{what}: {num_examples} examples cannot fill one batch of {batch_size}; '
                     'lower config.train.batch_size or use a larger data set.')
  return steps


# ----------------------------------------------------------------------------------------------
# Image preprocessing (tf, one example at a time).


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
  """float [H, W, C] in 0..255 (possibly overshooting) -> uint8."""
  return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def _resize(image: tf.Tensor, size: int, method: str) -> tf.Tensor:
  """uint8 [h, w, C] -> uint8 [size, size, C]; antialiased when downsampling."""
  if image.shape[0] == size and image.shape[1] == size:
    return image
  return _to_uint8(tf.image.resize(tf.cast(image, tf.float32), (size, size), method=method,
                                   antialias=True))


def _center_crop(image: tf.Tensor, side=None) -> tf.Tensor:
  """[h, w, C] -> [s, s, C] central crop, s = side or min(h, w), offsets rounded down (CelebA's
  (218 - 140) / 2 and (178 - 140) / 2 are whole, so this is torchvision's CenterCrop there)."""
  if side is None:
    side = tf.reduce_min(tf.shape(image)[:2])
  return tf.image.resize_with_crop_or_pad(image, side, side)


def _match_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
  """uint8 [H, W, c] -> uint8 [H, W, channels] (grey replicated, or RGB -> luma)."""
  have = image.shape[-1]
  if have == channels:
    return image
  if have == 1:
    return tf.tile(image, [1, 1, channels])
  return _to_uint8(tf.image.rgb_to_grayscale(tf.cast(image, tf.float32)))  # RGB -> luma.


def _finish(config, image: tf.Tensor, label: tf.Tensor, flip_seed: tf.Tensor,
            random_flip: bool) -> Dict[str, tf.Tensor]:
  """uint8 [h, w, c] -> {'image': uint8 [H, W, C], 'label': int32 scalar}: the data set's
  geometry (module docstring), channels, stateless random flip seeded by flip_seed int64 [2]."""
  name, size = config.data.name, int(config.data.image_size)
  channels, method = int(config.data.num_channels), 'bilinear'
  if name == 'celeb_a':
    image = _center_crop(image, CELEBA_CROP)
  elif name not in ('digits', 'cifar10'):
    image, method = _center_crop(image), 'bicubic'
  image = _match_channels(_resize(image, size, method), channels)
  if random_flip:
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  image = tf.ensure_shape(image, (size, size, channels))
  return {'image': image, 'label': tf.cast(label, tf.int32)}


def _dataset_options() -> tf.data.Options:
  """Deterministic tf.data options."""
  options = tf.data.Options()
  options.deterministic = True
  return options


def _examples(config, ds: tf.data.Dataset, load: Load, random_flip: bool) -> tf.data.Dataset:
  """Elements (flip seed int64 [2], raw example) -> _finish(load(raw)), in order."""

  def example(flip_seed, raw):
    image, label = load(raw)
    return _finish(config, image, label, flip_seed, random_flip)

  return ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _batched(ds: tf.data.Dataset, local_bs: int, drop_remainder: bool = True) -> Iterator[Batch]:
  ds = ds.batch(local_bs, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_dataset_options()).as_numpy_iterator()


# ----------------------------------------------------------------------------------------------
# Indexed sources: digits (in memory) and image folders (file list).


def _indexed_source(config) -> Tuple[int, Load]:
  """(num_examples, load: int64 index -> (uint8 image [h, w, c], label)) of the embedded digits or
  of an image folder (files decoded as RGB)."""
  if config.data.name == 'digits':
    images, labels = datasets.load_digits_uint8()
    images = tf.constant(images)

    def read(index):
      return tf.gather(images, index)
  else:
    paths, labels, _ = datasets.image_folder_examples(config.data.image_folder, config.data.split)
    paths = tf.constant(paths)

    def read(index):
      data = tf.io.read_file(tf.gather(paths, index))
      return tf.io.decode_image(data, channels=3, expand_animations=False)

  labels_t = tf.constant(labels)
  return len(labels), lambda index: (read(index), tf.gather(labels_t, index))


def _indexed_train_plan(num_examples: int, global_bs: int, local_bs: int, seed: int,
                        start_step: int, process_index: int):
  """Yields (flip seeds int64 [local_bs, 2], indices int64 [local_bs]) for each step."""
  steps = _steps_per_epoch(num_examples, global_bs, 'train')
  epoch, offset = divmod(start_step, steps)
  while True:
    epoch_seed = _epoch_seed(seed, epoch)
    perm = np.random.default_rng(epoch_seed).permutation(num_examples)
    for o in range(offset, steps):
      start = o * global_bs + process_index * local_bs
      positions = np.arange(start, start + local_bs, dtype=np.int64)
      seeds = np.stack([np.full_like(positions, epoch_seed), positions], axis=1)
      yield seeds, perm[start:start + local_bs].astype(np.int64)
    epoch, offset = epoch + 1, 0


# ----------------------------------------------------------------------------------------------
# TFDS sources.


def _tfds_builder(config):
  """A prepared TFDS builder for config.data.name: prepares it when config.data.download is set,
  else fails fast with how to get it (`datasets.check_prepared`)."""
  data = config.data
  builder = datasets.check_prepared(data.name, data_dir=data.data_dir, manual_dir=data.manual_dir,
                                    download=data.download)
  if not builder.is_prepared():
    logging.info('Downloading and preparing %s into %s.', data.name, builder.data_dir)
    manual = os.path.expanduser(data.manual_dir) if data.manual_dir else None
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
  return builder


def _tfds_raw(config, builder, split: str, shuffle_seed: Optional[int] = None):
  """(examples of split with images still encoded, load: example -> (uint8 image [h, w, c],
  label; 0 when unlabelled)); files shuffled with shuffle_seed when given."""
  read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, options=_dataset_options(),
                                shuffle_reshuffle_each_iteration=False)
  ds = builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                          read_config=read_config, decoders={'image': tfds.decode.SkipDecoding()})
  image_feature = builder.info.features['image']
  labelled = config.data.name in datasets.TFDS_NUM_CLASSES

  def load(example):
    label = example['label'] if labelled else tf.zeros([], tf.int32)
    return image_feature.decode_example(example['image']), label

  return ds, load


def _tfds_train_batches(config, start_step: int, process_index: int, process_count: int,
                        local_bs: int, random_flip: bool) -> Iterator[Batch]:
  """Endless local batches from this host's share of a TFDS split (errors raised eagerly)."""
  builder = _tfds_builder(config)
  split = tfds.split_for_jax_process(config.data.split, process_index=process_index,
                                     process_count=process_count, drop_remainder=True)
  steps = _steps_per_epoch(int(builder.info.splits[split].num_examples), local_bs,
                           f'{config.data.name} host share {split}')

  def epoch_batches(epoch: int, skip_batches: int) -> Iterator[Batch]:  # steps - skip_batches
    seed_e = _epoch_seed(config.seed, epoch)
    ds, load = _tfds_raw(config, builder, split, seed_e)
    ds = ds.shuffle(int(config.data.shuffle_buffer), seed=seed_e, reshuffle_each_iteration=False)
    ds = ds.take(steps * local_bs).enumerate()
    if skip_batches:
      logging.warning('Resuming %s mid-epoch: skipping %d examples of epoch %d; this may take a '
                      'while.', config.data.name, skip_batches * local_bs, epoch)
      ds = ds.skip(skip_batches * local_bs)
    ds = ds.map(lambda pos, ex: (tf.stack([tf.constant(seed_e, tf.int64), pos]), ex))
    return _batched(_examples(config, ds, load, random_flip), local_bs)

  first, skip = divmod(start_step, steps)
  return itertools.chain.from_iterable(epoch_batches(epoch, skip if epoch == first else 0)
                                       for epoch in itertools.count(first))


# ----------------------------------------------------------------------------------------------
# Public API.


def dataset_info(config) -> Tuple[int, int]:
  """(num_examples of config.data.split, num_classes; 0 when unlabelled), without reading data."""
  data = config.data
  if data.name in datasets.TFDS_NAMES:
    _tfds_builder(config)  # Prepares it if asked to, else fails with how to.
  return datasets.dataset_info(data.name, split=data.split, data_dir=data.data_dir,
                               image_folder=data.image_folder)


def make_train_iterator(config, *, start_step: int = 0, process_index: Optional[int] = None,
                        process_count: Optional[int] = None) -> Iterator[Batch]:
  """Endless local batches {'image': uint8 [B/P, H, W, C], 'label': int32 [B/P]} for steps
  start_step, start_step + 1, ... (B = config.train.batch_size, global; P = process_count); the
  batch of step s does not depend on start_step."""
  process_index, process_count = _processes(process_index, process_count)
  local_bs = int(config.train.batch_size) // process_count
  random_flip = bool(config.data.random_flip) and config.data.name != 'digits'
  if config.data.random_flip and not random_flip:
    logging.info('digits: ignoring config.data.random_flip (mirrored digits are not digits).')
  if config.data.name in datasets.TFDS_NAMES:
    return _tfds_train_batches(config, start_step, process_index, process_count, local_bs,
                               random_flip)
  num_examples, load = _indexed_source(config)
  plan = _indexed_train_plan(num_examples, int(config.train.batch_size), local_bs,
                             int(config.seed), start_step, process_index)
  spec = (tf.TensorSpec([local_bs, 2], tf.int64), tf.TensorSpec([local_bs], tf.int64))
  ds = tf.data.Dataset.from_generator(lambda: plan, output_signature=spec).unbatch()
  return _batched(_examples(config, ds, load, random_flip), local_bs)


def make_eval_iterator(config, *, num_examples: int, batch_size: int,
                       process_index: Optional[int] = None,
                       process_count: Optional[int] = None,
                       pad: bool = False) -> Iterator[Batch]:
  """The first num_examples images of config.data.split, in order, no shuffle, no flip.

  batch_size is global (divisible by process_count); host p reads the contiguous range
  [N*p//P, N*(p+1)//P) in batches {'image': uint8 [b, H, W, C], 'label': int32 [b],
  'mask': bool [b]} with b = batch_size // P.
    pad=False: the last batch is smaller; mask is all True. Hosts may differ by one batch.
    pad=True:  every host yields the same number of full batches; the last ones are zero-padded
               and mask is False on padding rows (fixed shapes for collective, jitted consumers;
               the consumer must drop rows where mask is False).
  """
  process_index, process_count = _processes(process_index, process_count)
  local_bs = batch_size // process_count
  available, _ = dataset_info(config)
  if not 0 < num_examples <= available:
    raise ValueError(f'num_examples={num_examples} must be in [1, {available}] '
                     f'(size of {config.data.name} split {config.data.split!r}).')
  start = num_examples * process_index // process_count
  end = num_examples * (process_index + 1) // process_count
  most_per_host = -(-num_examples // process_count)  # ceil
  num_padding = -(-most_per_host // local_bs) * local_bs - (end - start) if pad else 0
  size, channels = int(config.data.image_size), int(config.data.num_channels)
  ds = tf.data.Dataset.from_tensors({'image': tf.zeros((size, size, channels), tf.uint8),
                                     'label': 0, 'mask': False}).repeat(num_padding)
  if end > start:
    if config.data.name in datasets.TFDS_NAMES:
      raw, load = _tfds_raw(config, _tfds_builder(config), f'{config.data.split}[{start}:{end}]')
      raw = raw.take(end - start)
    else:
      raw, load = tf.data.Dataset.range(start, end), _indexed_source(config)[1]
    raw = raw.map(lambda example: (tf.zeros([2], tf.int64), example))  # (unused flip seed, raw)
    examples = _examples(config, raw, load, random_flip=False)
    ds = examples.map(lambda example: dict(example, mask=True)).concatenate(ds)
  return _batched(ds, local_bs, drop_remainder=False)


def global_batch(local_batch: Batch, sharding: jax.sharding.Sharding) -> Dict[str, jax.Array]:
  """Local arrays [B/P, ...] of every host -> global jax.Arrays [B, ...] sharded on the batch axis
  by `sharding`, typically NamedSharding(mesh, PartitionSpec('data')); only its first (batch) axis
  is used, so images [B, H, W, C] and labels [B] share one sharding argument."""
  if isinstance(sharding, jax.sharding.NamedSharding):
    spec = sharding.spec
    sharding = jax.sharding.NamedSharding(sharding.mesh,
                                          jax.sharding.PartitionSpec(spec[0] if spec else None))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def sharded_batches(local_iter: Iterator[Batch],
                    sharding: jax.sharding.Sharding) -> Iterator[Dict[str, jax.Array]]:
  """Maps global_batch over an iterator of local batches."""
  return (global_batch(batch, sharding) for batch in local_iter)


__all__ = ['dataset_info', 'make_train_iterator', 'make_eval_iterator', 'global_batch',
           'sharded_batches']
