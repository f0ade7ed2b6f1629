"""The MNIST sample that ships inside the package.

``mnist_sample.npz`` holds the first 2000 digits of MNIST's training file and
the first 1000 of its test file, unchanged (uint8, 28x28), so that the main
experiment runs on a machine with no data set up. It is used when no data
directory is configured, and a warning says so every time.

Source: the MNIST database of handwritten digits, Yann LeCun and Corinna
Cortes (with Christopher J.C. Burges), http://yann.lecun.com/exdb/mnist/,
files ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``. License of the
data (and of this sample file): Creative Commons Attribution-Share Alike 3.0
(CC BY-SA 3.0). The file is regenerated, byte for byte, by
``tools/make_data_sample.py`` (:func:`build_sample`); its ``about`` entry
repeats this notice.
"""

from __future__ import annotations

from importlib import resources
import io
import zipfile

from absl import logging
import numpy as np

from jaxkink.data import mnist
from jaxkink.data.errors import DataError

FILE_NAME = 'mnist_sample.npz'
SPLITS = {'train': 2000, 'test': 1000}
ABOUT = (
    'jaxkink MNIST sample: the first 2000 images of train-images-idx3-ubyte '
    'and the first 1000 of t10k-images-idx3-ubyte (with their labels), '
    'unchanged, from the MNIST database of handwritten digits by Yann LeCun '
    'and Corinna Cortes (with Christopher J.C. Burges), '
    'http://yann.lecun.com/exdb/mnist/. License: Creative Commons '
    'Attribution-Share Alike 3.0 (CC BY-SA 3.0).')


def sample_path() -> str:
  """Where the sample file is (inside the installed package)."""
  return str(resources.files('jaxkink.data').joinpath(FILE_NAME))


def read_sample(split: str, *, quiet: bool = False):
  """One split of the bundled MNIST sample.

  Args:
    split: ``'train'`` (2000 digits) or ``'test'`` (1000 digits).
    quiet: do not log the warning that the sample is in use.

  Returns:
    ``(images, labels, description)``: ``(N, 28, 28, 1)`` uint8, ``(N,)``
    int32, and a one-line description of the source.

  Raises:
    DataError: for an unknown split, or if the file is missing from the
      installation.
  """
  if split not in SPLITS:
    raise DataError(f'the MNIST sample has no split {split!r}; its splits: '
                    f'{", ".join(SPLITS)}')
  path = sample_path()
  try:
    with np.load(path, allow_pickle=False) as npz:
      images, labels = npz[f'{split}_images'], npz[f'{split}_labels']
  except (OSError, KeyError, ValueError) as e:
    raise DataError(f'the bundled MNIST sample {path} is missing or damaged '
                    f'({e}); reinstall jaxkink') from e
  description = (f'sample: {path} (MNIST, first {len(images)} of the {split} '
                 'file; CC BY-SA 3.0, Yann LeCun and Corinna Cortes)')
  if not quiet:
    logging.warning(
        'Using the bundled MNIST sample (%d %s digits), NOT the full '
        'dataset: no data directory is configured. Pass --data_dir or set '
        'JAXKINK_DATA_DIR to a directory with the MNIST files for real '
        'runs.', len(images), split)
  return images[..., None], labels.astype(np.int32), description


_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip file can hold


def build_sample(mnist_dir: str) -> bytes:
  """The sample file's bytes, cut from the MNIST IDX files in ``mnist_dir``.

  An ``.npz`` as ``np.savez_compressed`` writes it, but with fixed member
  order and timestamps and deflate level 9, so the same MNIST files always
  give the same bytes.

  Raises:
    DataError: if the MNIST files are missing, malformed or too short.
  """
  arrays = {'about': np.array(ABOUT)}
  for split, count in SPLITS.items():
    images, labels, _ = mnist.read_mnist(mnist_dir, split)
    if len(images) < count:
      raise DataError(f'{mnist_dir}: only {len(images)} {split} digits, the '
                      f'sample needs {count}')
    arrays[f'{split}_images'] = np.ascontiguousarray(images[:count, ..., 0])
    arrays[f'{split}_labels'] = labels[:count].astype(np.uint8)
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, 'w', zipfile.ZIP_DEFLATED) as zf:
    for name in sorted(arrays):
      member = io.BytesIO()
      np.lib.format.write_array(member, arrays[name], allow_pickle=False)
      info = zipfile.ZipInfo(f'{name}.npy', date_time=_EPOCH)
      info.compress_type = zipfile.ZIP_DEFLATED
      info.external_attr = 0o644 << 16
      zf.writestr(info, member.getvalue(), compresslevel=9)
  return buffer.getvalue()
