"""``Kinks``: every kink value of a network in one small pytree.

Models take a ``Kinks`` value at call time and route each nonsmooth operation
through it (``kinks.relu(x)``, ``kinks.max_pool(x, (2, 2), (2, 2))``), so one
compiled function serves every kink value and ``jax.vmap`` can sweep them::

  def loss(params, x, y, s):
    logits = model.apply(params, x, jaxkink.Kinks(relu_s=s))
    ...
  grads = jax.vmap(jax.grad(loss), in_axes=(None, None, None, 0))(
      params, x, y, jnp.array([0.0, 1.0]))

The values are pytree leaves (traced, vmappable, shardable); the two
compatibility modes are static metadata (changing them recompiles, since they
change the program).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import struct

from jaxkink import activations, pooling
from jaxkink.typing import Array, ArrayLike, Padding


@struct.dataclass
class Kinks:
  """Derivatives chosen at the kinks, and the compatibility modes.

  The defaults are JAX's own conventions, so a model run with ``Kinks()``
  gives values and gradients bit-identical to one written with
  ``jax.nn.relu``, ``jax.nn.relu6``, ``jax.nn.leaky_relu`` and
  ``flax.linen.max_pool``.

  Attributes:
    relu_s: ReLU'(0).
    relu6_alpha: ReLU6'(0).
    relu6_beta: ReLU6'(6).
    leaky_s: LeakyReLU'(0) (JAX's ``leaky_relu`` gives 1, PyTorch's the slope).
    pool_beta: MaxPool tie rule: 0 native, 1 minimal, other values hybrid.
    legacy_relu_grad: in ReLU and ReLU6, assign the kink value to the input
      gradient instead of multiplying the upstream cotangent, as the 2021
      reference code (``deel-ai/relu-prime``, ``relu.py``) does; static.
    blended_pool_forward: compute the pooled value as
      ``(1 - beta) * max + beta * max`` (the TMLR reference code; static).
  """
  relu_s: ArrayLike = 0.0
  relu6_alpha: ArrayLike = 0.0
  relu6_beta: ArrayLike = 0.0
  leaky_s: ArrayLike = 1.0
  pool_beta: ArrayLike = 0.0
  legacy_relu_grad: bool = struct.field(pytree_node=False, default=False)
  blended_pool_forward: bool = struct.field(pytree_node=False, default=False)

  @classmethod
  def sweep(cls, base: Kinks | None = None,
            **values: ArrayLike) -> tuple[Kinks, Kinks]:
    """Kink values to ``vmap`` over, and the ``in_axes`` that maps them.

    The fields named in ``values`` hold the swept values, 1-D arrays of one
    length; the other fields keep ``base``'s values (``Kinks()`` by
    default) and are not mapped. A plain ``in_axes=0`` fails when some
    fields are scalars (JAX: "its rank should be at least 1"); the returned
    axes map only the swept fields::

      kinks, axes = jaxkink.Kinks.sweep(relu_s=[0.0, 0.5, 1.0],
                                        pool_beta=[0.0, 0.0, 1.0])
      grads = jax.vmap(grad_fn, in_axes=(axes, None))(kinks, x)

    Raises:
      ValueError: for no values, an unknown or static field (the modes
        change the program: sweep them with a Python loop), a value that is
        not 1-D, or lengths that differ.
    """
    base = cls() if base is None else base
    leaves = [f.name for f in dataclasses.fields(cls)
              if f.metadata.get('pytree_node', True)]
    if not values:
      raise ValueError('Kinks.sweep needs at least one field to sweep, e.g. '
                       'Kinks.sweep(relu_s=[0.0, 1.0])')
    unknown = sorted(set(values) - set(leaves))
    if unknown:
      raise ValueError(f'Kinks.sweep: cannot sweep {", ".join(unknown)}; the '
                       f'kink values are {", ".join(leaves)} (the modes are '
                       'static: loop over them instead)')
    arrays = {k: jnp.asarray(v) for k, v in values.items()}
    shapes = {k: a.shape for k, a in arrays.items()}
    if any(len(sh) != 1 for sh in shapes.values()) or len(
        set(shapes.values())) != 1:
      raise ValueError(f'Kinks.sweep needs 1-D values of one length; got '
                       f'shapes {shapes}')
    axes = dict.fromkeys(leaves)
    axes.update(dict.fromkeys(arrays, 0))
    return base.replace(**arrays), base.replace(**axes)

  @classmethod
  def stack(cls, kinks: Sequence[Kinks]) -> Kinks:
    """Several ``Kinks`` values as one, every field stacked on a new leading
    axis: ``jax.vmap(f, in_axes=(0, ...))`` then maps all of them.

    Raises:
      ValueError: for an empty sequence, or values whose static modes differ.
    """
    kinks = list(kinks)
    if not kinks:
      raise ValueError('Kinks.stack needs at least one Kinks value')
    modes = {(k.legacy_relu_grad, k.blended_pool_forward) for k in kinks}
    if len(modes) > 1:
      raise ValueError('Kinks.stack: the values differ in their static modes '
                       f'(legacy_relu_grad, blended_pool_forward): {modes}; '
                       'those change the program and cannot be stacked')
    return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]),
                        *kinks)

  def relu(self, x: ArrayLike) -> Array:
    """:func:`jaxkink.relu` with ``s = self.relu_s``."""
    return activations.relu(x, self.relu_s, legacy=self.legacy_relu_grad)

  def relu6(self, x: ArrayLike) -> Array:
    """:func:`jaxkink.relu6` with this value's ``alpha`` and ``beta``."""
    return activations.relu6(x, self.relu6_alpha, self.relu6_beta,
                             legacy=self.legacy_relu_grad)

  def leaky_relu(self, x: ArrayLike, slope: ArrayLike = 0.01) -> Array:
    """:func:`jaxkink.leaky_relu` with ``s = self.leaky_s``."""
    # The 2021 reference code's LeakyReLU multiplies the cotangent (only its
    # ReLU and ReLU6 assign), so ``legacy_relu_grad`` does not apply here.
    return activations.leaky_relu(x, slope, self.leaky_s)

  def max_pool(self, x: ArrayLike, window_shape: Sequence[int],
               strides: Sequence[int] | None = None,
               padding: Padding = 'VALID') -> Array:
    """:func:`jaxkink.max_pool` with ``beta = self.pool_beta``."""
    return pooling.max_pool(x, window_shape, strides, padding, self.pool_beta,
                            blended_forward=self.blended_pool_forward)

  def pool_with_geometry(self, x: ArrayLike,
                         geom: pooling.WindowGeometry) -> Array:
    """:func:`jaxkink.pooling.pool_with_geometry` with this value's ``beta``
    (any layout; :func:`jaxkink.kinkify` pools through it)."""
    return pooling.pool_with_geometry(
        jnp.asarray(x), geom, self.pool_beta,
        blended_forward=self.blended_pool_forward, name='pool_beta')

  def replace(self, **changes: object) -> Kinks:
    """A copy with the named fields changed (``dataclasses.replace``).

    ``flax.struct.dataclass`` puts its own ``replace``, which does the same,
    in place of this one when it makes the class: this definition is there
    for type checkers. A value may be ``None`` or an int where the result
    serves as ``in_axes``.
    """
    # mypy checks the changes against the fields' types, which an in_axes
    # value (None, 0) does not have.
    return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
