"""Type aliases used across jaxkink."""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, Union

import jax
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
# A JAX or NumPy array: for arguments whose ``.shape`` or ``.dtype`` is read
# or that are sliced (``ArrayLike`` also admits Python scalars, which have
# neither), and for values that are JAX arrays in a program and NumPy arrays
# on the host.
AnyArray = Union[jax.Array, np.ndarray]
DTypeLike = jax.typing.DTypeLike
PRNGKey = jax.Array
PyTree = Any
Padding = Union[str, Sequence[tuple[int, int]]]


class KinkModel(Protocol):
  """What the engines need of a model: ``init(rngs, x, kinks, ...)`` and
  ``apply(variables, x, kinks, ...)``, the kinks after the input (a zoo
  model, or an outside one through
  :class:`jaxkink.models.external.External`)."""

  @property
  def init(self) -> Callable[..., Any]:
    ...

  @property
  def apply(self) -> Callable[..., Any]:
    ...
