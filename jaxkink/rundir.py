"""Run directories: where every experiment writes its flags, versions and results.

Files are written atomically (to a temporary name, then renamed), so an
interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import tempfile
from importlib import metadata
from typing import Any, Callable

import jax
import numpy as np


def environment() -> dict[str, Any]:
  """Library versions, devices and JAX settings, for saving with results."""
  versions = {}
  for pkg in ('jax', 'jaxlib', 'flax', 'optax', 'numpy'):
    try:
      versions[pkg] = metadata.version(pkg)
    except metadata.PackageNotFoundError:
      versions[pkg] = None
  from jaxkink import __version__  # pylint: disable=g-import-not-at-top
  versions['jaxkink'] = __version__
  devices = jax.devices()
  return {
      'versions': versions,
      'python': sys.version.split()[0],
      'platform': platform.platform(),
      'backend': jax.default_backend(),
      'device_kind': devices[0].device_kind,
      'device_count': len(devices),
      'process_count': jax.process_count(),
      'jax_enable_x64': bool(jax.config.jax_enable_x64),
      'jax_default_matmul_precision': jax.config.jax_default_matmul_precision,
      'time_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      'argv': sys.argv,
  }


def _write_atomically(path: str | os.PathLike, mode: str,
                      write: Callable[[Any], Any]) -> None:
  """Calls ``write(file)`` on a temporary file beside ``path``, then renames
  it to ``path``; on any error the temporary file is removed."""
  path = os.fspath(path)
  directory = os.path.dirname(path) or '.'
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp-')
  try:
    with os.fdopen(fd, mode) as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` atomically."""
  _write_atomically(path, 'w', lambda f: f.write(text))


def write_npz(path: str | os.PathLike, **arrays: Any) -> None:
  """Writes ``arrays`` as an (uncompressed) ``.npz`` to ``path`` atomically."""
  _write_atomically(path, 'wb', lambda f: np.savez(f, **arrays))


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes ``obj`` as indented JSON to ``path`` atomically."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + '\n')


def pyplot():
  """``matplotlib.pyplot`` on the file-only Agg backend, for run plots.

  Experiments write their plots into the run directory and may run on
  machines without a display, so they select Agg before pyplot is imported.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt
