"""The IDX format of MNIST and Fashion-MNIST.

An IDX file is a big-endian header (two zero bytes, a type code, the number
of dimensions, then one uint32 per dimension) followed by the array in C
order. MNIST's images are ``0x00000803`` (2051: unsigned bytes, 3
dimensions) and its labels ``0x00000801`` (2049). Format description:
http://yann.lecun.com/exdb/mnist/ (section "File formats").
"""

from __future__ import annotations

import math
import os

import numpy as np

from jaxkink.data import files
from jaxkink.data.errors import DataError

# IDX type code -> dtype (big-endian where multi-byte).
IDX_DTYPES = {
    0x08: np.dtype('u1'), 0x09: np.dtype('i1'), 0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'), 0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8'),
}


def parse_idx(raw: bytes, name: str = '<bytes>') -> np.ndarray:
  """Parses the bytes of an (uncompressed) IDX file.

  Args:
    raw: the file's contents.
    name: the file's name, for error messages.

  Returns:
    The array, in native byte order. Unsigned-byte data (all of MNIST) is a
    read-only view of ``raw``, not a copy.

  Raises:
    DataError: for a wrong magic number, a truncated header or body, or
      bytes after the data.
  """
  if len(raw) < 4:
    raise DataError(f'{name}: not an IDX file: {len(raw)} bytes, shorter '
                    'than the 4-byte magic number')
  code, ndim = raw[2], raw[3]
  if raw[:2] != b'\0\0' or code not in IDX_DTYPES or ndim == 0:
    magic = int.from_bytes(raw[:4], 'big')
    raise DataError(
        f'{name}: not an IDX file: wrong magic number {magic} '
        f'(0x{magic:08x}). IDX files start with two zero bytes, a type code '
        '(0x08 for unsigned bytes) and the number of dimensions: 2051 '
        '(0x00000803) for MNIST images, 2049 (0x00000801) for labels.')
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f'{name}: truncated IDX header: {ndim} dimensions need '
                    f'{header} bytes, the file has {len(raw)}')
  dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big')
               for i in range(ndim))
  dtype = IDX_DTYPES[code]
  count = math.prod(dims)
  expected, actual = count * dtype.itemsize, len(raw) - header
  if actual < expected:
    raise DataError(
        f'{name}: truncated IDX file: the header says {dtype.name} '
        f'{dims} ({expected} bytes of data), but only {actual} bytes follow')
  if actual > expected:
    raise DataError(
        f'{name}: {actual - expected} unexpected bytes after the data: the '
        f'header says {dtype.name} {dims} ({expected} bytes of data)')
  array = np.frombuffer(raw, dtype, count=count, offset=header).reshape(dims)
  if dtype.byteorder == '>':
    array = array.astype(dtype.newbyteorder('='))
  return array


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an IDX file, gzip-compressed or not (see :func:`parse_idx`)."""
  return parse_idx(files.read_bytes(path), os.fspath(path))
