"""Writers of the datasets' native formats, for the data tests.

The data tests write small files in each native format and read them back:
IDX (gzipped or plain), CIFAR-10 python batches as Python 2's cPickle wrote
them (protocol 2, ``str`` as ``BINSTRING``, numpy globals under their numpy
1.x names), and MATLAB v5 files as MATLAB writes SVHN's (compressed
elements, ``y`` a double array stored as bytes). The tests in this file check
that the writers produce what the real files hold.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import pickletools
import struct
import tarfile
import zlib

import numpy as np

from jaxkink.data import cifar

# ---------------------------------------------------------------- IDX


def idx_bytes(array: np.ndarray) -> bytes:
  codes = {np.dtype('u1'): 0x08, np.dtype('i1'): 0x09, np.dtype('>i2'): 0x0B,
           np.dtype('>i4'): 0x0C, np.dtype('>f4'): 0x0D, np.dtype('>f8'): 0x0E}
  big = array.astype(array.dtype.newbyteorder('>'))
  header = bytes([0, 0, codes[big.dtype], array.ndim])
  header += b''.join(struct.pack('>I', d) for d in array.shape)
  return header + big.tobytes()


def write_file(path, data: bytes, gz: bool = False) -> str:
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(gzip.compress(data, mtime=0) if gz else data)
  return path


def write_mnist(directory, split: str, images: np.ndarray, labels: np.ndarray,
                gz: bool = True) -> None:
  stem_images, stem_labels = {'train': ('train-images-idx3-ubyte',
                                        'train-labels-idx1-ubyte'),
                              'test': ('t10k-images-idx3-ubyte',
                                       't10k-labels-idx1-ubyte')}[split]
  suffix = '.gz' if gz else ''
  write_file(os.path.join(directory, stem_images + suffix), idx_bytes(images),
             gz)
  write_file(os.path.join(directory, stem_labels + suffix), idx_bytes(labels),
             gz)


# ---------------------------------------------------------------- CIFAR-10

_PY2_NAMES = {
    # pylint: disable-next=protected-access
    id(cifar._reconstruct): ('numpy.core.multiarray', '_reconstruct'),
    id(np.ndarray): ('numpy', 'ndarray'),
    id(np.dtype): ('numpy', 'dtype'),
}


class Py2Pickler(pickle._Pickler):  # pylint: disable=protected-access
  """Pickles as Python 2's cPickle (protocol 2) did for the CIFAR batches."""

  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access

  def save_py2_str(self, obj):
    data = obj if isinstance(obj, bytes) else obj.encode('latin1')
    if len(data) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
    else:
      self.write(pickle.BINSTRING + struct.pack('<i', len(data)) + data)
    self.memoize(obj)

  dispatch[bytes] = save_py2_str
  dispatch[str] = save_py2_str

  def save_global(self, obj, name=None):
    module, name = _PY2_NAMES[id(obj)]
    self.write(pickle.GLOBAL + f'{module}\n{name}\n'.encode())
    self.memoize(obj)


def py2_pickle(obj) -> bytes:
  buffer = io.BytesIO()
  Py2Pickler(buffer, protocol=2).dump(obj)
  return buffer.getvalue()


def cifar_batch(images: np.ndarray, labels, label: str = 'batch') -> dict:
  """The dict of one CIFAR-10 batch, from NHWC uint8 images."""
  data = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(
      len(images), 3072)
  return {'batch_label': label, 'labels': [int(l) for l in labels],
          'data': data,
          'filenames': [f'img_{i}.png' for i in range(len(images))]}


def cifar_splits(rng: np.random.Generator, per_batch: int = 3):
  """Random CIFAR-like data: ``{batch_name: (images, labels)}``."""
  out = {}
  for name in cifar.TRAIN_BATCHES + cifar.TEST_BATCHES:
    out[name] = (rng.integers(0, 256, (per_batch, 32, 32, 3), np.uint8),
                 rng.integers(0, 10, per_batch).astype(np.int32))
  return out


def write_cifar_dir(directory, batches: dict) -> str:
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  for name, (images, labels) in batches.items():
    write_file(os.path.join(directory, name),
               py2_pickle(cifar_batch(images, labels, name)))
  return directory


