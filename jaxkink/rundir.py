"""Run directories: where every experiment writes its settings and results.

A run directory is a claim: "these numbers came from these settings"
(DESIGN.md section 8). :class:`RunDir` keeps it: a manifest of the settings
written once at creation, an exclusive lock while a process writes, a
refusal (nothing changed) when a re-run's settings differ, and record files
(chunks, checkpoints) tagged with their index and the manifest's digest,
checked on load and moved aside when they fail.

Files are written atomically (to a temporary name, synced, then renamed, and
the directory synced), so an interrupted run or a crash never leaves a
half-written file behind.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import json
import os
import platform
import socket
import sys
import tempfile
import time
from importlib import metadata
from typing import Any, Callable

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

__all__ = (
    'CHECKPOINTS',
    'CORRUPT',
    'DIGEST_KEY',
    'INDEX_KEY',
    'LOCK',
    'MANIFEST',
    'RefusedError',
    'RunDir',
    'array_digest',
    'canonical',
    'differences',
    'environment',
    'file_identity',
    'pyplot',
    'settings_digest',
    'write_json',
    'write_npz',
    'write_text',
)


def environment() -> dict[str, Any]:
  """Library versions, devices and JAX settings, for saving with results."""
  versions: dict[str, str | None] = {}
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
      'jax_enable_x64': bool(jax.config.read('jax_enable_x64')),
      # (A context-manager option: config.read refuses it, values has it.)
      'jax_default_matmul_precision':
          jax.config.values['jax_default_matmul_precision'],
      'time_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      'argv': sys.argv,
  }


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


_TMP_PREFIX = '.tmp-'
# The mode ``open()`` would give a new file (0644 under umask 022), so that a
# group can read a shared run; ``mkstemp`` alone would give 0600.
_FILE_MODE = 0o666 & ~_umask()


def _fsync_directory(directory: str) -> None:
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:  # some file systems do not sync directories
    pass
  finally:
    os.close(fd)


def _write_atomically(path: str | os.PathLike, mode: str,
                      write: Callable[[Any], Any]) -> None:
  """Calls ``write(file)`` on a temporary file beside ``path``, syncs it to
  disk, then renames it to ``path`` and syncs the directory; on any error
  the temporary file is removed.

  A reader (or a run killed at any moment, or a machine that loses power)
  sees either the old file or the whole new one, never a part.
  """
  path = os.fspath(path)
  directory = os.path.dirname(path) or '.'
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=_TMP_PREFIX)
  try:
    with os.fdopen(fd, mode) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, _FILE_MODE)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  _fsync_directory(directory)


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` atomically."""
  _write_atomically(path, 'w', lambda f: f.write(text))


def write_npz(path: str | os.PathLike, **arrays: Any) -> None:
  """Writes ``arrays`` as an (uncompressed) ``.npz`` to ``path`` atomically."""
  _write_atomically(path, 'wb', lambda f: np.savez(f, **arrays))


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes ``obj`` as indented JSON to ``path`` atomically."""
  write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + '\n')


# ---------------------------------------------------------------------------
# The run-directory contract (DESIGN.md section 8).

MANIFEST = 'manifest.json'
LOCK = '.lock'
CORRUPT = 'corrupt'
CHECKPOINTS = 'checkpoints'
# Keys every record file (chunk, checkpoint) carries beside its arrays.
INDEX_KEY = '__index__'
DIGEST_KEY = '__manifest__'
# What of the environment is compared on resume (a change is a warning).
_ENV_KEYS = ('versions', 'backend', 'device_kind', 'device_count',
             'process_count')


class RefusedError(Exception):
  """The run directory holds another run, or another process writes it.

  Nothing in the directory was changed. The message lists the differing
  settings (old -> new) or names the process holding the lock.
  """


def canonical(obj: Any) -> Any:
  """``obj`` as its JSON form reads back (tuples become lists, numbers
  and other objects their JSON / ``str`` form), for comparing settings."""
  return json.loads(json.dumps(obj, sort_keys=True, default=str))


def settings_digest(settings: Any) -> str:
  """A short hash of canonical ``settings``: the manifest's identity."""
  text = json.dumps(canonical(settings), sort_keys=True,
                    separators=(',', ':'))
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def array_digest(*arrays: Any) -> str:
  """A hash of arrays' dtypes, shapes and bytes (a data set's identity)."""
  h = hashlib.sha256()
  for a in arrays:
    a = np.ascontiguousarray(np.asarray(a))
    h.update(f'{a.dtype.str}{a.shape}'.encode())
    h.update(a.data.cast('B'))
  return h.hexdigest()[:32]


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
  """Size and sha256 of a file (or of each file under a directory)."""
  path = os.fspath(path)
  paths = ([os.path.join(d, f) for d, _, fs in sorted(os.walk(path))
            for f in sorted(fs)] if os.path.isdir(path) else [path])
  out = {}
  for p in paths:
    h = hashlib.sha256()
    with open(p, 'rb') as f:
      for block in iter(lambda: f.read(1 << 20), b''):
        h.update(block)
    out[os.path.relpath(p, path) if p != path else os.path.basename(p)] = {
        'bytes': os.path.getsize(p), 'sha256': h.hexdigest()}
  return out


