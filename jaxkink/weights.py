"""Trained weights as orbax checkpoints, which flax users restore with orbax.

The ``.npz`` checkpoints of :mod:`jaxkink.training.checkpoint` stay the
format of exact resume (fingerprint, epoch and manifest tags). Beside them a
run directory holds its final weights in the format of the flax ecosystem,
so that they can be restored without jaxkink::

  import orbax.checkpoint as ocp
  w = ocp.StandardCheckpointer().restore('/abs/path/<out>/weights/member_3')
  logits = model.apply({'params': w['params']}, x, jaxkink.Kinks())

(orbax takes absolute paths only; with ``'batch_stats': w['batch_stats']``
too where the model has batch norm). Layout:

- ``jaxkink-train``: ``<out>/weights/member_<m>/`` per member ``m`` (the
  index of ``metrics.json``'s member table, seed-major), each one orbax
  checkpoint of ``{'params': ..., 'batch_stats': ...}`` (``batch_stats``
  only when the model has some), without a member axis: one member's
  variables, as ``model.init`` gives them. ``<out>/weights/members.json``
  is written after every member: the member table (seed, kink values,
  label, ``diverged``, ``path``), the epoch and the run's manifest digest.
- ``jaxkink-bifurcation``: ``<out>/seed_<k>/parting_weights/``, an orbax
  checkpoint of ``{'params': ...}``, the weights just before the parting
  update (the same arrays as ``parting_params.npz``, which ``zero_map``
  reads).

Writes are atomic twice over: orbax saves into
``<name>.orbax-checkpoint-tmp-<n>`` and renames it when finished (its
commit), and that save goes to a ``.tmp-`` name of jaxkink's, whose files and
directories are then synced and renamed into place, as
:mod:`jaxkink.rundir` writes files. A checkpoint already present is never
overwritten unchecked: when it holds the same arrays (dtypes, shapes and
bits) it is kept; otherwise (or unreadable) it is moved into ``corrupt/``
with a warning and written anew.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from typing import Any, Iterator, Sequence

import jax
import numpy as np

from jaxkink import rundir
from jaxkink.typing import PyTree

__all__ = ('MEMBERS_FILE', 'PARTING', 'WEIGHTS', 'member_name', 'restore',
           'save_members', 'save_tree')

WEIGHTS = 'weights'
MEMBERS_FILE = 'members.json'
PARTING = 'parting_weights'
_ORBAX_TMP = '.orbax-checkpoint-tmp'


def member_name(member: int) -> str:
  """The directory of member ``member`` under ``<out>/weights/``."""
  return f'member_{member}'


class _QuietOrbax(logging.Filter):
  """Drops orbax's below-WARNING absl records (one per file it writes)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return (record.levelno >= logging.WARNING
            or f'{os.sep}orbax{os.sep}' not in record.pathname)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
  logger, quiet = logging.getLogger('absl'), _QuietOrbax()
  logger.addFilter(quiet)
  try:
    yield
  finally:
    logger.removeFilter(quiet)


