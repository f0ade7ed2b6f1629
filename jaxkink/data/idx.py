"""The IDX format of MNIST and Fashion-MNIST.

An IDX file is a big-endian header (two zero bytes, a type code, the number
of dimensions, then one uint32 per dimension) followed by the array in C
order. MNIST's images are ``0x00000803`` (2051: unsigned bytes, 3
dimensions) and its labels ``0x00000801`` (2049). Format description:
http://yann.lecun.com/exdb/mnist/ (section "File formats").

:func:`read_idx` reads the header first and then exactly the number of bytes
it announces, so a gzip-compressed file that decompresses to more (a small
``.gz`` holding gigabytes behind a header announcing a few images) is
refused after reading at most the announced size and
:data:`TRAILING_PROBE` bytes more, and one that holds less is refused as
truncated.
"""

from __future__ import annotations

import math
import os

import numpy as np

from jaxkink.data import files
from jaxkink.data.errors import DataError

# IDX type code -> dtype (big-endian where multi-byte).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype('u1'), 0x09: np.dtype('i1'), 0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'), 0x0D: np.dtype('>f4'), 0x0E: np.dtype('>f8'),
}

# How many bytes past the announced data a compressed file is read, to count
# unexpected trailing bytes before giving up counting.
TRAILING_PROBE = 1 << 16


def _magic(head: bytes, name: str) -> int:
  """Checks the 4-byte magic number; returns the number of dimensions."""
  if len(head) < 4:
    raise DataError(f'{name}: not an IDX file: {len(head)} bytes, shorter '
                    'than the 4-byte magic number')
  code, ndim = head[2], head[3]
  if head[:2] != b'\0\0' or code not in IDX_DTYPES or ndim == 0:
    magic = int.from_bytes(head[:4], 'big')
    raise DataError(
        f'{name}: not an IDX file: wrong magic number {magic} '
        f'(0x{magic:08x}). IDX files start with two zero bytes, a type code '
        '(0x08 for unsigned bytes) and the number of dimensions: 2051 '
        '(0x00000803) for MNIST images, 2049 (0x00000801) for labels.')
  return ndim


def _header(raw: bytes, name: str) -> tuple[np.dtype, tuple[int, ...], int]:
  """``(dtype, dims, header size)`` from bytes that start with the header.

  Raises:
    DataError: for a wrong magic number or a truncated header (``raw`` is
      taken to be all there is when it is shorter than the header).
  """
  ndim = _magic(raw[:4], name)
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f'{name}: truncated IDX header: {ndim} dimensions need '
                    f'{header} bytes, the file has {len(raw)}')
  dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big')
               for i in range(ndim))
  return IDX_DTYPES[raw[2]], dims, header


def _check_size(name: str, dtype: np.dtype, dims: tuple[int, ...],
                actual: int) -> None:
  """Refuses ``actual`` bytes of data where the header announces otherwise."""
  expected = math.prod(dims) * dtype.itemsize
  if actual < expected:
    raise DataError(
        f'{name}: truncated IDX file: the header says {dtype.name} '
        f'{dims} ({expected} bytes of data), but only {actual} bytes follow')
  if actual > expected:
    raise DataError(
        f'{name}: {actual - expected} unexpected bytes after the data: the '
        f'header says {dtype.name} {dims} ({expected} bytes of data)')


def _to_native(array: np.ndarray) -> np.ndarray:
  if array.dtype.byteorder == '>':
    return array.astype(array.dtype.newbyteorder('='))
  return array


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
  dtype, dims, header = _header(raw, name)
  _check_size(name, dtype, dims, len(raw) - header)
  array = np.frombuffer(raw, dtype, count=math.prod(dims), offset=header)
  return _to_native(array.reshape(dims))


def read_idx(path: str | os.PathLike,
             max_bytes: int = files.DEFAULT_MAX_BYTES) -> np.ndarray:
  """Reads an IDX file, gzip-compressed or not (see :func:`parse_idx`).

  The header is read first; a plain file's size is then checked against it
  before any data is read, and a compressed file is decompressed a chunk at
  a time into an array of the announced size, then read
  :data:`TRAILING_PROBE` bytes further to make sure nothing follows. Memory
  held stays about the announced size, whatever the file decompresses to.

  Args:
    path: the file.
    max_bytes: the most bytes of data the header may announce.

  Returns:
    The array, in native byte order (a new array, not a view of a buffer).

  Raises:
    DataError: naming the file, for a wrong magic number, a truncated header
      or body, bytes after the data (in a compressed file, counted up to
      :data:`TRAILING_PROBE`), an announced size over ``max_bytes``, or a
      corrupt gzip stream.
  """
  name = os.fspath(path)
  with files.Reader(name) as f:
    head = f.read(4)
    ndim = _magic(head, name)
    dtype, dims, header = _header(head + f.read(4 * ndim), name)
    expected = math.prod(dims) * dtype.itemsize
    if not f.compressed:
      _check_size(name, dtype, dims, f.size - header)
    if expected > max_bytes:
      raise DataError(
          f'{name}: the header says {dtype.name} {dims} ({expected} bytes of '
          f'data), over the limit of {max_bytes} bytes for an IDX file')
    data = np.empty(expected, np.uint8)  # pages are touched only as filled
    got = f.readinto(data)
    if got < expected:
      _check_size(name, dtype, dims, got)
    if f.compressed:
      extra = len(f.read(TRAILING_PROBE + 1))
      if extra > TRAILING_PROBE:
        raise DataError(
            f'{name}: more than {TRAILING_PROBE} unexpected bytes after the '
            f'data: the header says {dtype.name} {dims} ({expected} bytes of '
            'data); stopped reading there (a compressed file that holds more '
            'than its header announces is refused)')
      _check_size(name, dtype, dims, expected + extra)
  return _to_native(data.view(dtype).reshape(dims))
