"""Tests for ncsn_rin.input_pipeline: digits, mocked TFDS, image folders, errors, sharding."""
import os
import time

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from configs.common import base_config
from ncsn_rin import input_pipeline as ip


def _config(name='digits', batch_size=16, image_size=32, channels=3, **data):
  """Base config with a small batch; data overrides go to config.data."""
  config = base_config()
  config.train.batch_size = batch_size
  config.data.name = name
  config.data.image_size = image_size
  config.data.num_channels = channels
  config.data.shuffle_buffer = 64
  for key, value in data.items():
    config.data[key] = value
  return config


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


# ----------------------------------------------------------------------------------------------
# digits


@pytest.mark.parametrize('size,channels', [(32, 1), (32, 3), (64, 1), (64, 3)])
def test_digits_shapes_values_labels(size, channels):
  config = _config(batch_size=16, image_size=size, channels=channels)
  for batch in _take(ip.make_train_iterator(config, process_index=0, process_count=1), 2):
    assert batch['image'].shape == (16, size, size, channels)
    assert batch['image'].dtype == np.uint8
    assert batch['label'].shape == (16,) and batch['label'].dtype == np.int32
    assert batch['label'].min() >= 0 and batch['label'].max() <= 9
    assert batch['image'].min() == 0 and batch['image'].max() > 200
    if channels == 3:  # Grey replicated.
      np.testing.assert_array_equal(batch['image'][..., 0], batch['image'][..., 2])
  assert ip.dataset_info(config) == (1797, 10)


