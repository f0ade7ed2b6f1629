"""Shared helpers: turning kink values into arrays of the right dtype and shape."""

from __future__ import annotations

from typing import Sequence

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
