"""SVHN's cropped digits: ``{train,test,extra}_32x32.mat``.

Each is a MATLAB v5 file with two variables: ``X``, uint8 of shape
``(32, 32, 3, N)`` (height, width, channel, example), and ``y``, ``(N, 1)``
with labels 1..10, where **10 means the digit 0** (format description:
http://ufldl.stanford.edu/housenumbers/). They are read with
``scipy.io.loadmat``: scipy is already a dependency of jax and jaxlib, and
loadmat only builds arrays (it runs no code from the file).
"""

from __future__ import annotations

import os

import numpy as np

from jaxkink.data.errors import DataError

LAYOUTS = ('', 'svhn', 'SVHN', 'svhn_cropped')


def file_name(split: str) -> str:
  """``train_32x32.mat``, ``test_32x32.mat`` or ``extra_32x32.mat``."""
  return f'{split}_32x32.mat'


def read_svhn_mat(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Reads one SVHN ``*_32x32.mat`` file.

  Returns:
    ``(images, labels)``: ``(N, 32, 32, 3)`` uint8 (NHWC) and ``(N,)`` int32
    in 0..9 (the file's label 10 becomes 0).

  Raises:
    DataError: for an unreadable, truncated or non-v5 MAT file, a missing
      variable, a wrong shape or dtype, no images, a label-count mismatch or
      a label outside 1..10.
  """
  path = os.fspath(path)
  import scipy.io  # pylint: disable=g-import-not-at-top  (slow import)
  try:
    mat = scipy.io.loadmat(path, variable_names=('X', 'y'))
  except FileNotFoundError as e:
    raise DataError(f'cannot read {path}: {e.strerror or e}') from e
  except NotImplementedError as e:
    raise DataError(f'{path}: MAT v7.3 (HDF5) files are not supported; the '
                    'SVHN files are MAT v5 (save with -v7 or older)') from e
  except Exception as e:  # pylint: disable=broad-except
    # Untrusted input: scipy raises many types on malformed files.
    raise DataError(f'{path}: not a readable MAT v5 file (truncated or '
                    f'corrupt?): {type(e).__name__}: {e}') from e
  missing = [k for k in ('X', 'y') if k not in mat]
  if missing:
    found = sorted(k for k in mat if not k.startswith('__'))
    raise DataError(f'{path}: no variable {" or ".join(missing)} (an SVHN '
                    f'file has X and y; this one has {found}; truncated?)')
  x, y = mat['X'], mat['y']
  if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
    raise DataError(f'{path}: X must be uint8 of shape (32, 32, 3, N), found '
                    f'{x.dtype} {x.shape}')
  n = x.shape[3]
  if not n:
    raise DataError(f'{path}: no images: X has shape {x.shape}')
  if y.size != n or (y.ndim == 2 and 1 not in y.shape) or y.ndim > 2:
    raise DataError(f'{path}: {n} images (X) but y has shape {y.shape}')
  y = y.reshape(-1)
  if not (np.issubdtype(y.dtype, np.integer) or
          np.issubdtype(y.dtype, np.floating)) or np.any(y != np.round(y)):
    raise DataError(f'{path}: y must hold integer labels, found {y.dtype}')
  labels = y.astype(np.int64)
  bad = (labels < 1) | (labels > 10)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise DataError(f'{path}: label {labels[i]} at index {i} is outside 1..10 '
                    '(SVHN labels are 1..10, with 10 for the digit 0)')
  labels[labels == 10] = 0
  return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), labels.astype(np.int32)
