"""CIFAR-10's python version: pickled batches, as files or inside the archive.

``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/data_batch_1`` ..
``data_batch_5`` (10000 training images each), ``test_batch`` and
``batches.meta``. Each batch is a pickled dict written by Python 2's cPickle:
``data`` a ``(10000, 3072)`` uint8 numpy array (each row the red, green and
blue 32x32 planes in turn), ``labels`` a list of ints in 0..9, plus
``batch_label`` and ``filenames``. Format description:
https://www.cs.toronto.edu/~kriz/cifar.html.

Pickles are untrusted input: unpickling can call any importable function
(``os.system`` through ``__reduce__``, for instance). :func:`safe_loads`
therefore uses a restricted unpickler. Plain containers, strings, bytes,
numbers, booleans and None need no import and are always built; the only
globals it resolves are the three a pickled numpy array needs, because
``data`` *is* a numpy array in the real files:

* ``numpy.core.multiarray._reconstruct`` (the name in the real files,
  written by numpy 1.x; ``numpy._core.multiarray._reconstruct`` in pickles
  written by numpy 2), called as ``_reconstruct(ndarray, shape, typecode)``
  to make an empty array whose state is then set from the raw bytes;
* ``numpy.ndarray``, its first argument;
* ``numpy.dtype``, for the array's dtype.

Nothing else (no other numpy function, no ``_codecs.encode``, no
``numpy._core.numeric._frombuffer``, which protocol 5 pickles use) is
resolved: any other global raises :class:`DataError` naming it. The names are
mapped straight to the objects, without importing the module the pickle
names. After loading, ``data`` must be a uint8 array, so an object array
cannot slip through.
"""

from __future__ import annotations

import io
import os
import pickle
import posixpath
import tarfile
import zlib
from typing import Any, Sequence

import numpy as np

from jaxkink.data import files
from jaxkink.data import info
from jaxkink.data.errors import DataError

TRAIN_BATCHES = tuple(f'data_batch_{i}' for i in range(1, 6))
TEST_BATCHES = ('test_batch',)
ARCHIVE = 'cifar-10-python.tar.gz'
BATCH_DIR = 'cifar-10-batches-py'

# Directories (relative to the data directory) searched for the batches, and
# for the archive, in order.
BATCH_LAYOUTS = (BATCH_DIR, f'cifar10/{BATCH_DIR}', f'CIFAR10/{BATCH_DIR}',
                 f'cifar-10/{BATCH_DIR}', 'cifar10', 'CIFAR10', 'cifar-10', '')
ARCHIVE_LAYOUTS = ('', 'cifar10', 'CIFAR10', 'cifar-10')

try:
  from numpy._core.multiarray import _reconstruct  # numpy >= 2
except ImportError:  # pragma: no cover (numpy 1.x)
  # pylint: disable-next=g-import-not-at-top
  from numpy.core.multiarray import _reconstruct

_ALLOWED_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'): _reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _reconstruct,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
}


