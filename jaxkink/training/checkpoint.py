"""Checkpoints: one atomic ``.npz`` of every leaf of the training state.

Why not orbax: the state is a handful of stacked arrays on one host, a
checkpoint is written once per epoch, and what matters is that a resumed run
continues from the exact bits. An ``.npz`` written to a temporary name and
renamed (``os.replace``) is atomic, needs no extra dependency, and stores
every leaf's raw bits (also bfloat16 and float16, which ``numpy`` alone
cannot name: leaves are saved as unsigned-integer views with their dtype
names beside them). A fingerprint of the tree structure, shapes and dtypes
guards against resuming into a different configuration.
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


def save(path: str | os.PathLike, tree: PyTree, **meta: Any) -> None:
  """Writes every leaf of ``tree`` and the JSON-able ``meta`` atomically."""
  path = os.fspath(path)
  leaves = [np.asarray(a) for a in jax.tree.leaves(tree)]
  arrays = {f'leaf_{i}': a.view(np.dtype(f'u{a.dtype.itemsize}'))
            for i, a in enumerate(leaves)}
  header = {'dtypes': [jnp.dtype(a.dtype).name for a in leaves],
            'fingerprint': fingerprint(tree), 'meta': meta}
  rundir.write_npz(
      path, header=np.frombuffer(json.dumps(header).encode(), np.uint8),
      **arrays)


def load(path: str | os.PathLike, like: PyTree) -> tuple[PyTree, dict]:
  """Reads a checkpoint into the structure of ``like``.

  Returns:
    ``(tree, meta)``: the leaves restored bit for bit, as device arrays.

  Raises:
    ValueError: if the checkpoint's structure, shapes or dtypes differ from
      ``like``'s (another configuration wrote it).
  """
  with np.load(os.fspath(path)) as z:
    header = json.loads(bytes(z['header']).decode())
    if header['fingerprint'] != fingerprint(like):
      raise ValueError(
          f'checkpoint {os.fspath(path)} was written by a different '
          'configuration (model, grid, optimizer or precision); use another '
          'run directory or delete it')
    leaves, treedef = jax.tree.flatten(like)
    restored = [jnp.asarray(z[f'leaf_{i}'].view(jnp.dtype(name)))
                for i, name in enumerate(header['dtypes'])]
  for a, b in zip(leaves, restored):
    if np.shape(a) != b.shape:
      raise ValueError('checkpoint leaf shapes differ from the state')
  return jax.tree.unflatten(treedef, restored), header['meta']
