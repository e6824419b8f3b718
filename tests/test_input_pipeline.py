"""Tests for ncsn_rin.input_pipeline and ncsn_rin.datasets: properties of the real iterators.

Image-folder fixtures give every image a unique grey value (its id) and a white left column, so
a batch shows which examples it holds and whether each was flipped.
"""
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from ncsn_rin import datasets
from ncsn_rin import input_pipeline as ip

NUM_IDS, ID_SIZE = 40, 10


def _config(name='digits', batch_size=16, image_size=32, channels=3, **data):
  """The config fields the pipeline reads, with a small batch; data overrides go to config.data."""
  fields = dict(name=name, image_size=image_size, num_channels=channels, split='train',
                data_dir='', manual_dir='', image_folder='', random_flip=True, shuffle_buffer=64,
                download=False)
  fields.update(data)
  return ml_collections.ConfigDict({'seed': 0, 'train': {'batch_size': batch_size},
                                    'data': fields})


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def _train(config, n, **kwargs):
  kwargs.setdefault('process_index', 0)
  kwargs.setdefault('process_count', 1)
  return _take(ip.make_train_iterator(config, **kwargs), n)


# ----------------------------------------------------------------------------------------------
# Indexed sources: every example once per epoch, resumable, host-independent, deterministic flips


@pytest.fixture(scope='module')
def id_folder(tmp_path_factory):
  """A flat folder of NUM_IDS 10x10 PNGs: image i is grey 5i + 10 with a white left column."""
  folder = tmp_path_factory.mktemp('ids')
  for i in range(NUM_IDS):
    pixels = np.full((ID_SIZE, ID_SIZE, 3), 5 * i + 10, np.uint8)
    pixels[:, 0] = 255
    Image.fromarray(pixels).save(folder / f'{i:03d}.png')
  return str(folder)


def _ids(batch):
  return (batch['image'][:, 5, 5, 0].astype(int) - 10) // 5


def _flipped(batch):
  left, right = batch['image'][:, 5, 0, 0], batch['image'][:, 5, -1, 0]
  assert np.all((left == 255) != (right == 255))  # Exactly one white edge column.
  return right == 255


def _id_config(id_folder, **data):
  return _config('image_folder', batch_size=8, image_size=ID_SIZE, image_folder=id_folder, **data)


