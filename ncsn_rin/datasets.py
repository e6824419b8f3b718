"""The image data sets: their names, sizes, labels, and whether they are on disk.

Imports neither TensorFlow nor JAX (`tensorflow_datasets` loads TensorFlow lazily, and building a
TFDS builder or reading its `dataset_info.json` does not), so the config gate can call
`check_prepared` in well under a second, before anything slow. `input_pipeline` streams the data.

Names (config.data.name): digits (scikit-learn's 1,797 8x8 digits, embedded), the TFDS data sets
`TFDS_NAMES`, and image_folder (config.data.image_folder: root/<split>/<label>/*.png in the
tfds.ImageFolder layout, labels = sorted label folder names over all splits; or a flat folder
root/*.png, label 0; extensions `IMAGE_EXTENSIONS`).
"""

import functools
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

TFDS_NAMES = ('cifar10', 'celeb_a', 'imagenet2012', 'lsun/church_outdoor', 'lsun/bedroom')
DATASET_NAMES = ('digits',) + TFDS_NAMES + ('image_folder',)
TFDS_NUM_CLASSES = {'cifar10': 10, 'imagenet2012': 1000}  # Others: unlabelled (0).
DIGITS_NUM_EXAMPLES, DIGITS_NUM_CLASSES = 1797, 10
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
IMAGENET_TARS = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')


@functools.lru_cache(maxsize=1)
def load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn digits: uint8 images [1797, 8, 8, 1] (0..16 -> 0..255), int32 labels [1797]."""
  from sklearn import datasets as sklearn_datasets  # pylint: disable=g-import-not-at-top
  digits = sklearn_datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
  return images[..., None], digits.target.astype(np.int32)


# ------------------------------------------------------------------------------------------------
# Image folders.


def _image_folder_help(root: str) -> str:
  return (f'Expected config.data.image_folder={root!r} to be either root/<split>/<label>/*.png '
          '(tfds.ImageFolder layout, e.g. root/train/cat/001.png; labels = sorted label folder '
          f'names) or a flat folder of images root/*.png; extensions {IMAGE_EXTENSIONS}.')


def _images_in(folder: epath.Path) -> list[str]:
  return sorted(str(p) for p in folder.iterdir()
                if p.name.lower().endswith(IMAGE_EXTENSIONS) and not p.is_dir())


def _subfolders(folder: epath.Path) -> list[str]:
  return sorted(p.name for p in folder.iterdir() if p.is_dir())


def image_folder_examples(root: str, split: str) -> tuple[list[str], np.ndarray, int]:
  """(paths [N], int32 labels [N], num_classes; 0 for a flat folder) of an image folder's split.

  The order is a fixed shuffle (seed 0) of the sorted paths, so the first n images (what the eval
  iterator reads) are an unbiased subset rather than the first classes.
  """
  root_path = epath.Path(os.path.expanduser(root))
  if not root or not root_path.is_dir():
    raise FileNotFoundError(f'image_folder: folder {root!r} not found. ' + _image_folder_help(root))
  if (root_path / split).is_dir():
    classes = sorted({c for s in _subfolders(root_path) for c in _subfolders(root_path / s)})
    examples = [(p, i) for i, c in enumerate(classes) if (root_path / split / c).is_dir()
                for p in _images_in(root_path / split / c)]
    num_classes = len(classes)
  else:
    examples, num_classes = [(p, 0) for p in _images_in(root_path)], 0
  if not examples:
    raise FileNotFoundError(f'image_folder: no images for split {split!r} in {root!r}. '
                            + _image_folder_help(root))
  paths, labels = zip(*[examples[i] for i in np.random.default_rng(0).permutation(len(examples))])
  return list(paths), np.array(labels, np.int32), num_classes


# ------------------------------------------------------------------------------------------------
# TFDS.


def _prepare_hint(name: str, builder, data_dir: str, manual_dir: str) -> str:
  """How to prepare a missing TFDS data set."""
  dd = f", data_dir='{data_dir}'" if data_dir else ''
  if name == 'imagenet2012':
    manual = manual_dir or '<manual_dir>'
    return (f"Put the manual download files {' and '.join(IMAGENET_TARS)} "
            f"(from https://image-net.org/download-images) in config.data.manual_dir "
            f"(now {manual_dir!r}), then run: python -c \"import tensorflow_datasets "
            f"as tfds; tfds.builder('imagenet2012'{dd}).download_and_prepare(download_config="
            f"tfds.download.DownloadConfig(manual_dir='{manual}'))\" or pass "
            f"--config.data.download=True --config.data.manual_dir={manual}. "
            f'TFDS data_dir: {builder.data_dir}.')
  return (f"Prepare it once (needs network): python -c \"import tensorflow_datasets as tfds; "
          f"tfds.builder('{name}'{dd}).download_and_prepare()\", or pass "
          f'--config.data.download=True (downloads into {builder.data_dir}); or point '
          '--config.data.data_dir at a directory that already holds it.')


def check_prepared(name: str, *, data_dir: str = '', manual_dir: str = '', download: bool = False,
                   image_folder: str = '', split: str = 'train'):
  """Raises FileNotFoundError, saying how to fix it, unless data set `name` can be read.

  TFDS: prepared under data_dir ('' = the TFDS default), or download=True (for imagenet2012 with
  a manual_dir, its two tars must be there). image_folder: the folder holds images for `split`.
  Returns the TFDS builder (prepared, or to be prepared when download=True), else None.
  """
  if name == 'image_folder':
    image_folder_examples(image_folder, split)
  if name not in TFDS_NAMES:
    return None
  builder = tfds.builder(name, data_dir=data_dir or None)
  if builder.is_prepared():
    return builder
  if not download:
    raise FileNotFoundError(
        f'TFDS data set {name!r} is not prepared: looked for {builder.data_dir} '
        f'(config.data.data_dir={data_dir!r}). ' + _prepare_hint(name, builder, data_dir,
                                                                 manual_dir))
  manual = os.path.expanduser(manual_dir) if manual_dir else ''
  missing = [f for f in IMAGENET_TARS if not os.path.isfile(os.path.join(manual, f))]
  if name == 'imagenet2012' and manual and missing:  # Unset: TFDS's default dir, its own check.
    raise FileNotFoundError(
        f'config.data.manual_dir={manual_dir!r} lacks {", ".join(missing)} (ImageNet is a manual '
        'download). ' + _prepare_hint(name, builder, data_dir, manual_dir))
  return builder


def dataset_info(name: str, *, split: str = 'train', data_dir: str = '',
                 image_folder: str = '') -> tuple[int, int]:
  """(number of examples in `split`, number of classes; 0 when unlabelled), reading no images;
  TFDS data sets must be prepared (see `check_prepared`)."""
  if name == 'digits':
    return DIGITS_NUM_EXAMPLES, DIGITS_NUM_CLASSES
  if name == 'image_folder':
    paths, _, num_classes = image_folder_examples(image_folder, split)
    return len(paths), num_classes
  builder = tfds.builder(name, data_dir=data_dir or None)
  return int(builder.info.splits[split].num_examples), TFDS_NUM_CLASSES.get(name, 0)
