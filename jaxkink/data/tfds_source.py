"""tensorflow-datasets as an optional source (``source='tfds'``).

Reads a data directory that tensorflow-datasets prepared beforehand
(``tfds build mnist --data_dir=...`` on a machine with internet access, then
copied); nothing is ever downloaded. The directory is ``data_dir`` if given,
else ``$JAXKINK_DATA_DIR``, else tensorflow-datasets' own default
(``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``); the dataset is
``<dir>/<name>/<version>/``, the newest version there.

How it is read follows the dataset's own ``dataset_info.json``
(``fileFormat``; absent means ``tfrecord``, tensorflow-datasets' default):

* ``array_record`` (random access): ``tfds.data_source``, which needs only
  ``tensorflow-datasets`` and ``array_record`` (``pip install
  'jaxkink[tfds]'``), no TensorFlow. The records are read in batches and
  their PNG images decoded for a whole batch at once
  (:mod:`jaxkink.data.png`): MNIST's 60000 training digits in about a
  second, against 5 to 30 s one example at a time.
* ``parquet`` (random access): ``tfds.data_source`` too, decoded by
  tensorflow-datasets example by example (needs ``pyarrow``).
* ``tfrecord`` (and any other format): ``tfds.load``, which needs TensorFlow
  (``pip install 'jaxkink[tfds-tf]'``).

Order. tensorflow-datasets stores a split in its own shuffled order: it
sorts the examples by ``md5(split name + str(key))`` (``tfds.core.hashing``),
where the key is the one the builder gave the example; the builders of
``mnist``, ``fashion_mnist``, ``cifar10`` and ``svhn_cropped`` key every
example by its index in the dataset's native files. ``order='native'``
undoes that sort, so the arrays are those of the native files, example for
example (checked bit for bit against MNIST's IDX files by the tests). Where
the records carry that index themselves (the ``id`` of CIFAR-10,
``'train_00042'``, and of svhn_cropped 3.1.0, ``'extra_000042'``), it is
used and checked against the hash order; a split
prepared with ``disable_shuffling`` is already in its native order.

Names used: ``mnist``, ``fashion_mnist``, ``cifar10``, ``svhn_cropped``
(whose labels are already 0..9).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
from typing import Any, Sequence

import numpy as np

from jaxkink.data import info as info_lib
from jaxkink.data import png
from jaxkink.data.errors import DataError

ORDERS = ('stored', 'native')
TFDS_ENV_VAR = 'TFDS_DATA_DIR'
# Formats tfds.data_source reads (random access), and the module each needs.
RANDOM_ACCESS = {'array_record': 'array_record', 'parquet': 'pyarrow'}
# Records read and decoded at a time (bounds the memory of the raw records).
BATCH = 8192
INSTALL_LIGHT = "pip install 'jaxkink[tfds]'"
INSTALL_TF = "pip install 'jaxkink[tfds-tf]'"


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A prepared dataset as its ``dataset_info.json`` describes it.

  Attributes:
    root: the tensorflow-datasets data directory.
    name: the dataset's name there.
    version: the version directory read (the newest one).
    path: ``root/name/version``.
    file_format: ``fileFormat`` (``'tfrecord'`` when absent).
    splits: the number of examples of each split.
    disable_shuffling: whether it was prepared in its builder's order.
  """
  root: str
  name: str
  version: str
  path: str
  file_format: str
  splits: dict[str, int]
  disable_shuffling: bool


