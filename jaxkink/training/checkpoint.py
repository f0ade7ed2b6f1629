"""Checkpoints: one atomic ``.npz`` of every leaf of the training state.

Why not orbax: the state is a handful of stacked arrays on one host, a
checkpoint is written once per epoch, and what matters is that a resumed run
continues from the exact bits. An ``.npz`` written to a temporary name and
renamed (``os.replace``) is atomic, needs no extra dependency, and stores
every leaf's raw bits (also bfloat16 and float16, which ``numpy`` alone
cannot name: leaves are saved as unsigned-integer views with their dtype
names beside them). A fingerprint of the tree structure, shapes and dtypes
guards against resuming into a different configuration. In a run
directory (:class:`jaxkink.rundir.RunDir`) checkpoints are also tagged with
their epoch and the manifest's digest, and the newest two are kept.

The final weights a user restores are also written as orbax checkpoints
(:mod:`jaxkink.weights`); resuming reads only these ``.npz`` files.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxkink import rundir
from jaxkink.typing import PyTree


def fingerprint(tree: PyTree) -> str:
  """A short hash of ``tree``'s structure, leaf shapes and dtypes."""
  leaves, treedef = jax.tree.flatten(tree)
  text = json.dumps([str(treedef)] + [
      [list(np.shape(a)), jnp.dtype(a.dtype).name] for a in leaves])
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def to_arrays(tree: PyTree, **meta: Any) -> dict[str, np.ndarray]:
  """Every leaf of ``tree`` (raw bits) and the JSON-able ``meta``, as the
  arrays of one ``.npz``."""
  leaves = [np.asarray(a) for a in jax.tree.leaves(tree)]
  arrays = {f'leaf_{i}': a.view(np.dtype(f'u{a.dtype.itemsize}'))
            for i, a in enumerate(leaves)}
  header = {'dtypes': [jnp.dtype(a.dtype).name for a in leaves],
            'fingerprint': fingerprint(tree), 'meta': meta}
  arrays['header'] = np.frombuffer(json.dumps(header).encode(), np.uint8)
  return arrays


def from_arrays(arrays: dict[str, np.ndarray], like: PyTree,
                name: str = 'checkpoint') -> tuple[PyTree, dict]:
  """The inverse of :func:`to_arrays`, into the structure of ``like``.

  Returns:
    ``(tree, meta)``: the leaves restored bit for bit, as device arrays.

  Raises:
    ValueError: if the arrays' structure, shapes or dtypes differ from
      ``like``'s (another configuration wrote them) or a leaf is missing.
  """
  try:
    header = json.loads(bytes(arrays['header']).decode())
    fp, dtypes, meta = header['fingerprint'], header['dtypes'], header['meta']
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f'{name} has no readable header ({e})') from None
  if fp != fingerprint(like):
    raise ValueError(
        f'{name} was written by a different configuration (model, grid, '
        'optimizer or precision); use another run directory or delete it')
  leaves, treedef = jax.tree.flatten(like)
  if len(dtypes) != len(leaves) or any(
      f'leaf_{i}' not in arrays for i in range(len(leaves))):
    raise ValueError(f'{name} lacks leaves of the state')
  restored = [jnp.asarray(arrays[f'leaf_{i}'].view(jnp.dtype(d)))
              for i, d in enumerate(dtypes)]
  for a, b in zip(leaves, restored):
    if np.shape(a) != b.shape:
      raise ValueError(f'{name}: leaf shapes differ from the state')
  return jax.tree.unflatten(treedef, restored), meta


def save(path: str | os.PathLike, tree: PyTree, **meta: Any) -> None:
  """Writes every leaf of ``tree`` and the JSON-able ``meta`` atomically."""
  rundir.write_npz(os.fspath(path), **to_arrays(tree, **meta))


def load(path: str | os.PathLike, like: PyTree) -> tuple[PyTree, dict]:
  """Reads a checkpoint written by :func:`save` into the structure of
  ``like``; see :func:`from_arrays`."""
  with np.load(os.fspath(path), allow_pickle=False) as z:
    return from_arrays({k: z[k] for k in z.files}, like, os.fspath(path))