def differences(old: Any, new: Any, prefix: str = '') -> list[str]:
  """``'key: old -> new'`` for every setting that differs (recursing into
  dicts and equally long lists)."""
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for k in sorted(set(old) | set(new)):
      name = f'{prefix}.{k}' if prefix else str(k)
      if k not in old:
        out.append(f'{name}: (absent) -> {new[k]!r}')
      elif k not in new:
        out.append(f'{name}: {old[k]!r} -> (absent)')
      else:
        out += differences(old[k], new[k], name)
    return out
  if (isinstance(old, list) and isinstance(new, list) and len(old) == len(new)
      and any(isinstance(v, (dict, list)) for v in old)):
    return [d for i, (a, b) in enumerate(zip(old, new))
            for d in differences(a, b, f'{prefix}[{i}]')]
  return [] if old == new else [f'{prefix}: {old!r} -> {new!r}']


class RunDir:
  """An open run directory: "these numbers came from these settings".

  Opened with :meth:`open`, which writes a manifest of the settings on
  creation, takes an exclusive lock for the life of the object, and refuses
  (:class:`RefusedError`, nothing changed) a directory that holds a run of
  other settings. Record files written with :meth:`save_npz` carry their
  index and the manifest's digest; :meth:`load_npz` checks both (and
  whatever else the caller checks) and moves a file that fails into
  ``corrupt/`` with a warning, so that it is recomputed, never used.

  Attributes:
    path: the directory.
    settings: the canonical settings (the manifest's ``settings``).
    digest: :func:`settings_digest` of them.
  """

  def __init__(self, path: str, settings: Any, lock_fd: int | None,
               warn: Callable[[str], Any], read_only: bool = False):
    self.path, self.settings = path, settings
    self.digest = settings_digest(settings)
    self._lock_fd, self._warn, self.read_only = lock_fd, warn, read_only

  @classmethod
  def read(cls, path: str | os.PathLike) -> RunDir:
    """An existing run directory, for reading its records (e.g. another
    script's input): no lock, nothing written; a record that fails its
    checks raises :class:`RefusedError` instead of being moved aside.

    Raises:
      RefusedError: ``path`` has no readable manifest.
    """
    path = os.fspath(path)
    manifest = _read_manifest(path)
    if manifest is None:
      raise RefusedError(f'{path} is not a run directory (no {MANIFEST})')
    return cls(path, manifest['settings'], None, _log_warning,
               read_only=True)

  @classmethod
  def open(cls, path: str | os.PathLike, settings: Any, *,
           warn: Callable[[str], Any] | None = None,
           primary: bool | None = None,
           manifest_timeout: float = 600.0) -> RunDir:
    """Creates or re-opens the run directory ``path`` for ``settings``.

    Args:
      path: the directory (created if needed).
      settings: every setting that can change a number written here
        (JSON-able; compared as :func:`canonical` forms).
      warn: where warnings go (default: ``logging.warning``).
      primary: whether this process writes the manifest and holds the lock
        (default: JAX process 0). The other processes of one
        ``jax.distributed`` run share the directory (on a filesystem all of
        them see): they wait for the manifest and check it. With the
        default and several processes, every process must open the same
        directories in the same order: each open ends at a barrier of all
        the processes, so that none writes before process 0 has cleared
        the temporary files that a killed run left.
      manifest_timeout: how long a non-primary process waits for it.

    Raises:
      RefusedError: the directory holds a run of other settings (the
        message lists them, old -> new), its manifest is unreadable, or
        another process holds its lock (named by pid and host). Nothing in
        the directory has been changed.
    """
    path = os.fspath(path)
    settings = canonical(settings)
    warn = warn or _log_warning
    barrier = primary is None and jax.process_count() > 1
    if primary is None:
      primary = jax.process_index() == 0
    if not primary:
      if barrier:
        manifest = _read_manifest(path)
        if manifest is not None:  # refuse now, as process 0 will
          _check_settings(path, manifest, settings)
        _barrier(settings)
      deadline = time.monotonic() + manifest_timeout
      while (manifest := _read_manifest(path)) is None:
        if time.monotonic() > deadline:
          raise RefusedError(f'{path}: no {MANIFEST} from process 0 after '
                             f'{manifest_timeout:.0f} s')
        time.sleep(0.5)
      _check_settings(path, manifest, settings)
      return cls(path, settings, None, warn)
    manifest = _read_manifest(path)
    if manifest is not None:  # compare before writing anything
      _check_settings(path, manifest, settings)
    os.makedirs(path, exist_ok=True)
    fd = _lock(path)
    try:
      manifest = _read_manifest(path)  # again, under the lock
      env = environment()
      _remove_stale_temporaries(path)
      if manifest is None:
        write_json(os.path.join(path, MANIFEST), {
            'format': 1, 'digest': settings_digest(settings),
            'settings': settings, 'environment': env, 'history': []})
      else:
        _check_settings(path, manifest, settings)
        _note_environment(path, manifest, env, warn)
      if barrier:
        _barrier(settings)
    except BaseException:
      os.close(fd)
      raise
    return cls(path, settings, fd, warn)

  @staticmethod
  def check(path: str | os.PathLike, settings: Any) -> None:
    """Raises :class:`RefusedError` if ``path`` holds a run of other
    settings (or an unreadable manifest); writes nothing. For checking
    several directories before opening any."""
    manifest = _read_manifest(os.fspath(path))
    if manifest is not None:
      _check_settings(os.fspath(path), manifest, canonical(settings))

  def close(self) -> None:
    """Releases the lock (the kernel also does when the process dies)."""
    if self._lock_fd is not None:
      os.close(self._lock_fd)
      self._lock_fd = None

  def __enter__(self) -> RunDir:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()

  def file(self, *parts: str) -> str:
    """The path of a file of the run."""
    return os.path.join(self.path, *parts)

  def write_json(self, name: str, obj: Any) -> None:
    write_json(self.file(name), obj)

  def write_text(self, name: str, text: str) -> None:
    write_text(self.file(name), text)

  def save_npz(self, name: str, index: int, **arrays: Any) -> None:
    """Writes a record file tagged with ``index`` and the manifest digest."""
    write_npz(self.file(name), **{INDEX_KEY: np.int64(index),
                                  DIGEST_KEY: np.asarray(self.digest)},
              **arrays)

  def load_npz(self, name: str, index: int,
               check: Callable[[dict[str, np.ndarray]], str | None] | None
               = None) -> dict[str, np.ndarray] | None:
    """Reads a record file written by :meth:`save_npz` and checks it.

    Args:
      name: the file, relative to the run directory.
      index: the index it must carry.
      check: more checks on the arrays (shapes, fields); returns a problem
        description, or None when the arrays are as expected.

    Returns:
      The arrays (without the tags), or None when the file is absent or
      failed a check; a failed file is moved into ``corrupt/`` and named in
      a warning.
    """
    path = self.file(name)
    if not os.path.exists(path):
      return None
    problem: str | None
    arrays: dict[str, np.ndarray] = {}
    try:
      with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    except Exception as e:  # pylint: disable=broad-except
      # Whatever a damaged file makes numpy / zipfile raise.
      problem = f'unreadable ({type(e).__name__}: {e})'
    else:
      problem = _check_tags(arrays, index, self.digest)
      if problem is None and check is not None:
        problem = check(arrays)
    if problem is not None:
      if self.read_only:
        raise RefusedError(f'{path}: {problem}')
      self.quarantine(name, problem)
      return None
    return arrays

  def quarantine(self, name: str, reason: str) -> str:
    """Moves a file into ``corrupt/`` with a warning; returns its new path."""
    os.makedirs(self.file(CORRUPT), exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime(
        '%Y%m%dT%H%M%S%f')
    dest = self.file(CORRUPT, f'{name.replace(os.sep, "__")}.{stamp}')
    os.replace(self.file(name), dest)
    self._warn(f'{self.file(name)}: {reason}; moved to {dest} (it will be '
               'recomputed)')
    return dest

  def save_checkpoint(self, index: int, *, keep: int = 2,
                      **arrays: Any) -> None:
    """Writes checkpoint ``index`` and deletes all but the newest ``keep``
    (so that a damaged newest one still leaves one to resume from)."""
    self.save_npz(os.path.join(CHECKPOINTS, f'{index:09d}.npz'), index,
                  **arrays)
    for old in self._checkpoint_indices()[keep:]:
      os.unlink(self.file(CHECKPOINTS, f'{old:09d}.npz'))

  def latest_checkpoint(
      self, check: Callable[[dict[str, np.ndarray]], str | None] | None
      = None) -> tuple[int, dict[str, np.ndarray]] | None:
    """``(index, arrays)`` of the newest checkpoint that passes its checks
    (failed ones are moved aside, with a warning), or None."""
    for index in self._checkpoint_indices():
      arrays = self.load_npz(os.path.join(CHECKPOINTS, f'{index:09d}.npz'),
                             index, check)
      if arrays is not None:
        return index, arrays
    return None

  def _checkpoint_indices(self) -> list[int]:
    """Indices of the checkpoint files, newest first."""
    try:
      names = os.listdir(self.file(CHECKPOINTS))
    except FileNotFoundError:
      return []
    return sorted((int(n[:-4]) for n in names
                   if n.endswith('.npz') and n[:-4].isdigit()), reverse=True)


def _log_warning(message: str) -> None:
  logging.warning('%s', message)


def _read_manifest(path: str) -> dict[str, Any] | None:
  file = os.path.join(path, MANIFEST)
  try:
    with open(file) as f:
      manifest = json.load(f)
    if not isinstance(manifest, dict) or 'settings' not in manifest:
      raise ValueError('no settings')
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise RefusedError(f'{file} is unreadable ({e}), so the settings of the '
                       'results in this directory cannot be checked; use '
                       'another output directory') from None
  return manifest


def _check_settings(path: str, manifest: dict[str, Any],
                    settings: Any) -> None:
  diff = differences(manifest['settings'], settings)
  if diff:
    raise RefusedError(
        f'{path} holds a run with other settings; nothing was changed. Use '
        'another output directory, or the same settings to resume. '
        f'Differences (saved -> this run): {"; ".join(diff)}')


def _note_environment(path: str, manifest: dict[str, Any],
                      env: dict[str, Any], warn: Callable[[str], Any]) -> None:
  """A resume under other library versions or devices: a warning, and a
  line in the manifest's history."""
  history = manifest.setdefault('history', [])
  last = history[-1]['environment'] if history else manifest.get(
      'environment', {})
  diff = differences({k: last.get(k) for k in _ENV_KEYS},
                     {k: env.get(k) for k in _ENV_KEYS})
  if diff:
    warn(f'{path}: resumed with another environment than it was written '
         f'with ({"; ".join(diff)}); recorded in {MANIFEST}')
    history.append({'event': 'resumed', 'environment': env,
                    'changes': diff})
    write_json(os.path.join(path, MANIFEST), manifest)


def _remove_stale_temporaries(path: str) -> None:
  """Deletes the temporary files of atomic writes that a killed writer left
  in ``path`` and its record folders (called under the lock and, in a
  ``jax.distributed`` run, before the other processes pass the barrier of
  :meth:`RunDir.open`, so no writer is alive; sub-directories with a
  manifest of their own are left alone)."""
  for d, subdirs, files in os.walk(path):
    subdirs[:] = [s for s in subdirs
                  if not os.path.exists(os.path.join(d, s, MANIFEST))]
    for f in files:
      if f.startswith(_TMP_PREFIX):
        os.unlink(os.path.join(d, f))


def _barrier(settings: Any) -> None:
  """Waits for every process of a ``jax.distributed`` run to reach the
  open of the run directory of ``settings`` (an error if they open
  directories of other settings)."""
  multihost_utils.sync_global_devices(
      f'RunDir.open {settings_digest(settings)}')


def _lock(path: str) -> int:
  """An exclusive ``flock`` on ``<path>/.lock`` (released by the kernel
  when the process dies); the holder's pid and host are written in it."""
  file = os.path.join(path, LOCK)
  fd = os.open(file, os.O_RDWR | os.O_CREAT, _FILE_MODE)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    try:
      holder = os.pread(fd, 4096, 0).decode(errors='replace').strip()
    finally:
      os.close(fd)
    raise RefusedError(f'{path} is being written by another process '
                       f'({holder or "holder unknown"}); wait for it to end, '
                       'or use another output directory') from None
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps({
      'pid': os.getpid(), 'host': socket.gethostname(),
      'since': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds')}).encode(), 0)
  return fd


def _check_tags(arrays: dict[str, np.ndarray], index: int,
                digest: str) -> str | None:
  if INDEX_KEY not in arrays or DIGEST_KEY not in arrays:
    return 'carries no index or manifest digest (not written by this run)'
  got_digest = str(arrays.pop(DIGEST_KEY))
  got_index = int(arrays.pop(INDEX_KEY))
  if got_digest != digest:
    return (f'written by a run of other settings (manifest {got_digest}, '
            f'this run {digest})')
  if got_index != index:
    return f'holds index {got_index}, expected {index}'
  return None


def pyplot():
  """``matplotlib.pyplot`` on the file-only Agg backend, for run plots.

  Experiments write their plots into the run directory and may run on
  machines without a display, so they select Agg before pyplot is imported.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt
