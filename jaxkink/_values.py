"""Shared helpers: turning kink values into arrays of the right dtype and shape."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from jaxkink.typing import Array, ArrayLike, DTypeLike


def as_kink_value(value: ArrayLike, shape: Sequence[int], dtype: DTypeLike,
                  name: str) -> Array:
  """Casts a kink value to ``dtype`` and checks it broadcasts to ``shape``.

  Kink values are data, not constants: they may be traced, vmapped or
  sharded. They are cast to the dtype of the array they act on (so a float32
  ``s`` used on float16 activations is rounded to float16, as the computation
  itself would be) and must broadcast to that array's shape *without*
  enlarging it: a per-channel value of shape ``(C,)`` works on ``(N, H, W, C)``,
  a value of shape ``(2, C)`` does not.

  Args:
    value: a scalar or array, the kink value.
    shape: the shape of the array the kink value acts on.
    dtype: that array's dtype.
    name: the argument's name, for the error message.

  Returns:
    ``value`` as a ``dtype`` array, not yet broadcast.

  Raises:
    ValueError: if ``value`` does not broadcast to ``shape``.
  """
  value = jnp.asarray(value, dtype=dtype)
  shape = tuple(shape)
  try:
    joint = jnp.broadcast_shapes(value.shape, shape)
  except ValueError:
    joint = None
  if joint != shape:
    raise ValueError(
        f'{name} has shape {value.shape}, which does not broadcast to the '
        f'shape {shape} it acts on; use a scalar, a per-element array or a '
        'per-channel array of shape (C,).'
    )
  return value


def vary_together(*arrays: Array) -> tuple[Array, ...]:
  """``arrays``, each cast to vary over every mesh axis any of them varies over.

  Inside ``jax.shard_map`` (with its default ``check_vma=True``) each value
  has a type that says over which manual mesh axes it differs between
  devices. A kink value sharded over an axis, applied to activations that
  are replicated over it, makes the derivative differ between devices while
  the primal does not, and JAX rejects a custom rule whose tangent and primal
  types differ; the converse (sharded activations, a replicated kink value)
  makes JAX insert casts inside the rules' traced programs that no longer
  type-check once they are transposed. Giving the primitive's operands one
  type first avoids both, as ``jax.nn.relu(x) * s`` gets implicitly: like
  there, the gradient of a replicated input is then summed over the axis
  (the transpose of the cast). Outside ``shard_map`` nothing changes.
  """
  axes = frozenset().union(*(_varying_axes(a) for a in arrays))
  out = []
  for a in arrays:
    missing = axes - _varying_axes(a)
    out.append(jax.lax.pcast(a, tuple(sorted(missing)), to='varying')
               if missing else a)
  return tuple(out)


def _varying_axes(x: Array) -> frozenset[str]:
  """The manual mesh axes over which ``x`` varies (empty outside shard_map)."""
  aval = jax.typeof(x)
  vma: Any = getattr(aval, 'vma', None)  # jax <= 0.9
  if vma is None:  # jax 0.10: the manual-axis type holds it
    vma = getattr(getattr(aval, 'mat', None), 'varying', frozenset())
  return frozenset(vma)