def test_digits_upsampling_matches_bilinear_resize():
  config = _config(image_size=32, channels=1)
  batch = next(ip.make_eval_iterator(config, num_examples=4, batch_size=4, process_index=0,
                                     process_count=1))
  images, labels = ip.load_digits_uint8()
  want = tf.image.resize(images[:4].astype(np.float32), (32, 32), antialias=True)
  want = np.clip(np.round(want.numpy()), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(batch['image'], want)
  np.testing.assert_array_equal(batch['label'], labels[:4])
  assert batch['mask'].all()


def test_digits_resume_determinism_across_epochs():
  # 1797 // 128 = 14 steps per epoch: step 16 is in the second epoch.
  config = _config(batch_size=128, image_size=8, channels=1)
  from_zero = _take(ip.make_train_iterator(config, process_index=0, process_count=1), 17)
  resumed = _take(ip.make_train_iterator(config, start_step=16, process_index=0,
                                         process_count=1), 1)
  _assert_batches_equal(from_zero[16], resumed[0])
  assert not np.array_equal(from_zero[0]['image'], from_zero[14]['image'])  # Reshuffled.
  # Order is a pure function of (seed, step).
  idx = ip.train_indices(1797, 128, config.seed, 16)
  images, labels = ip.load_digits_uint8()
  np.testing.assert_array_equal(resumed[0]['label'], labels[idx])
  np.testing.assert_array_equal(resumed[0]['image'], images[idx])


def test_digits_hosts_are_disjoint_and_form_the_global_batch():
  config = _config(batch_size=32, image_size=8, channels=1)
  step = 3
  whole = ip.make_train_iterator(config, start_step=step, process_index=0, process_count=1)
  parts = [next(ip.make_train_iterator(config, start_step=step, process_index=p,
                                       process_count=2)) for p in range(2)]
  assert parts[0]['image'].shape[0] == 16
  _assert_batches_equal(next(whole), {k: np.concatenate([parts[0][k], parts[1][k]])
                                      for k in parts[0]})
  idx = ip.train_indices(1797, 32, config.seed, step)
  assert len(set(idx[:16]) & set(idx[16:])) == 0


def test_eval_iterator_in_order_sharded_and_padded():
  config = _config(image_size=8, channels=1)
  labels = ip.load_digits_uint8()[1]
  kwargs = dict(num_examples=21, batch_size=8, process_count=2)
  # Host 1 holds examples [10, 21) = 11 examples; local batches of 4.
  plain = list(ip.make_eval_iterator(config, process_index=1, **kwargs))
  assert [len(b['label']) for b in plain] == [4, 4, 3] and all(b['mask'].all() for b in plain)
  np.testing.assert_array_equal(np.concatenate([b['label'] for b in plain]), labels[10:21])
  padded = list(ip.make_eval_iterator(config, process_index=1, pad=True, **kwargs))
  assert [b['mask'].sum() for b in padded] == [4, 4, 3]
  assert all(b['image'].shape == (4, 8, 8, 1) for b in padded)
  assert padded[-1]['image'][3].max() == 0
  np.testing.assert_array_equal(np.concatenate([b['label'][b['mask']] for b in padded]),
                                labels[10:21])
  host0 = list(ip.make_eval_iterator(config, process_index=0, pad=True, **kwargs))
  assert len(host0) == len(padded)  # Same number of batches on every host.
  np.testing.assert_array_equal(np.concatenate([b['label'][b['mask']] for b in host0]),
                                labels[:10])


# ----------------------------------------------------------------------------------------------
# TFDS (mocked)


def _write_tfds_metadata(data_dir, name, num_examples):
  """Writes dataset_info.json for `name` so the builder is 'prepared' (data itself is mocked)."""
  builder = tfds.builder(name, data_dir=data_dir)
  template = tfds.core.ShardedFileTemplate(
      data_dir=builder.data_dir, template='{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}',
      dataset_name=builder.name, split='train', filetype_suffix='tfrecord')
  split = tfds.core.SplitInfo(name='train', shard_lengths=[num_examples], num_bytes=0,
                              filename_template=template)
  builder.info.set_splits(tfds.core.SplitDict([split]))
  os.makedirs(builder.data_dir, exist_ok=True)
  builder.info.write_to_directory(builder.data_dir)


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  _write_tfds_metadata(data_dir, 'cifar10', 40)
  _write_tfds_metadata(data_dir, 'celeb_a', 8)
  _write_tfds_metadata(data_dir, 'imagenet2012', 8)
  return data_dir


def test_cifar10_mock_shapes(tfds_dir):
  config = _config('cifar10', batch_size=8, image_size=16, data_dir=tfds_dir)
  with tfds.testing.mock_data(num_examples=40, data_dir=tfds_dir):
    assert ip.dataset_info(config) == (40, 10)
    batch = next(ip.make_train_iterator(config, process_index=0, process_count=1))
  assert batch['image'].shape == (8, 16, 16, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].dtype == np.int32 and batch['label'].max() <= 9


def test_cifar10_mock_resume_determinism(tfds_dir):
  # 40 examples, batch 8: 5 steps per epoch; step 7 is mid second epoch (skip path).
  config = _config('cifar10', batch_size=8, data_dir=tfds_dir)
  with tfds.testing.mock_data(num_examples=40, data_dir=tfds_dir):
    from_zero = _take(ip.make_train_iterator(config, process_index=0, process_count=1), 8)
    resumed = _take(ip.make_train_iterator(config, start_step=7, process_index=0,
                                           process_count=1), 1)
  _assert_batches_equal(from_zero[7], resumed[0])
  epoch0 = np.concatenate([b['image'] for b in from_zero[:5]])
  epoch1 = np.concatenate([b['image'] for b in from_zero[5:]])
  assert not np.array_equal(epoch0[:24], epoch1)  # Reshuffled per epoch.


def test_celeb_a_mock_crop_and_resize(tfds_dir):
  """Pixels outside the central 140x140 crop are white, inside black: output must be black."""
  inside = np.zeros((218, 178, 3), np.uint8)
  image = np.full_like(inside, 255)
  image[39:179, 19:159] = 0

  def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    del split, read_config, kwargs
    png = tf.io.encode_png(tf.constant(image))
    ds = tf.data.Dataset.from_tensors(png).repeat(8)
    return ds.map(lambda p: self.info.features.decode_example(
        {'image': p, 'attributes': {k: False for k in self.info.features['attributes'].keys()},
         'landmarks': {k: 0 for k in self.info.features['landmarks'].keys()},
         'identity': {'Identity_No': 0}}, decoders=decoders))

  config = _config('celeb_a', batch_size=4, image_size=64, data_dir=tfds_dir)
  with tfds.testing.mock_data(num_examples=8, data_dir=tfds_dir, as_dataset_fn=as_dataset):
    batch = next(ip.make_train_iterator(config, process_index=0, process_count=1))
  assert batch['image'].shape == (4, 64, 64, 3)
  assert batch['image'].max() == 0
  np.testing.assert_array_equal(batch['label'], 0)


def test_imagenet_mock_center_square(tfds_dir):
  """A 30x50 image whose central 30x30 square is black and sides white resizes to black."""
  image = np.full((30, 50, 3), 255, np.uint8)
  image[:, 10:40] = 0

  def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    del split, read_config, kwargs
    example = {'image': tf.io.encode_jpeg(tf.constant(image), quality=100), 'label': 7,
               'file_name': 'x.JPEG'}
    ds = tf.data.Dataset.from_tensors(example).repeat(8)
    return ds.map(lambda ex: self.info.features.decode_example(ex, decoders=decoders))

  config = _config('imagenet2012', batch_size=4, image_size=16, data_dir=tfds_dir)
  with tfds.testing.mock_data(num_examples=8, data_dir=tfds_dir, as_dataset_fn=as_dataset):
    assert ip.dataset_info(config) == (8, 1000)
    batch = next(ip.make_train_iterator(config, process_index=0, process_count=1))
  assert batch['image'].shape == (4, 16, 16, 3)
  assert batch['image'].max() <= 8  # JPEG ringing only.
  np.testing.assert_array_equal(batch['label'], 7)


def test_tfds_hosts_read_disjoint_shards(tfds_dir):
  """Mock as_dataset that serves the absolute example ids of the requested split as pixels."""
  requested = []

  def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    del read_config, kwargs
    requested.append(split)
    ids = np.concatenate([np.arange(f.skip, f.skip + f.take)
                          for f in self.info.splits[split].file_instructions])

    def example(i):
      png = tf.io.encode_png(tf.fill([32, 32, 3], tf.cast(i, tf.uint8)))
      return self.info.features.decode_example(
          {'image': png, 'label': i % 10, 'id': tf.strings.as_string(i)}, decoders=decoders)

    return tf.data.Dataset.from_tensor_slices(ids).map(example)

  config = _config('cifar10', batch_size=8, data_dir=tfds_dir, random_flip=False)
  seen = []
  with tfds.testing.mock_data(num_examples=40, data_dir=tfds_dir, as_dataset_fn=as_dataset):
    for p in range(2):  # 20 examples per host, 4 per local batch: 5 steps per epoch.
      batches = _take(ip.make_train_iterator(config, process_index=p, process_count=2), 5)
      seen.append(np.concatenate([b['image'][:, 0, 0, 0] for b in batches]))
  assert requested[0] != requested[1]
  assert sorted(seen[0]) == list(range(20)) and sorted(seen[1]) == list(range(20, 40))


# ----------------------------------------------------------------------------------------------
# image_folder


def _write_pngs(folder, n, color):
  os.makedirs(folder, exist_ok=True)
  for i in range(n):
    Image.fromarray(np.full((10, 12, 3), color, np.uint8)).save(os.path.join(folder, f'{i}.png'))


def test_image_folder_layout(tmp_path):
  _write_pngs(tmp_path / 'train' / 'cat', 6, 40)
  _write_pngs(tmp_path / 'train' / 'dog', 6, 200)
  config = _config('image_folder', batch_size=4, image_size=8, image_folder=str(tmp_path))
  assert ip.dataset_info(config) == (12, 2)
  batches = _take(ip.make_train_iterator(config, process_index=0, process_count=1), 4)
  for batch in batches:
    assert batch['image'].shape == (4, 8, 8, 3) and batch['image'].dtype == np.uint8
    colors = batch['image'][:, 4, 4, 0]
    np.testing.assert_array_equal(colors, np.where(batch['label'] == 0, 40, 200))
  resumed = next(ip.make_train_iterator(config, start_step=3, process_index=0, process_count=1))
  _assert_batches_equal(batches[3], resumed)


def test_image_folder_flat(tmp_path):
  _write_pngs(tmp_path, 5, 90)
  config = _config('image_folder', batch_size=2, image_size=4, channels=1,
                   image_folder=str(tmp_path))
  assert ip.dataset_info(config) == (5, 0)
  batch = next(ip.make_train_iterator(config, process_index=0, process_count=1))
  assert batch['image'].shape == (2, 4, 4, 1)
  np.testing.assert_array_equal(batch['label'], 0)


# ----------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize('name,needle', [('cifar10', 'download_and_prepare'),
                                         ('imagenet2012', 'ILSVRC2012_img_train.tar')])
