"""Reading raw bytes from disk and finding files in the usual layouts.

Everything read here is untrusted, and a gzip file can decompress to a
thousand times its size (a "decompression bomb": 1 MB of gzip holding 1 GiB
of zeros). Decompression therefore always streams, in chunks of at most
:data:`CHUNK_BYTES`, and every read has an upper bound: :func:`read_bytes`
refuses to produce more than ``max_bytes``, and :class:`Reader` lets a format
that announces its own size (IDX) read exactly that much and no more.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from typing import Sequence

from jaxkink.data.errors import DataError

ENV_VAR = 'JAXKINK_DATA_DIR'

# The most :func:`read_bytes` returns unless told otherwise: 20 times MNIST's
# largest file (47 MB), 5 times CIFAR-10's decompressed archive (185 MB).
DEFAULT_MAX_BYTES = 1 << 30

# Decompressed bytes asked of gzip at a time, so no single call can expand a
# small compressed block into a large temporary.
CHUNK_BYTES = 1 << 20

_GZIP_MAGIC = b'\x1f\x8b'


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str | None:
  """The data directory in force: ``data_dir``, else ``$JAXKINK_DATA_DIR``.

  Args:
    data_dir: a directory, or None / ``''`` for "not given".

  Returns:
    The absolute directory (``~`` expanded), or None when neither is set.

  Raises:
    DataError: if the directory named does not exist.
  """
  origin = 'data_dir'
  if data_dir is None or os.fspath(data_dir) == '':
    data_dir, origin = os.environ.get(ENV_VAR) or None, f'${ENV_VAR}'
  if data_dir is None:
    return None
  path = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
  if not os.path.isdir(path):
    raise DataError(f'data directory {path!r} (from {origin}) does not exist '
                    'or is not a directory')
  return path


class Reader:
  """A file opened for reading, gunzipped on the fly when gzip-compressed.

  Compression is recognised by the gzip magic number, not by the file name,
  so ``foo.gz`` holding plain bytes (or the reverse) is read correctly. Reads
  decompress only as much as they are asked for, in chunks of at most
  :data:`CHUNK_BYTES`. Use it as a context manager.

  Attributes:
    path: the file's path.
    compressed: whether the file is gzip-compressed.
    size: the file's size on disk; for a plain file, the size of its data.

  Raises:
    DataError: (from the constructor and every read) if the file cannot be
      read or is a corrupt or truncated gzip stream. A CRC or length error is
      found when a read reaches the end of the stream.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    try:
      self._file = open(self.path, 'rb')  # pylint: disable=consider-using-with
    except OSError as e:
      raise DataError(f'cannot read {self.path}: {e.strerror or e}') from e
    try:
      self.size = os.fstat(self._file.fileno()).st_size
      self.compressed = self._file.read(2) == _GZIP_MAGIC
      self._file.seek(0)
    except OSError as e:
      self._file.close()
      raise DataError(f'cannot read {self.path}: {e.strerror or e}') from e
    self._stream = (gzip.GzipFile(fileobj=self._file, mode='rb')
                    if self.compressed else self._file)

  def __enter__(self) -> Reader:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    if self._stream is not self._file:
      self._stream.close()
    self._file.close()

  def readinto(self, buffer) -> int:
    """Fills ``buffer`` (any writable bytes-like object) from the stream.

    Returns:
      The number of bytes written: ``len(buffer)``, or fewer only at the end
      of the data.
    """
    with memoryview(buffer) as view, view.cast('B') as out:
      filled = 0
      while filled < len(out):
        n = self._call(self._stream.readinto,
                       out[filled:filled + CHUNK_BYTES])
        if not n:
          break
        filled += n
    return filled

  def read(self, n: int) -> bytes:
    """At most ``n`` bytes: ``n``, or fewer only at the end of the data.

    ``n`` bytes are allocated, so keep ``n`` small; :meth:`readinto` fills a
    buffer of the caller's.
    """
    out = bytearray(n)
    del out[self.readinto(out):]
    return bytes(out)

  def read_rest(self, max_bytes: int) -> bytes:
    """The rest of the data, if it is at most ``max_bytes`` long.

    A plain file is checked against its size on disk before it is read; a
    compressed one is decompressed a chunk at a time and refused as soon as
    it passes ``max_bytes``, so no more than about ``max_bytes`` is ever held.

    Raises:
      DataError: if there are more than ``max_bytes`` bytes left, or for a
        corrupt or truncated gzip stream.
    """
    if not self.compressed:
      left = self.size - self._file.tell()
      if left > max_bytes:
        raise _too_big(self.path, f'{left} bytes', max_bytes)
      out = self._call(self._file.read, max_bytes + 1)
      if len(out) > max_bytes:  # the file grew since it was opened
        raise _too_big(self.path, f'more than {max_bytes} bytes', max_bytes)
      return out
    out = io.BytesIO()  # getvalue() hands over its buffer without a copy
    chunk = bytearray(CHUNK_BYTES)
    while True:
      n = self.readinto(chunk)
      if not n:
        return out.getvalue()
      if out.tell() + n > max_bytes:
        raise _too_big(self.path, f'decompresses to more than {max_bytes} '
                       'bytes (stopped reading there)', max_bytes)
      out.write(memoryview(chunk)[:n])

  def _call(self, fn, *args):
    try:
      return fn(*args)
    except (OSError, EOFError, zlib.error) as e:
      if self.compressed:
        raise DataError(f'{self.path}: corrupt or truncated gzip file '
                        f'({e})') from e
      # (EOFError and zlib.error have no strerror.)
      why = getattr(e, 'strerror', None) or e
      raise DataError(f'cannot read {self.path}: {why}') from e


