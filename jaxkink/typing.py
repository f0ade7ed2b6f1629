"""Type aliases used across jaxkink."""

from __future__ import annotations

from typing import Any, Sequence, Union

import jax

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
DTypeLike = jax.typing.DTypeLike
PRNGKey = jax.Array
PyTree = Any
Padding = Union[str, Sequence[tuple[int, int]]]
