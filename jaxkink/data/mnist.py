"""MNIST and Fashion-MNIST from their IDX files, gzip-compressed or not.

Both datasets use the same four file names (``train-images-idx3-ubyte``,
``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each optionally ``.gz``), so the layouts searched
are the dataset's own directories first (torchvision's ``MNIST/raw/`` or
``FashionMNIST/raw/``, ``mnist/``, ``fashion_mnist/``, ...) and the data
directory itself last: a flat directory is taken to hold the dataset asked
for.
"""

from __future__ import annotations

import numpy as np

from jaxkink.data import files
from jaxkink.data import idx
from jaxkink.data import info
from jaxkink.data.errors import DataError

STEMS = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}

LAYOUTS = {
    'mnist': ('MNIST/raw', 'mnist/raw', 'MNIST', 'mnist', ''),
    'fashion_mnist': ('FashionMNIST/raw', 'fashion_mnist/raw', 'FashionMNIST',
                      'fashion_mnist', 'fashion-mnist', 'fashion',
                      'data/fashion', ''),
}

_TITLES = {'mnist': 'MNIST', 'fashion_mnist': 'Fashion-MNIST'}


def candidate_names(stem: str) -> tuple[str, ...]:
  """File names tried for one IDX file: gzipped, plain, and the dotted
  spelling some mirrors use (``train-images.idx3-ubyte``)."""
  dotted = stem.replace('-idx', '.idx')
  return (f'{stem}.gz', stem, f'{dotted}.gz', dotted)


def read_mnist(data_dir: str, split: str, name: str = 'mnist'
               ) -> tuple[np.ndarray, np.ndarray, str]:
  """Reads one split of MNIST or Fashion-MNIST.

  Args:
    data_dir: the data directory.
    split: ``'train'`` or ``'test'``.
    name: ``'mnist'`` or ``'fashion_mnist'``.

  Returns:
    ``(images, labels, path)``: ``(N, 28, 28, 1)`` uint8 (NHWC), ``(N,)``
    int32, and the images file read.

  Raises:
    DataError: for a missing file (naming every place searched), a malformed
      IDX file, a wrong shape, no images or no labels, a label-count
      mismatch or a label outside 0..9.
  """
  title = f'{_TITLES[name]} {split}'
  image_stem, label_stem = STEMS[split]
  image_path = files.find_file(data_dir, LAYOUTS[name],
                               candidate_names(image_stem), f'{title} images')
  label_path = files.find_file(data_dir, LAYOUTS[name],
                               candidate_names(label_stem), f'{title} labels')
  images = idx.read_idx(image_path)
  labels = idx.read_idx(label_path)
  if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28,
                                                                          28):
    raise DataError(f'{image_path}: expected uint8 images of shape '
                    f'(N, 28, 28), found {images.dtype} {images.shape}')
  if labels.dtype != np.uint8 or labels.ndim != 1:
    raise DataError(f'{label_path}: expected uint8 labels of shape (N,), '
                    f'found {labels.dtype} {labels.shape}')
  if not len(images):
    raise DataError(f'{image_path}: no images: the header says {images.dtype} '
                    f'{images.shape}')
  if not len(labels):
    raise DataError(f'{label_path}: no labels: the header says {labels.dtype} '
                    f'{labels.shape}')
  if len(images) != len(labels):
    raise DataError(f'{title}: {len(images)} images ({image_path}) but '
                    f'{len(labels)} labels ({label_path})')
  info.check_labels(labels, 10, label_path)
  return images[..., None], labels.astype(np.int32), image_path