def read_bytes(path: str | os.PathLike,
               max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
  """The contents of ``path``, gunzipped when it is gzip-compressed.

  Compression is recognised by the gzip magic number, not by the file name,
  so ``foo.gz`` holding plain bytes (or the reverse) is read correctly.
  Decompression streams and stops as soon as the data would exceed
  ``max_bytes``, so a small file that decompresses to gigabytes is refused
  after reading ``max_bytes``, never held whole.

  Args:
    path: the file.
    max_bytes: the most bytes the (decompressed) contents may have.

  Raises:
    DataError: if the file cannot be read, is a corrupt or truncated gzip
      stream, or holds more than ``max_bytes`` bytes.
  """
  with Reader(path) as f:
    return f.read_rest(max_bytes)


def _too_big(path: str, what: str, max_bytes: int) -> DataError:
  return DataError(f'{path}: too large: {what}, over the limit of {max_bytes} '
                   'bytes for this kind of file (files far larger than the '
                   'dataset\'s own, such as a small gzip file that '
                   'decompresses to gigabytes, are refused)')


def find_file(data_dir: str, subdirs: Sequence[str], names: Sequence[str],
              what: str) -> str:
  """The first ``data_dir/subdir/name`` that is a file.

  Subdirectories are tried in order, and within each the names in order.

  Args:
    data_dir: the root directory.
    subdirs: relative directories to try (``''`` is ``data_dir`` itself).
    names: file names to try in each directory.
    what: what the file is, for the error message (e.g. ``'MNIST train
      images'``).

  Raises:
    DataError: naming every directory and file name tried.
  """
  dirs = [os.path.join(data_dir, d) if d else data_dir for d in subdirs]
  for d in dirs:
    for name in names:
      path = os.path.join(d, name)
      if os.path.isfile(path):
        return path
  raise DataError(
      f'{what}: no file found. Looked for {" or ".join(names)} in '
      f'{", ".join(dirs)}. Point --data_dir (or ${ENV_VAR}) at the directory '
      'that holds the dataset\'s original files.')