def write_cifar_archive(path, members: dict[str, bytes]) -> str:
  """A ``.tar.gz`` with ``cifar-10-batches-py/<name>`` members."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tarfile.open(path, 'w:gz') as archive:
    for name, data in members.items():
      info = tarfile.TarInfo(f'{cifar.BATCH_DIR}/{name}')
      info.size = len(data)
      archive.addfile(info, io.BytesIO(data))
  return path


# ---------------------------------------------------------------- MAT v5

_MI = {np.dtype('i1'): 1, np.dtype('u1'): 2, np.dtype('<i2'): 3,
       np.dtype('<u2'): 4, np.dtype('<i4'): 5, np.dtype('<u4'): 6,
       np.dtype('<f4'): 7, np.dtype('<f8'): 9}
_MX_CLASS = {np.dtype('f8'): 6, np.dtype('f4'): 7, np.dtype('i1'): 8,
             np.dtype('u1'): 9, np.dtype('i2'): 10, np.dtype('u2'): 11,
             np.dtype('i4'): 12, np.dtype('u4'): 13}


def _element(mi_type: int, data: bytes) -> bytes:
  if len(data) <= 4:  # the "small data element" format
    return struct.pack('<HH', mi_type, len(data)) + data.ljust(4, b'\0')
  return struct.pack('<II', mi_type, len(data)) + data + b'\0' * (-len(data) %
                                                                    8)


def mat_bytes(variables: dict[str, np.ndarray], compress: bool = True,
              store_as: dict[str, np.dtype] | None = None) -> bytes:
  """A little-endian MATLAB v5 file, as MATLAB's ``save`` writes it.

  Args:
    variables: name -> numeric array (any number of dimensions).
    compress: wrap each variable in a zlib-compressed element (MATLAB's
      default since v7).
    store_as: name -> dtype the data is stored as, when smaller than its
      class (MATLAB stores a double array of small integers as uint8).
  """
  store_as = store_as or {}
  text = b'MATLAB 5.0 MAT-file, Platform: GLNXA64, Created by: jaxkink tests'
  out = [text.ljust(116, b' '), b'\0' * 8, struct.pack('<H', 0x0100), b'IM']
  for name, array in variables.items():
    array = np.asarray(array)
    stored = array.astype(np.dtype(store_as.get(name, array.dtype)
                                   ).newbyteorder('<'))
    shape = array.shape if array.ndim >= 2 else (1, array.size)
    body = (_element(6, struct.pack('<II', _MX_CLASS[array.dtype.newbyteorder(
        '=')], 0)) + _element(5, struct.pack(f'<{len(shape)}i', *shape)) +
            _element(1, name.encode()) +
            _element(_MI[stored.dtype], stored.tobytes(order='F')))
    matrix = struct.pack('<II', 14, len(body)) + body
    if compress:
      z = zlib.compress(matrix)
      out.append(struct.pack('<II', 15, len(z)) + z)
    else:
      out.append(matrix)
  return b''.join(out)


def svhn_arrays(images: np.ndarray, labels: np.ndarray) -> dict:
  """SVHN's variables from NHWC images and 0..9 labels (0 stored as 10)."""
  y = np.where(labels == 0, 10, labels).astype(np.float64).reshape(-1, 1)
  return {'X': np.asfortranarray(images.transpose(1, 2, 3, 0)), 'y': y}


def write_svhn(path, images, labels, compress: bool = True) -> str:
  return write_file(path, mat_bytes(svhn_arrays(images, labels), compress,
                                    {'y': np.uint8}))


# ---------------------------------------------------------------- tests


def test_py2_pickle_is_what_python2_wrote():
  data = py2_pickle(cifar_batch(np.zeros((2, 32, 32, 3), np.uint8), [1, 2]))
  assert data[:2] == b'\x80\x02'
  ops = {op.name for op, _, _ in pickletools.genops(data)}
  globals_ = [arg for op, arg, _ in pickletools.genops(data)
              if op.name == 'GLOBAL']
  assert 'BINBYTES' not in ops and 'SHORT_BINBYTES' not in ops
  assert 'BINUNICODE' not in ops and 'SHORT_BINUNICODE' not in ops
  assert sorted(globals_) == ['numpy dtype', 'numpy ndarray',
                              'numpy.core.multiarray _reconstruct']


def test_mat_writer_is_read_by_scipy():
  import scipy.io  # pylint: disable=g-import-not-at-top
  images = np.arange(2 * 32 * 32 * 3, dtype=np.uint32).astype(np.uint8)
  images = images.reshape(2, 32, 32, 3)
  for compress in (True, False):
    path = io.BytesIO(mat_bytes(svhn_arrays(images, np.array([0, 7])),
                                compress, {'y': np.uint8}))
    mat = scipy.io.loadmat(path)
    assert mat['X'].shape == (32, 32, 3, 2) and mat['X'].dtype == np.uint8
    np.testing.assert_array_equal(mat['X'][5, 7, 2, 1], images[1, 5, 7, 2])
    # Stored as bytes, the class is double (as MATLAB writes SVHN's y).
    assert mat['y'].dtype == np.uint8
    y = scipy.io.loadmat(path, mat_dtype=True)['y']
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, [[10.], [7.]])