def tfds_root(directory: str | None) -> str:
  """``directory``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
  return os.path.abspath(os.path.expanduser(
      directory or os.environ.get(TFDS_ENV_VAR) or '~/tensorflow_datasets'))


def _version_key(v: str) -> tuple[int, ...]:
  return tuple(int(p) for p in v.split('.'))


def find_prepared(root: str, name: str) -> Prepared:
  """The newest ``root/name/<x.y.z>/`` holding a ``dataset_info.json``.

  Raises:
    DataError: none there, or a ``dataset_info.json`` that cannot be read.
  """
  base = os.path.join(root, name)
  versions = sorted(
      (v for v in (os.listdir(base) if os.path.isdir(base) else ())
       if re.fullmatch(r'\d+\.\d+\.\d+', v)
       and os.path.isfile(os.path.join(base, v, 'dataset_info.json'))),
      key=_version_key)
  if not versions:
    raise DataError(
        f'source tfds: no prepared tensorflow-datasets {name!r} in {root} '
        f'(looked for {os.path.join(base, "<version>", "dataset_info.json")}'
        '); prepare it beforehand (tfds build ' + name + ' --data_dir=... '
        'on a machine with internet access): nothing is downloaded')
  version = versions[-1]
  path = os.path.join(base, version)
  info_path = os.path.join(path, 'dataset_info.json')
  try:
    with open(info_path, 'rb') as f:
      meta = json.loads(f.read(1 << 24))
    splits = {str(s['name']): sum(int(n) for n in s.get('shardLengths', ()))
              for s in meta.get('splits', ())}
    file_format = str(meta.get('fileFormat') or 'tfrecord')
  except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
    raise DataError(f'{info_path}: not a readable tensorflow-datasets '
                    f'dataset_info.json: {type(e).__name__}: {e}') from e
  return Prepared(root, name, version, path, file_format, splits,
                  bool(meta.get('disableShuffling', False)))


def _missing(modules: Sequence[str]) -> list[str]:
  out = []
  for m in modules:
    try:
      if importlib.util.find_spec(m) is None:
        out.append(m)
    except (ImportError, ValueError):  # a None entry in sys.modules
      out.append(m)
  return out


_PIP_NAMES = {'tensorflow_datasets': 'tensorflow-datasets',
              'array_record': 'array_record', 'pyarrow': 'pyarrow',
              'tensorflow': 'tensorflow'}


def _require(prep: Prepared) -> None:
  """One error naming what reading ``prep`` needs and is not installed."""
  fmt = prep.file_format
  if fmt in RANDOM_ACCESS:
    needed = ['tensorflow_datasets', RANDOM_ACCESS[fmt]]
    how = (f'which tfds.data_source reads without TensorFlow: needs '
           f'tensorflow-datasets and {_PIP_NAMES[RANDOM_ACCESS[fmt]]}: '
           f'{INSTALL_LIGHT}')
  else:
    needed = ['tensorflow_datasets', 'tensorflow']
    how = (f'which tensorflow-datasets reads only through TensorFlow '
           f'(tfds.load): needs tensorflow-datasets and TensorFlow: '
           f'{INSTALL_TF}; or prepare it in array_record format, which '
           'needs no TensorFlow to read (tfds build <name> '
           '--file_format=array_record, where TensorFlow is installed)')
  missing = _missing(needed)
  if missing:
    raise DataError(
        f"data source 'tfds': {prep.path} is in {fmt} format (its "
        f'dataset_info.json), {how} (missing: '
        f'{", ".join(_PIP_NAMES[m] for m in missing)}); or use the native '
        "files (source 'native')")


def read_tfds(info: info_lib.DatasetInfo, split: str, data_dir: str | None,
              order: str = 'stored') -> tuple[np.ndarray, np.ndarray, str]:
  """Reads a whole split from a prepared tensorflow-datasets directory.

  Args:
    info: the dataset.
    split: its split.
    data_dir: the tensorflow-datasets data directory (None: its default).
    order: ``'stored'`` (tensorflow-datasets' shuffled order) or
      ``'native'`` (the order of the dataset's native files).

  Returns:
    ``(images, labels, description)``: NHWC uint8, int32, and the source.

  Raises:
    DataError: a package missing for the directory's format (named), the
      split not prepared there, or records of the wrong shape or content.
  """
  if order not in ORDERS:
    raise DataError(f'unknown data order {order!r}; valid: '
                    f'{", ".join(ORDERS)}')
  prep = find_prepared(tfds_root(data_dir), info.tfds_name)
  if split not in prep.splits:
    raise DataError(f'{prep.path}: no split {split!r} prepared (its splits: '
                    f'{", ".join(prep.splits) or "none"})')
  _require(prep)
  what = f'tensorflow-datasets {info.tfds_name}:{split} ({prep.path})'
  try:
    if prep.file_format in RANDOM_ACCESS:
      images, labels, ids = _read_data_source(info, prep, split, what)
    else:
      images, labels, ids = _read_load(info, prep, split, what)
  except DataError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # tfds raises many types (AssertionError, DatasetNotFoundError, ...).
    raise DataError(f'{what}: tensorflow-datasets could not read it: '
                    f'{type(e).__name__}: {e}') from e
  _check(info, images, labels, what)
  if len(labels) != prep.splits[split]:
    raise DataError(f'{what}: {len(labels)} examples read, its '
                    f'dataset_info.json says {prep.splits[split]}')
  if order == 'native':
    perm = native_positions(split, len(labels), ids, prep.disable_shuffling,
                            what)
    native_images = np.empty_like(images)
    native_labels = np.empty_like(labels)
    native_images[perm] = images
    native_labels[perm] = labels
    images, labels = native_images, native_labels
  return images, labels.astype(np.int32), (
      f'tfds: {info.tfds_name}:{prep.version} {split} ({prep.file_format}, '
      f'{order} order) from {prep.root}')


def native_positions(split: str, n: int, ids: Sequence[str] | None = None,
                     disable_shuffling: bool = False,
                     what: str = 'tfds') -> np.ndarray:
  """``perm[j]``: the native index of the ``j``-th stored example.

  tensorflow-datasets sorts a split's examples by the 128-bit
  ``md5(split + str(key))`` (``tfds.core.hashing.Hasher``); the builders
  read here key each example by its index in the native files. With
  ``ids`` (CIFAR-10's and svhn_cropped's ``'<split>_<index>'``), the indices
  are read from them and must agree with that order.

  Raises:
    DataError: ids that are not ``<split>_<index>`` for a permutation of
      ``0..n-1``, or that disagree with the hash order.
  """
  if disable_shuffling:
    by_hash = np.arange(n)
  else:
    salted = hashlib.md5(split.encode())
    keys = []
    for i in range(n):
      h = salted.copy()
      h.update(str(i).encode())
      keys.append(h.digest())  # big-endian bytes sort as the integers
    by_hash = np.asarray(sorted(range(n), key=keys.__getitem__), np.int64)
  if ids is None:
    return by_hash
  prefix = f'{split}_'
  try:
    from_ids = np.asarray([int(i[len(prefix):]) if i.startswith(prefix)
                           else -1 for i in ids], np.int64)
  except ValueError:
    from_ids = np.full(len(ids), -1)
  if (len(from_ids) != n or from_ids.min(initial=0) < 0
      or not np.array_equal(np.sort(from_ids), np.arange(n))):
    raise DataError(f'{what}: the ids are not {prefix}<index> for the '
                    f'indices 0..{n - 1}')
  if not np.array_equal(from_ids, by_hash):
    raise DataError(f"{what}: the ids' order is not tensorflow-datasets' "
                    'hash order of the indices; the native order cannot be '
                    'trusted')
  return from_ids


def _check(info: info_lib.DatasetInfo, images: np.ndarray,
           labels: np.ndarray, what: str) -> None:
  if (images.dtype != np.uint8 or images.ndim != 4
      or images.shape[1:] != info.image_shape):
    shape = ', '.join(map(str, info.image_shape))
    raise DataError(f'{what}: expected uint8 images of shape (N, {shape}), '
                    f'found {images.dtype} {images.shape}')
  if labels.shape != (len(images),):
    raise DataError(f'{what}: {len(images)} images but labels of shape '
                    f'{labels.shape}')
  info_lib.check_labels(labels, info.num_classes, what)


def _features(info: info_lib.DatasetInfo, features: Any, what: str) -> bool:
  """Checks the prepared features against ``info``; whether the images
  are PNGs (else they are decoded by tensorflow-datasets)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  keys = set(features.keys())
  if not {'image', 'label'} <= keys:
    raise DataError(f'{what}: features {sorted(keys)}, expected image and '
                    'label')
  image, label = features['image'], features['label']
  if (not isinstance(image, tfds.features.Image)
      or tuple(image.shape) != info.image_shape
      or np.dtype(image.np_dtype) != np.uint8):
    raise DataError(f'{what}: image feature {image!r}, expected a uint8 '
                    f'Image of shape {info.image_shape}')
  if (not isinstance(label, tfds.features.ClassLabel)
      or label.num_classes != info.num_classes):
    raise DataError(f'{what}: label feature {label!r}, expected a '
                    f'ClassLabel of {info.num_classes} classes')
  return image.encoding_format in (None, 'png')


def _read_data_source(info: info_lib.DatasetInfo, prep: Prepared, split: str,
                      what: str) -> tuple[np.ndarray, np.ndarray,
                                          list[str] | None]:
  """Random access through ``tfds.data_source``, in batches."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  src = tfds.data_source(f'{prep.name}:{prep.version}', split=split,
                         data_dir=prep.root, download=False)
  features = src.dataset_info.features
  is_png = _features(info, features, what)
  has_id = 'id' in features.keys()
  n = len(src)
  images = np.empty((n,) + info.image_shape, np.uint8)
  labels = np.empty(n, np.int64)
  ids: list[str] | None = [] if has_id else None
  raw_source: Any = getattr(src, 'data_source', None)
  fast = (is_png and prep.file_format == 'array_record'
          and callable(getattr(raw_source, '__getitems__', None)))
  if fast:
    # The serialized tf.train.Example of each record (tensorflow-datasets'
    # own copy of the proto, so no TensorFlow).
    from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
    decode_one = features['image'].decode_example_np
  for start in range(0, n, BATCH):
    idx = list(range(start, min(n, start + BATCH)))
    if fast:
      records = raw_source.__getitems__(idx)
      blobs, labs = [], []
      for record in records:
        fs = tf_example_pb2.Example.FromString(record).features.feature
        blobs.append(fs['image'].bytes_list.value[0])
        labs.append(fs['label'].int64_list.value[0])
        if ids is not None:
          ids.append(fs['id'].bytes_list.value[0].decode())
      images[idx[0]:idx[-1] + 1] = png.decode_batch(
          blobs, info.image_shape, f'{what} from {idx[0]}',
          fallback=decode_one)
      labels[idx[0]:idx[-1] + 1] = labs
    else:  # tensorflow-datasets decodes each example
      items = src.__getitems__(idx)
      images[idx[0]:idx[-1] + 1] = np.stack([it['image'] for it in items])
      labels[idx[0]:idx[-1] + 1] = [int(it['label']) for it in items]
      if ids is not None:
        ids.extend(_text(it['id']) for it in items)
  return images, labels, ids


def _text(v: Any) -> str:
  return v.decode() if isinstance(v, bytes) else str(v)


def _read_load(info: info_lib.DatasetInfo, prep: Prepared, split: str,
               what: str) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
  """The whole split as one batch through ``tfds.load`` (TensorFlow)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ds, tinfo = tfds.load(f'{prep.name}:{prep.version}', split=split,
                        data_dir=prep.root, download=False, batch_size=-1,
                        shuffle_files=False, with_info=True)
  _features(info, tinfo.features, what)
  ds = tfds.as_numpy(ds)
  ids = ([_text(v) for v in np.asarray(ds['id']).ravel()]
         if 'id' in ds else None)
  return np.asarray(ds['image']), np.asarray(ds['label']), ids
