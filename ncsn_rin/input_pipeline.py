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

import logging
import os
from typing import Callable, Dict, Iterator, NamedTuple, Optional, Tuple

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


def _epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """Permutation of range(num_examples), int64 [num_examples], seeded by (seed, epoch)."""
  return np.random.default_rng(_epoch_seed(seed, epoch)).permutation(num_examples)


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
  resized = tf.image.resize(tf.cast(image, tf.float32), (size, size), method=method,
                            antialias=True)
  return _to_uint8(resized)


def _center_square(image: tf.Tensor) -> tf.Tensor:
  """[h, w, C] -> [s, s, C], the largest central square, s = min(h, w)."""
  shape = tf.shape(image)
  side = tf.minimum(shape[0], shape[1])
  top = (shape[0] - side) // 2
  left = (shape[1] - side) // 2
  return tf.image.crop_to_bounding_box(image, top, left, side, side)


def _celeba_crop(image: tf.Tensor) -> tf.Tensor:
  """[218, 178, C] -> [140, 140, C] central crop (torchvision CenterCrop rounding)."""
  shape = tf.shape(image)
  top = tf.cast(tf.round((shape[0] - CELEBA_CROP) / 2), tf.int32)
  left = tf.cast(tf.round((shape[1] - CELEBA_CROP) / 2), tf.int32)
  return tf.image.crop_to_bounding_box(image, top, left, CELEBA_CROP, CELEBA_CROP)


def _match_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
  """uint8 [H, W, c] -> uint8 [H, W, channels] (grey replicated, or RGB -> luma)."""
  have = image.shape[-1]
  if have == channels:
    return image
  if have == 1:
    return tf.tile(image, [1, 1, channels])
  return _to_uint8(tf.image.rgb_to_grayscale(tf.cast(image, tf.float32)))  # RGB -> luma.


def _image_fn(name: str, size: int) -> Callable[[tf.Tensor], tf.Tensor]:
  """Per-data-set geometry: uint8 [h, w, c] -> uint8 [size, size, c]."""
  if name in ('digits', 'cifar10'):
    return lambda image: _resize(image, size, 'bilinear')
  if name == 'celeb_a':
    return lambda image: _resize(_celeba_crop(image), size, 'bilinear')
  return lambda image: _resize(_center_square(image), size, 'bicubic')


def _finish(config, image: tf.Tensor, label: tf.Tensor, flip_seed: tf.Tensor,
            random_flip: bool) -> Dict[str, tf.Tensor]:
  """Geometry, channels, stateless random flip (flip_seed int64 [2]), fixed shape.

  Returns {'image': uint8 [H, W, C], 'label': int32 scalar}.
  """
  size, channels = int(config.data.image_size), int(config.data.num_channels)
  image = _match_channels(_image_fn(config.data.name, size)(image), channels)
  if random_flip:
    image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  image = tf.ensure_shape(image, (size, size, channels))
  return {'image': image, 'label': tf.cast(label, tf.int32)}


def _dataset_options() -> tf.data.Options:
  """Deterministic tf.data options."""
  options = tf.data.Options()
  options.deterministic = True
  return options


# ----------------------------------------------------------------------------------------------
# Indexed sources: digits (in memory) and image folders (file list).


class _IndexedSource(NamedTuple):
  """A data set addressable by example index.

  load: int64 scalar index -> (uint8 image [h, w, c], int label scalar).
  """
  num_examples: int
  load: Callable[[tf.Tensor], Tuple[tf.Tensor, tf.Tensor]]
  random_flip: bool


def _digits_source(config) -> _IndexedSource:
  """The embedded digits data set (random_flip ignored)."""
  images, labels = datasets.load_digits_uint8()
  if config.data.random_flip:
    logging.info('digits: ignoring config.data.random_flip (mirrored digits are not digits).')
  images_t, labels_t = tf.constant(images), tf.constant(labels)

  def load(index):
    return tf.gather(images_t, index), tf.gather(labels_t, index)

  return _IndexedSource(len(images), load, random_flip=False)


def _image_folder_source(config) -> _IndexedSource:
  """An image folder as an indexed source of decoded RGB images."""
  paths, labels, _ = datasets.image_folder_examples(config.data.image_folder, config.data.split)
  paths_t, labels_t = tf.constant(paths), tf.constant(labels)

  def load(index):
    data = tf.io.read_file(tf.gather(paths_t, index))
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    return image, tf.gather(labels_t, index)

  return _IndexedSource(len(paths), load, bool(config.data.random_flip))


def _indexed_source(config) -> _IndexedSource:
  if config.data.name == 'digits':
    return _digits_source(config)
  return _image_folder_source(config)


