"""Reading raw bytes from disk and finding files in the usual layouts."""

from __future__ import annotations

import gzip
import os
import zlib
from typing import Sequence

from jaxkink.data.errors import DataError

ENV_VAR = 'JAXKINK_DATA_DIR'

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


def read_bytes(path: str | os.PathLike) -> bytes:
  """The contents of ``path``, gunzipped when it is gzip-compressed.

  Compression is recognised by the gzip magic number, not by the file name,
  so ``foo.gz`` holding plain bytes (or the reverse) is read correctly.

  Raises:
    DataError: if the file cannot be read or is a corrupt or truncated gzip
      stream.
  """
  path = os.fspath(path)
  try:
    with open(path, 'rb') as f:
      raw = f.read()
  except OSError as e:
    raise DataError(f'cannot read {path}: {e.strerror or e}') from e
  if raw[:2] == _GZIP_MAGIC:
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
      raise DataError(f'{path}: corrupt or truncated gzip file ({e})') from e
  return raw


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
