"""The CIFAR-10 sample of a data directory.

``cifar10-first4000/cifar10_first4000.npz`` holds the first 4000 images of
CIFAR-10's ``data_batch_1``, unchanged: ``x`` ``(4000, 32, 32, 3)`` uint8
(HWC) and ``y`` ``(4000,)``, classes in CIFAR-10's order. It has no test
split. The volume and training scripts read it as ``cifar10_sample``.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from jaxkink.data import files
from jaxkink.data.datasets import Dataset
from jaxkink.data.errors import DataError

NAME = 'cifar10_sample'
FILE = os.path.join('cifar10-first4000', 'cifar10_first4000.npz')


def read_cifar10_sample(data_dir: str | os.PathLike | None = None
                        ) -> Dataset:
  """The sample as a ``cifar10`` ``'train'`` split whose ``source`` starts
  with ``'sample: '`` (so that a summary says it is not the full set).

  Args:
    data_dir: the data directory (default: ``$JAXKINK_DATA_DIR``); the
      source names it as given (a relative path stays relative).

  Raises:
    DataError: no data directory, no sample file in it, or a file that is
      not the sample (not an ``.npz``, no ``x`` / ``y``, other shapes or
      labels).
  """
  directory = files.resolve_data_dir(data_dir)
  if directory is None:
    raise DataError(f'{NAME} needs {FILE} in the data directory, and none '
                    f'is set (--data_dir or ${files.ENV_VAR})')
  path = os.path.join(directory, FILE)
  if not os.path.isfile(path):
    raise DataError(f'{NAME} needs {FILE} in the data directory: {path!r} '
                    'does not exist')
  try:
    with np.load(path, allow_pickle=False) as z:
      x, y = np.asarray(z['x']), np.asarray(z['y'])
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(f'{path!r} is not the CIFAR-10 sample (an .npz with '
                    f'arrays x and y): {e}') from e
  if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (
      y.size and not 0 <= y.min() <= y.max() < 10):
    raise DataError(f'{path!r}: labels y {y.dtype} {y.shape} are not '
                    'integers in 0 .. 9')
  shown = os.path.join(os.fspath(data_dir) if data_dir is not None
                       else f'${files.ENV_VAR}', FILE)
  return Dataset('cifar10', 'train', x, y.astype(np.int32),
                 f'sample: {shown} (the first {len(y)} images of CIFAR-10 '
                 'data_batch_1)')