def restore(path: str | os.PathLike) -> PyTree:
  """The tree of an orbax checkpoint, as numpy arrays (what a user's
  ``ocp.StandardCheckpointer().restore(path)`` gives, on the host)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with _quiet():
    checkpointer = ocp.StandardCheckpointer()
    try:
      tree = checkpointer.restore(os.path.abspath(os.fspath(path)))
    finally:
      checkpointer.close()
  return jax.tree.map(np.asarray, tree)


def _flat(tree: PyTree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(p): np.asarray(a)
          for p, a in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _difference(old: PyTree, new: PyTree) -> str | None:
  """None when both trees hold the same keys and arrays (dtype, shape and
  bits, so NaNs compare too); else what differs."""
  a, b = _flat(old), _flat(new)
  if set(a) != set(b):
    return f'holds other leaves ({sorted(set(a) ^ set(b))[:4]})'
  for k in sorted(a):
    x, y = a[k], b[k]
    if x.dtype != y.dtype or x.shape != y.shape:
      return (f'{k} is {x.dtype}{list(x.shape)}, the run has '
              f'{y.dtype}{list(y.shape)}')
    if np.ascontiguousarray(x).tobytes() != np.ascontiguousarray(y).tobytes():
      return f'{k} holds other values than the run'
  return None


def _fsync_tree(path: str) -> None:
  for d, _, files in os.walk(path):
    for f in files:
      fd = os.open(os.path.join(d, f), os.O_RDONLY)
      try:
        os.fsync(fd)
      finally:
        os.close(fd)
    rundir._fsync_directory(d)  # pylint: disable=protected-access


def _remove_temporaries(directory: str, base: str) -> None:
  """Our and orbax's temporary directories for ``base`` that a killed
  writer left (called under the run directory's lock)."""
  try:
    names = os.listdir(directory)
  except FileNotFoundError:
    return
  for n in names:
    if (n.startswith(f'.tmp-{base}.') or n.startswith(f'{base}{_ORBAX_TMP}')
        ) and os.path.isdir(os.path.join(directory, n)):
      shutil.rmtree(os.path.join(directory, n))


def _multiprocess(name: str) -> bool:
  """True (and a warning) in a run of several JAX processes, which these
  host-side writes do not handle yet."""
  if jax.process_count() == 1:
    return False
  logging.getLogger('absl').warning(
      'orbax %s not written: runs of %d processes are not handled (the '
      '.npz checkpoints hold the weights)', name, jax.process_count())
  return True


def save_tree(run: rundir.RunDir, name: str, tree: PyTree) -> bool:
  """Writes ``tree`` (a nest of dicts of arrays) as the orbax checkpoint
  ``run.file(name)``, atomically; one already there is kept when it holds
  the same arrays, else moved into ``corrupt/`` (a warning) and replaced.

  Returns:
    Whether it was written (False: an equal one was kept, or a run of
    several JAX processes, which is not handled: a warning).
  """
  if _multiprocess(name):
    return False
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  tree = jax.tree.map(np.asarray, tree)
  final = run.file(name)
  directory, base = os.path.split(final)
  os.makedirs(directory, exist_ok=True)
  _remove_temporaries(directory, base)
  if os.path.exists(final):
    try:
      problem = _difference(restore(final), tree)
    except Exception as e:  # pylint: disable=broad-except
      # Whatever a damaged checkpoint makes orbax / tensorstore raise.
      problem = f'unreadable ({type(e).__name__}: {e})'
    if problem is None:
      return False
    run.quarantine(name, problem)
  tmp = os.path.join(directory, f'.tmp-{base}.{os.getpid()}')
  try:
    with _quiet():
      checkpointer = ocp.StandardCheckpointer()
      try:
        checkpointer.save(os.path.abspath(tmp), tree)
        checkpointer.wait_until_finished()
      finally:
        checkpointer.close()
    _fsync_tree(tmp)
    os.replace(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  rundir._fsync_directory(directory)  # pylint: disable=protected-access
  return True


def _write_json_checked(run: rundir.RunDir, name: str, obj: Any) -> None:
  """Writes ``obj`` as JSON unless the file holds it already; a file that
  differs is moved into ``corrupt/`` first."""
  path = run.file(name)
  obj = rundir.canonical(obj)
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = rundir.canonical(json.load(f))
    except (OSError, ValueError) as e:
      old, why = None, f'unreadable ({e})'
    else:
      why = 'differs from this run'
    if old == obj:
      return
    run.quarantine(name, why)
  run.write_json(name, obj)


def save_members(run: rundir.RunDir, state: Any,
                 members: Sequence[dict[str, Any]], *, epoch: int) -> None:
  """Writes every member's final variables into ``<run>/weights/`` (see the
  module docstring), then ``weights/members.json``.

  Args:
    run: the open run directory.
    state: the sweep's final :class:`jaxkink.training.TrainState` (its
      ``params``, ``batch_stats`` and ``diverged`` have a leading member
      axis).
    members: :func:`jaxkink.training.member_table` of the grid.
    epoch: the epoch the weights are after.
  """
  if _multiprocess('weights/'):
    return
  params = jax.tree.map(np.asarray, state.params)
  stats = jax.tree.map(np.asarray, state.batch_stats)
  diverged = np.asarray(state.diverged).tolist()
  rows = []
  for row in members:
    m = row['member']
    tree = {'params': jax.tree.map(lambda a, m=m: a[m], params)}
    if jax.tree.leaves(stats):
      tree['batch_stats'] = jax.tree.map(lambda a, m=m: a[m], stats)
    save_tree(run, os.path.join(WEIGHTS, member_name(m)), tree)
    rows.append({**row, 'diverged': bool(diverged[m]),
                 'path': member_name(m)})
  _write_json_checked(run, os.path.join(WEIGHTS, MEMBERS_FILE), {
      'format': 1, 'manifest': run.digest, 'epoch': int(epoch),
      'restore': "orbax.checkpoint.StandardCheckpointer().restore(path) -> "
                 "{'params': ..., 'batch_stats': ...}, one member, no member "
                 'axis',
      'members': rows})