def test_every_example_once_per_epoch_reshuffled(id_folder):
  batches = _train(_id_config(id_folder, random_flip=False), 2 * NUM_IDS // 8)  # Two epochs.
  epochs = [np.concatenate([_ids(b) for b in batches[:5]]),
            np.concatenate([_ids(b) for b in batches[5:]])]
  for ids in epochs:
    assert sorted(ids) == list(range(NUM_IDS))
  assert not np.array_equal(epochs[0], epochs[1])
  assert not any(_flipped(b).any() for b in batches)
  assert ip.dataset_info(_id_config(id_folder)) == (NUM_IDS, 0)


def test_resumed_batches_equal_the_uninterrupted_ones(id_folder):
  config = _id_config(id_folder)
  from_zero = _train(config, 8)  # 5 steps per epoch: steps 5..7 are in the second epoch.
  for step in (3, 6):
    for a, b in zip(from_zero[step:], _train(config, 8 - step, start_step=step)):
      _assert_batches_equal(a, b)


def test_two_processes_concatenate_to_the_global_batch(id_folder):
  config = _id_config(id_folder)
  whole = _train(config, 6)
  parts = [_train(config, 6, process_index=p, process_count=2) for p in range(2)]
  for step in range(6):
    assert parts[0][step]['image'].shape[0] == 4
    _assert_batches_equal(whole[step], {k: np.concatenate([parts[0][step][k], parts[1][step][k]])
                                        for k in whole[step]})


def test_flips_are_balanced_and_drawn_per_epoch(id_folder):
  batches = _train(_id_config(id_folder), 10)  # Two epochs, random_flip=True.
  flipped = np.concatenate([_flipped(b) for b in batches]).reshape(2, NUM_IDS)
  ids = np.concatenate([_ids(b) for b in batches]).reshape(2, NUM_IDS)
  assert np.all((0.2 < flipped.mean(axis=1)) & (flipped.mean(axis=1) < 0.8))  # Per epoch.
  by_id = [dict(zip(ids[e], flipped[e])) for e in range(2)]
  assert any(by_id[0][i] != by_id[1][i] for i in range(NUM_IDS))


# ----------------------------------------------------------------------------------------------
# digits


@pytest.mark.parametrize('size,channels', [(32, 3), (8, 1)])
def test_digits_shapes_values_labels(size, channels):
  config = _config(batch_size=16, image_size=size, channels=channels)
  for batch in _train(config, 2):
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
  images, labels = datasets.load_digits_uint8()
  want = tf.image.resize(images[:4].astype(np.float32), (32, 32), antialias=True)
  want = np.clip(np.round(want.numpy()), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(batch['image'], want)
  np.testing.assert_array_equal(batch['label'], labels[:4])
  assert batch['mask'].all()


def test_eval_iterator_in_order_sharded_and_padded():
  config = _config(image_size=8, channels=1)
  labels = datasets.load_digits_uint8()[1]
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
    batch = _train(config, 1)[0]
  assert batch['image'].shape == (8, 16, 16, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].dtype == np.int32 and batch['label'].max() <= 9


def test_cifar10_mock_resume_determinism(tfds_dir):
  # 40 examples, batch 8: 5 steps per epoch; step 7 is mid second epoch (skip path).
  config = _config('cifar10', batch_size=8, data_dir=tfds_dir)
  with tfds.testing.mock_data(num_examples=40, data_dir=tfds_dir):
    from_zero = _train(config, 8)
    resumed = _train(config, 1, start_step=7)
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
    batch = _train(config, 1)[0]
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
    batch = _train(config, 1)[0]
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
# image_folder with labels


def _write_pngs(folder, n, color):
  os.makedirs(folder, exist_ok=True)
  for i in range(n):
    Image.fromarray(np.full((10, 12, 3), color, np.uint8)).save(os.path.join(folder, f'{i}.png'))


def test_image_folder_labels_are_sorted_class_folders(tmp_path):
  _write_pngs(tmp_path / 'train' / 'cat', 6, 40)
  _write_pngs(tmp_path / 'train' / 'dog', 6, 200)
  _write_pngs(tmp_path / 'test' / 'emu', 1, 90)  # A class seen only in another split.
  config = _config('image_folder', batch_size=4, image_size=8, channels=1,
                   image_folder=str(tmp_path))
  assert ip.dataset_info(config) == (12, 3)
  for batch in _train(config, 4):
    assert batch['image'].shape == (4, 8, 8, 1) and batch['image'].dtype == np.uint8
    np.testing.assert_array_equal(batch['image'][:, 4, 4, 0],
                                  np.where(batch['label'] == 0, 40, 200))
  first = next(ip.make_eval_iterator(config, num_examples=12, batch_size=12))
  assert 0 < first['label'][:6].sum() < 6  # The eval prefix mixes the classes.


# ----------------------------------------------------------------------------------------------
# The light prepared-check (no TensorFlow)


def test_check_prepared_names_the_fix_without_importing_tensorflow(tmp_path):
  code = ('import sys\n'
          'from ncsn_rin import datasets\n'
          'try:\n'
          f'  datasets.check_prepared("imagenet2012", data_dir={str(tmp_path)!r})\n'
          'except FileNotFoundError as e:\n'
          '  print(e)\n'
          'print("heavy:", [m for m in ("tensorflow", "jax") if m in sys.modules])\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout
  assert "TFDS data set 'imagenet2012' is not prepared" in out and str(tmp_path) in out
  assert 'ILSVRC2012_img_train.tar' in out and 'data.download=True' in out
  assert 'heavy: []' in out


def test_check_prepared_cases(tfds_dir, tmp_path):
  assert datasets.check_prepared('cifar10', data_dir=tfds_dir).is_prepared()
  assert datasets.check_prepared('digits') is None
  assert datasets.dataset_info('cifar10', data_dir=tfds_dir) == (40, 10)
  manual = tmp_path / 'manual'
  manual.mkdir()
  (manual / 'ILSVRC2012_img_val.tar').touch()
  ask = dict(data_dir=str(tmp_path / 'tfds'), manual_dir=str(manual), download=True)
  with pytest.raises(FileNotFoundError, match=r"manual_dir='.*manual' lacks ILSVRC2012_img_train"):
    datasets.check_prepared('imagenet2012', **ask)
  (manual / 'ILSVRC2012_img_train.tar').touch()
  assert not datasets.check_prepared('imagenet2012', **ask).is_prepared()  # To be prepared.
  with pytest.raises(FileNotFoundError, match='no images for split'):
    datasets.check_prepared('image_folder', image_folder=str(manual))


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