def test_missing_tfds_dataset_fails_fast(tmp_path, name, needle):
  config = _config(name, data_dir=str(tmp_path))
  start = time.time()
  with pytest.raises(FileNotFoundError) as error:
    ip.make_train_iterator(config, process_index=0, process_count=1)
  assert time.time() - start < 10
  message = str(error.value)
  assert needle in message and str(tmp_path) in message and 'data.download=True' in message


def test_config_errors(tmp_path):
  with pytest.raises(ValueError, match='allowed: digits, cifar10'):
    ip.make_train_iterator(_config('mnist'), process_index=0, process_count=1)
  with pytest.raises(ValueError, match='batch_size=10 is not divisible .* 3'):
    ip.make_train_iterator(_config(batch_size=10), process_index=0, process_count=3)
  with pytest.raises(ValueError, match='image_size must be >= 1'):
    ip.make_train_iterator(_config(image_size=0), process_index=0, process_count=1)
  with pytest.raises(ValueError, match='num_channels'):
    ip.make_train_iterator(_config(channels=2), process_index=0, process_count=1)
  with pytest.raises(FileNotFoundError, match='root/<split>/<label>'):
    ip.make_train_iterator(_config('image_folder', image_folder=str(tmp_path)),
                           process_index=0, process_count=1)


# ----------------------------------------------------------------------------------------------
# Global arrays


def test_global_batch_on_8_device_mesh():
  devices = jax.devices()
  assert len(devices) == 8
  mesh = jax.sharding.Mesh(np.array(devices), ('data',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  config = _config(batch_size=16, image_size=8, channels=1)
  local = next(ip.make_train_iterator(config))  # Defaults: this (single) process.
  batch = next(ip.sharded_batches(iter([local]), sharding))
  for key in ('image', 'label'):
    array = batch[key]
    assert isinstance(array, jax.Array) and array.shape == local[key].shape
    assert array.sharding.spec == jax.sharding.PartitionSpec('data')
    assert len(array.addressable_shards) == 8
    assert array.addressable_shards[0].data.shape[0] == 2
    np.testing.assert_array_equal(np.asarray(array), local[key])
  assert batch['image'].dtype == np.uint8 and batch['label'].dtype == np.int32