def _indexed_train_plan(num_examples: int, global_bs: int, local_bs: int, seed: int,
                        start_step: int, process_index: int):
  """Yields (indices int64 [local_bs], flip seeds int64 [local_bs, 2]) for each step."""
  steps = _steps_per_epoch(num_examples, global_bs, 'train')
  epoch, offset = divmod(start_step, steps)
  while True:
    perm, epoch_seed = _epoch_permutation(num_examples, seed, epoch), _epoch_seed(seed, epoch)
    for o in range(offset, steps):
      start = o * global_bs + process_index * local_bs
      positions = np.arange(start, start + local_bs, dtype=np.int64)
      seeds = np.stack([np.full_like(positions, epoch_seed), positions], axis=1)
      yield perm[start:start + local_bs].astype(np.int64), seeds
    epoch, offset = epoch + 1, 0


def _indexed_dataset(config, source: _IndexedSource, plan, local_bs: int,
                     random_flip: bool) -> tf.data.Dataset:
  """tf.data pipeline over a plan of (indices [local_bs], flip seeds [local_bs, 2])."""
  spec = (tf.TensorSpec([local_bs], tf.int64), tf.TensorSpec([local_bs, 2], tf.int64))
  ds = tf.data.Dataset.from_generator(lambda: plan, output_signature=spec).unbatch()

  def element(index, flip_seed):
    image, label = source.load(index)
    return _finish(config, image, label, flip_seed, random_flip)

  ds = ds.map(element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(local_bs, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_dataset_options())


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


def _tfds_label(name: str, example) -> tf.Tensor:
  """int32 label scalar; zero for data sets without labels."""
  if name in datasets.TFDS_NUM_CLASSES:
    return tf.cast(example['label'], tf.int32)
  return tf.zeros([], tf.int32)


def _decode_fn(config, builder, random_flip: bool):
  """(epoch seed, position, raw example) -> {'image', 'label'}."""
  image_feature = builder.info.features['image']
  name = config.data.name

  def decode(epoch_seed, position, example):
    image = image_feature.decode_example(example['image'])
    flip_seed = tf.stack([tf.cast(epoch_seed, tf.int64), position])
    return _finish(config, image, _tfds_label(name, example), flip_seed, random_flip)

  return decode


def _tfds_epoch(config, builder, split, epoch: int, skip_batches: int, steps: int,
                local_bs: int) -> tf.data.Dataset:
  """One epoch of local batches: steps - skip_batches full batches."""
  seed_e = _epoch_seed(config.seed, epoch)
  read_config = tfds.ReadConfig(shuffle_seed=seed_e, options=_dataset_options(),
                                shuffle_reshuffle_each_iteration=False)
  ds = builder.as_dataset(split=split, shuffle_files=True, read_config=read_config,
                          decoders={'image': tfds.decode.SkipDecoding()})
  ds = ds.shuffle(int(config.data.shuffle_buffer), seed=seed_e, reshuffle_each_iteration=False)
  ds = ds.take(steps * local_bs).enumerate()
  if skip_batches:
    logging.warning('Resuming %s mid-epoch: skipping %d examples of epoch %d; this may take a '
                    'while.', config.data.name, skip_batches * local_bs, epoch)
    ds = ds.skip(skip_batches * local_bs)
  decode = _decode_fn(config, builder, bool(config.data.random_flip))
  ds = ds.map(lambda pos, ex: decode(seed_e, pos, ex), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  ds = ds.batch(local_bs, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_dataset_options())


def _tfds_train_batches(config, start_step: int, process_index: int, process_count: int,
                        local_bs: int) -> Iterator[Batch]:
  """Endless local batches from this host's share of a TFDS split (errors raised eagerly)."""
  builder = _tfds_builder(config)
  split = tfds.split_for_jax_process(config.data.split, process_index=process_index,
                                     process_count=process_count, drop_remainder=True)
  steps = _steps_per_epoch(int(builder.info.splits[split].num_examples), local_bs,
                           f'{config.data.name} host share {split}')

  def batches():
    epoch, offset = divmod(start_step, steps)
    while True:
      yield from _tfds_epoch(config, builder, split, epoch, offset, steps,
                             local_bs).as_numpy_iterator()
      epoch, offset = epoch + 1, 0

  return batches()


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
  """Endless local training batches for steps start_step, start_step + 1, ...

  Each batch: {'image': uint8 [B/P, H, W, C], 'label': int32 [B/P]} with B =
  config.train.batch_size (global) and P = process_count. The batch of step s does not depend on
  start_step.
  """
  process_index, process_count = _processes(process_index, process_count)
  local_bs = int(config.train.batch_size) // process_count
  if config.data.name in datasets.TFDS_NAMES:
    return _tfds_train_batches(config, start_step, process_index, process_count, local_bs)
  source = _indexed_source(config)
  plan = _indexed_train_plan(source.num_examples, int(config.train.batch_size), local_bs,
                             int(config.seed), start_step, process_index)
  ds = _indexed_dataset(config, source, plan, local_bs, source.random_flip)
  return ds.as_numpy_iterator()


def _host_range(num_examples: int, process_index: int, process_count: int) -> Tuple[int, int]:
  """[start, end) of this host's contiguous share of range(num_examples)."""
  return (num_examples * process_index // process_count,
          num_examples * (process_index + 1) // process_count)


def _pad(batch: Batch, size: int) -> Batch:
  """Pads every array of batch to `size` rows with zeros; adds 'mask' bool [size]."""
  n = len(batch['label'])
  out = {k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)])
         for k, v in batch.items()}
  out['mask'] = np.arange(size) < n
  return out


