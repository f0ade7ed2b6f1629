"""``load``: one entry point for every dataset and source."""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from jaxkink.data import cifar
from jaxkink.data import files
from jaxkink.data import info as info_lib
from jaxkink.data import mnist
from jaxkink.data import sample
from jaxkink.data import svhn
from jaxkink.data import tfds_source
from jaxkink.data.errors import DataError

SOURCES = ('auto', 'native', 'tfds', 'sample')
ORDERS = tfds_source.ORDERS


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """One split of a dataset, whole, in host memory.

  The arrays are read-only, so a cached dataset cannot be changed by
  accident; preprocessing makes new arrays (:func:`jaxkink.data.preprocess`).

  Attributes:
    name: the dataset's name (see :data:`DATASETS`).
    split: ``'train'``, ``'test'`` (or SVHN's ``'extra'``).
    images: ``(N, H, W, C)`` uint8, NHWC.
    labels: ``(N,)`` int32 in ``0 .. num_classes - 1``.
    source: where the data came from (a path, ``tfds: ...`` or
      ``sample: ...``); save it with the results.
  """
  name: str
  split: str
  images: np.ndarray
  labels: np.ndarray
  source: str

  def __post_init__(self):
    shape = self.info.image_shape
    if (self.images.dtype != np.uint8 or self.images.shape[1:] != shape
        or self.labels.shape != self.images.shape[:1]
        or self.labels.dtype != np.int32):
      raise DataError(
          f'{self.name} {self.split}: inconsistent dataset: images '
          f'{self.images.dtype} {self.images.shape} (want uint8 (N, '
          f'{", ".join(map(str, shape))})), labels {self.labels.dtype} '
          f'{self.labels.shape} (want int32 (N,))')
    if not len(self.labels):
      raise DataError(f'{self.name} {self.split}: empty dataset: 0 examples '
                      f'(from {self.source})')
    for field in ('images', 'labels'):
      view = getattr(self, field).view()  # the caller's array keeps its flags
      view.flags.writeable = False
      object.__setattr__(self, field, view)

  @property
  def info(self) -> info_lib.DatasetInfo:
    return info_lib.DATASETS[self.name]

  @property
  def is_sample(self) -> bool:
    """Whether this is the bundled sample rather than the full dataset."""
    return self.source.startswith('sample:')

  def __len__(self) -> int:
    return len(self.labels)

  def describe(self) -> dict[str, object]:
    """A JSON-friendly summary, for saving with results."""
    return {'name': self.name, 'split': self.split,
            'num_examples': len(self), 'source': self.source,
            'image_shape': list(self.info.image_shape),
            'label_counts': np.bincount(
                self.labels, minlength=self.info.num_classes).tolist()}


def load(name: str, split: str = 'train', *,
         data_dir: str | os.PathLike | None = None,
         source: str = 'auto', order: str = 'stored') -> Dataset:
  """Loads a whole split of a dataset into host memory.

  Sources:

  * ``'native'``: the dataset's own files in the data directory
    (``data_dir``, else ``$JAXKINK_DATA_DIR``): MNIST / Fashion-MNIST IDX
    files (gzipped or not; flat, ``MNIST/raw/``, ``mnist/``, ...), CIFAR-10
    python batches (``cifar-10-batches-py/`` or ``cifar-10-python.tar.gz``),
    SVHN ``{train,test,extra}_32x32.mat``.
  * ``'tfds'``: a prepared tensorflow-datasets directory (optional
    dependency; see :mod:`jaxkink.data.tfds_source`): ``array_record``
    without TensorFlow (``jaxkink[tfds]``), ``tfrecord`` through TensorFlow
    (``jaxkink[tfds-tf]``), as its ``dataset_info.json`` says.
  * ``'sample'``: the MNIST sample bundled with the package (MNIST only).
  * ``'auto'`` (default): ``'native'`` when a data directory is configured;
    otherwise the bundled sample for MNIST (a warning says so), and an error
    for the other datasets. A configured directory that lacks the files is
    an error, never a silent fall-back to the sample.

  Args:
    name: ``'mnist'``, ``'fashion_mnist'``, ``'cifar10'`` or ``'svhn'``.
    split: ``'train'`` or ``'test'`` (SVHN also ``'extra'``, which the
      reference code trains on).
    data_dir: the data directory; None or ``''`` means ``$JAXKINK_DATA_DIR``.
    source: ``'auto'``, ``'native'``, ``'tfds'`` or ``'sample'``.
    order: ``'stored'`` (default): the order the source stores;
      ``'native'``: the order of the dataset's native files. The two differ
      only for ``'tfds'``, which stores its own shuffled order; ``'native'``
      undoes it, example for example (:func:`tfds_source.native_positions`).

  Returns:
    A :class:`Dataset` with NHWC uint8 images and int32 labels.

  Raises:
    DataError: with a message naming what was looked for and where, or what
      is wrong with the file.
  """
  info = info_lib.get_info(name)
  info_lib.check_split(info, split)
  _check_source_order(source, order)
  directory = files.resolve_data_dir(data_dir)
  if source == 'auto':
    if directory is not None:
      source = 'native'
    elif info.name == 'mnist':
      source = 'sample'
    else:
      raise DataError(
          f'no data directory configured for {info.name}: pass --data_dir '
          f'(data_dir=...) or set ${files.ENV_VAR}; the bundled sample covers '
          'MNIST only')
  if source == 'sample':
    if info.name != 'mnist':
      raise DataError(f'the bundled sample covers MNIST only, not {info.name}')
    images, labels, where = sample.read_sample(split)
  elif source == 'tfds':
    images, labels, where = tfds_source.read_tfds(info, split, directory,
                                                   order)
  else:
    if directory is None:
      raise DataError(f'source native: no data directory configured for '
                      f'{info.name}: pass --data_dir (data_dir=...) or set '
                      f'${files.ENV_VAR}')
    images, labels, where = _read_native(info.name, split, directory)
  return Dataset(info.name, split, images, labels, where)


def _check_source_order(source: str, order: str) -> None:
  if source not in SOURCES:
    raise DataError(f'unknown data source {source!r}; valid: '
                    f'{", ".join(SOURCES)}')
  if order not in ORDERS:
    raise DataError(f'unknown data order {order!r}; valid: '
                    f'{", ".join(ORDERS)}')


def requested(source: str = 'auto', order: str = 'stored') -> dict[str, str]:
  """The ``load`` arguments a run asked for, for its settings: only those
  not at their default (``source='auto'``, ``order='stored'``), so that the
  settings of a run that gives neither are those it had before they
  existed, as ``{'data_source': ..., 'data_order': ...}``.

  Raises:
    DataError: an unknown source or order.
  """
  _check_source_order(source, order)
  out = {}
  if source != 'auto':
    out['data_source'] = source
  if order != 'stored':
    out['data_order'] = order
  return out


def _read_native(name: str, split: str, directory: str):
  if name in ('mnist', 'fashion_mnist'):
    return mnist.read_mnist(directory, split, name)
  if name == 'cifar10':
    return cifar.read_cifar10(directory, split)
  path = files.find_file(directory, svhn.LAYOUTS, (svhn.file_name(split),),
                         f'SVHN {split}')
  return (*svhn.read_svhn_mat(path), path)