class _Refused(pickle.UnpicklingError):
  pass


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the numpy array globals in ``_ALLOWED_GLOBALS``."""

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise _Refused(f'{module}.{name}') from None

  def persistent_load(self, pid: Any) -> Any:
    raise _Refused(f'persistent id {pid!r}')


def safe_loads(raw: bytes, name: str = '<bytes>') -> Any:
  """Unpickles untrusted bytes with the restricted unpickler (module doc).

  Strings written by Python 2 are decoded as latin-1, as numpy's own
  Python 2 compatibility expects.

  Raises:
    DataError: if the pickle needs anything but plain values and numpy
      arrays, or is truncated or corrupt.
  """
  try:
    return _RestrictedUnpickler(io.BytesIO(raw), encoding='latin1').load()
  except _Refused as e:
    raise DataError(
        f'{name}: refused to unpickle: the pickle asks for {e}, but only '
        'plain containers, strings, bytes, numbers and numpy arrays are '
        'allowed in a CIFAR-10 batch (a pickle can run arbitrary code, so '
        'untrusted ones are restricted)') from None
  except Exception as e:  # pylint: disable=broad-except
    # Untrusted input: any failure inside the unpickler (EOFError when
    # truncated, UnpicklingError, ValueError or TypeError from numpy when
    # corrupt) is reported the same way.
    raise DataError(f'{name}: not a readable pickle (truncated or corrupt): '
                    f'{type(e).__name__}: {e}') from e


def parse_batch(raw: bytes, name: str = '<bytes>',
                num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
  """Parses one pickled CIFAR-10 batch.

  Args:
    raw: the batch file's bytes.
    name: its name, for error messages.
    num_classes: labels must lie in ``0 .. num_classes - 1``.

  Returns:
    ``(images, labels)``: ``(N, 32, 32, 3)`` uint8 (NHWC) and ``(N,)`` int32.

  Raises:
    DataError: for a refused or unreadable pickle, missing entries, a wrong
      shape or dtype, a label-count mismatch or an out-of-range label.
  """
  batch = safe_loads(raw, name)
  if not isinstance(batch, dict):
    raise DataError(f'{name}: expected a dict (a CIFAR-10 python batch), '
                    f'found {type(batch).__name__}')
  batch = {k.decode('latin1') if isinstance(k, bytes) else k: v
           for k, v in batch.items()}
  missing = [k for k in ('data', 'labels') if k not in batch]
  if missing:
    raise DataError(f'{name}: no {" or ".join(map(repr, missing))} entry in '
                    f'the batch; it has {sorted(map(str, batch))}')
  data = batch['data']
  if (not isinstance(data, np.ndarray) or data.dtype != np.uint8
      or data.ndim != 2 or data.shape[1] != 3 * 32 * 32):
    desc = (f'{data.dtype} array of shape {data.shape}'
            if isinstance(data, np.ndarray) else type(data).__name__)
    raise DataError(f'{name}: "data" must be a uint8 array of shape (N, 3072),'
                    f' found {desc}')
  try:
    labels = np.asarray(batch['labels'])
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f'{name}: "labels" is not a list of ints: {e}') from e
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f'{name}: "labels" must be a list of ints, found '
                    f'{labels.dtype} of shape {labels.shape}')
  if len(labels) != len(data):
    raise DataError(f'{name}: {len(data)} images but {len(labels)} labels')
  info.check_labels(labels, num_classes, name)
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


def read_archive_members(path: str, wanted: Sequence[str]) -> dict[str, bytes]:
  """The bytes of the members of a tar archive with the given base names.

  The archive (gzip-compressed or not) is decompressed whole in memory first,
  so that gzip's CRC and length check the entire file, and then read as a
  tar; nothing is extracted to disk.

  Raises:
    DataError: for a corrupt or truncated archive, or a missing member.
  """
  raw = files.read_bytes(path)
  found: dict[str, bytes] = {}
  try:
    archive = tarfile.open(fileobj=io.BytesIO(raw), mode='r:*')
  except tarfile.ReadError as e:
    raise DataError(f'{path}: corrupt archive: not a tar file (plain or '
                    'compressed with gzip, bzip2 or xz)') from e
  try:
    with archive:
      for member in archive:
        base = posixpath.basename(member.name)
        if member.isfile() and base in wanted and base not in found:
          found[base] = archive.extractfile(member).read()
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    raise DataError(f'{path}: corrupt or truncated archive '
                    f'({type(e).__name__}: {e})') from e
  missing = [w for w in wanted if w not in found]
  if missing:
    raise DataError(f'{path}: the archive has no {", ".join(missing)} '
                    f'(expected {BATCH_DIR}/{missing[0]})')
  return found


def read_cifar10(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray,
                                                     str]:
  """Reads a CIFAR-10 split from its batch files, or else from the archive.

  The batches are looked for in ``cifar-10-batches-py/`` (also under
  ``cifar10/``, ``CIFAR10/``, ``cifar-10/``) and directly in those
  directories and in ``data_dir``; then ``cifar-10-python.tar.gz`` in
  ``data_dir``, ``cifar10/``, ``CIFAR10/``, ``cifar-10/``.

  Args:
    data_dir: the data directory.
    split: ``'train'`` (the five data batches, in order) or ``'test'``.

  Returns:
    ``(images, labels, where)``: NHWC uint8, int32, and the directory or
    archive read.

  Raises:
    DataError: if nothing is found (naming every place searched), or for a
      bad batch or archive.
  """
  names = TRAIN_BATCHES if split == 'train' else TEST_BATCHES
  dirs = [os.path.join(data_dir, d) if d else data_dir for d in BATCH_LAYOUTS]
  for d in dirs:
    present = [n for n in names if os.path.isfile(os.path.join(d, n))]
    if len(present) == len(names):
      parts = [parse_batch(files.read_bytes(os.path.join(d, n)),
                           os.path.join(d, n)) for n in names]
      return (*_concat(parts), d)
    if present:
      missing = [n for n in names if n not in present]
      raise DataError(f'CIFAR-10 {split}: {d} has {", ".join(present)} but '
                      f'not {", ".join(missing)}')
  archives = [os.path.join(data_dir, d, ARCHIVE) if d else
              os.path.join(data_dir, ARCHIVE) for d in ARCHIVE_LAYOUTS]
  for path in archives:
    if os.path.isfile(path):
      raw = read_archive_members(path, names)
      parts = [parse_batch(raw[n], f'{path}:{BATCH_DIR}/{n}') for n in names]
      return (*_concat(parts), path)
  raise DataError(
      f'CIFAR-10 {split}: no data found. Looked for {", ".join(names)} in '
      f'{", ".join(dirs)}, and for {", ".join(archives)}. Point --data_dir '
      f'(or ${files.ENV_VAR}) at the directory that holds {BATCH_DIR}/ or '
      f'{ARCHIVE}.')


def _concat(parts):
  if len(parts) == 1:
    return parts[0]
  return (np.concatenate([p[0] for p in parts]),
          np.concatenate([p[1] for p in parts]))