def _padded_batches(batches: Iterator[Batch], num_batches: int, local_bs: int,
                    empty: Batch) -> Iterator[Batch]:
  """Exactly num_batches batches of local_bs rows (padding at the end, 'mask' marks real rows)."""
  count = 0
  for batch in batches:
    yield _pad(batch, local_bs)
    count += 1
  for _ in range(count, num_batches):
    yield _pad(empty, local_bs)


def _eval_examples(config, start: int, end: int, local_bs: int) -> tf.data.Dataset:
  """Unshuffled, unflipped examples [start, end) of config.data.split, batched (last partial)."""
  no_flip = tf.zeros([2], tf.int64)
  if config.data.name in datasets.TFDS_NAMES:
    builder = _tfds_builder(config)
    read_config = tfds.ReadConfig(options=_dataset_options())
    ds = builder.as_dataset(split=f'{config.data.split}[{start}:{end}]', shuffle_files=False,
                            read_config=read_config,
                            decoders={'image': tfds.decode.SkipDecoding()})
    decode = _decode_fn(config, builder, random_flip=False)
    ds = ds.take(end - start).map(lambda ex: decode(0, tf.constant(0, tf.int64), ex),
                                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  else:
    source = _indexed_source(config)

    def element(index):
      image, label = source.load(index)
      return _finish(config, image, label, no_flip, random_flip=False)

    ds = tf.data.Dataset.range(start, end).map(element, num_parallel_calls=tf.data.AUTOTUNE,
                                               deterministic=True)
  ds = ds.batch(local_bs).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_dataset_options())


def _with_mask(batches: Iterator[Batch]) -> Iterator[Batch]:
  """Adds an all-True 'mask' bool [b] to unpadded batches."""
  for batch in batches:
    yield dict(batch, mask=np.ones(len(batch['label']), bool))


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
  start, end = _host_range(num_examples, process_index, process_count)
  batches = _eval_examples(config, start, end, local_bs).as_numpy_iterator() if end > start else ()
  if not pad:
    return _with_mask(iter(batches))
  most_per_host = -(-num_examples // process_count)  # ceil
  num_batches = -(-most_per_host // local_bs)
  size, channels = int(config.data.image_size), int(config.data.num_channels)
  empty = {'image': np.zeros((0, size, size, channels), np.uint8),
           'label': np.zeros((0,), np.int32)}
  return _padded_batches(iter(batches), num_batches, local_bs, empty)


def _batch_sharding(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
  """The batch-axis part of a NamedSharding, valid for arrays of any rank >= 1."""
  if isinstance(sharding, jax.sharding.NamedSharding):
    spec = sharding.spec
    first = spec[0] if len(spec) else None
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(first))
  return sharding


def global_batch(local_batch: Batch, sharding: jax.sharding.Sharding) -> Dict[str, jax.Array]:
  """Local arrays [B/P, ...] of every host -> global jax.Arrays [B, ...] sharded on the batch axis.

  sharding: typically NamedSharding(mesh, PartitionSpec('data')); only its first (batch) axis is
  used, so images [B, H, W, C] and labels [B] share one sharding argument.
  """
  return {k: jax.make_array_from_process_local_data(_batch_sharding(sharding), np.asarray(v))
          for k, v in local_batch.items()}


def sharded_batches(local_iter: Iterator[Batch],
                    sharding: jax.sharding.Sharding) -> Iterator[Dict[str, jax.Array]]:
  """Maps global_batch over an iterator of local batches."""
  for batch in local_iter:
    yield global_batch(batch, sharding)


__all__ = ['dataset_info', 'make_train_iterator', 'make_eval_iterator', 'global_batch',
           'sharded_batches']
