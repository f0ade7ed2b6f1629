"""Kink-hit counters: how close a forward pass came to a kink.

If no pre-activation sits exactly on a kink (and no pooling window holds a
tie), every kink value gives bit-identical gradients, so these counters let
later code screen (theta, minibatch) pairs with a forward pass only. They
must read the very values the backward pass uses (see DESIGN.md section 4):
compute them from the pre-activations the differentiated program saves, not
from a separately compiled forward.

Each counter returns a :class:`KinkHits` reduced over the given axes (all
axes by default, so ``jax.vmap`` it for per-sample or per-theta numbers).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax.numpy as jnp
from flax import struct
from jax import lax

from jaxkink import pooling
from jaxkink.kinks import Kinks
from jaxkink.typing import Array, ArrayLike, Padding

Axis = int | Sequence[int] | None


class KinkHits(NamedTuple):
  """How many entries sit exactly on a kink, and how close the others came.

  Attributes:
    count: number of entries exactly at a kink (int32).
    min_distance: the smallest distance to a kink, in the input's dtype:
      ``min |x - kink|`` for activations, for pooling the smallest gap
      between a window's largest and second-largest member (0 for a tie);
      ``inf`` when there is nothing to measure (e.g. no window has two
      members).
  """
  count: Array  # type: ignore[assignment]  # (shadows tuple.count)
  min_distance: Array


RELU_KINKS = (0.0,)
RELU6_KINKS = (0.0, 6.0)


def kink_distance(x: ArrayLike, points: Sequence[float] = RELU_KINKS) -> Array:
  """Element-wise distance of ``x`` to the nearest of the kink ``points``."""
  x = jnp.asarray(x)
  dist = jnp.full(x.shape, jnp.inf, x.dtype)
  for p in points:
    dist = jnp.minimum(dist, jnp.abs(x - jnp.asarray(p, x.dtype)))
  return dist


def _point_hits(x: ArrayLike, points: Sequence[float], axis: Axis) -> KinkHits:
  dist = kink_distance(x, points)
  on_kink = dist == 0
  count = jnp.sum(on_kink, axis=axis, dtype=jnp.int32)
  return KinkHits(count, jnp.min(dist, axis=axis, initial=jnp.inf))


def relu_hits(x: ArrayLike, axis: Axis = None) -> KinkHits:
  """Entries of ``x`` exactly at 0 (the kink of ReLU and LeakyReLU).

  ``min_distance`` is ``min |x|``. ``-0.0`` counts as a hit: it compares
  equal to 0, and so takes the kink value in the backward pass.
  """
  return _point_hits(x, RELU_KINKS, axis)


def relu6_hits(x: ArrayLike, axis: Axis = None) -> KinkHits:
  """Entries of ``x`` exactly at 0 or 6; ``min_distance`` to the nearer one."""
  return _point_hits(x, RELU6_KINKS, axis)


def pool_hits(x: ArrayLike, window_shape: Sequence[int],
              strides: Sequence[int] | None = None, padding: Padding = 'VALID',
              axis: Axis = None) -> KinkHits:
  """Pooling windows whose maximum is attained more than once (ties).

  Arguments are those of :func:`jaxkink.max_pool`; ``axis`` refers to the
  pooled output's axes. ``min_distance`` is the smallest gap between a
  window's maximum and its largest non-maximal valid member; a tie has gap 0.
  """
  x = jnp.asarray(x)
  unbatched = x.ndim == len(window_shape) + 1
  if unbatched:
    x = x[None]
  geom = pooling.window_geometry(x.shape, window_shape, strides, padding)
  count, gap = window_ties(x, geom)
  if unbatched:
    count, gap = count[0], gap[0]
  tie = count > 1
  return KinkHits(jnp.sum(tie, axis=axis, dtype=jnp.int32),
                  jnp.min(gap, axis=axis, initial=jnp.inf))


def geometry_hits(x: ArrayLike, geom: pooling.WindowGeometry) -> KinkHits:
  """:func:`pool_hits` over all axes, for a window geometry of any layout
  (what :func:`jaxkink.kinkify` recognises as a pool)."""
  count, gap = window_ties(jnp.asarray(x), geom)
  return KinkHits(jnp.sum(count > 1, dtype=jnp.int32),
                  jnp.min(gap, initial=jnp.inf))


def window_ties(x: Array, geom: pooling.WindowGeometry) -> tuple[Array, Array]:
  """Per pooled output: how many valid window members equal the maximum, and
  the gap from the maximum to the largest other member (0 at a tie).

  ``geom`` is any window geometry of :mod:`jaxkink.pooling` (any layout);
  :func:`pool_hits` and :func:`jaxkink.audit` count with it.
  """
  y = pooling.reduce_max(x, geom)
  neg_inf = jnp.array(-jnp.inf, x.dtype)
  count, second = jnp.zeros(y.shape, jnp.int32), neg_inf
  for _, v, ok in pooling.window_slices(x, y, geom):
    count = count + ((v == y) & ok).astype(jnp.int32)
    second = jnp.maximum(second, jnp.where(ok & (v != y), v, neg_inf))
  gap = jnp.where(count > 1, jnp.zeros_like(y), y - second)
  return count, gap


@struct.dataclass
class TapedKinks(Kinks):
  """:class:`Kinks` that also counts, per kinked operation, the kink hits.

  Each ``relu`` / ``relu6`` / ``leaky_relu`` / ``max_pool`` call appends the
  :class:`KinkHits` of its input to ``tape`` (a trace-time list, in call
  order), computed from the very array the operation differentiates: the
  input goes through ``lax.optimization_barrier`` first, so XLA cannot
  recompute it differently (e.g. with another fusion or FMA contraction) for
  the counters and for the backward pass. Use it inside the traced function
  and return the tape's contents from that function::

    taped = TapedKinks.of(kinks)
    logits = model.apply(variables, x, taped)
    return loss(logits), list(taped.tape)

  ``reduce`` gives the axes the counts are summed over (all by default).
  """
  tape: list = struct.field(pytree_node=False, default_factory=list)

  @classmethod
  def of(cls, kinks: Kinks) -> 'TapedKinks':
    """A taped copy of ``kinks`` with an empty tape."""
    return cls(**{f.name: getattr(kinks, f.name)
                  for f in dataclasses.fields(Kinks)}, tape=[])

  def relu(self, x: ArrayLike) -> Array:
    x = lax.optimization_barrier(jnp.asarray(x))
    self.tape.append(relu_hits(lax.stop_gradient(x)))
    return super().relu(x)

  def relu6(self, x: ArrayLike) -> Array:
    x = lax.optimization_barrier(jnp.asarray(x))
    self.tape.append(relu6_hits(lax.stop_gradient(x)))
    return super().relu6(x)

  def leaky_relu(self, x: ArrayLike, slope: ArrayLike = 0.01) -> Array:
    x = lax.optimization_barrier(jnp.asarray(x))
    self.tape.append(relu_hits(lax.stop_gradient(x)))
    return super().leaky_relu(x, slope)

  def max_pool(self, x: ArrayLike, window_shape: Sequence[int],
               strides: Sequence[int] | None = None,
               padding: Padding = 'VALID') -> Array:
    x = lax.optimization_barrier(jnp.asarray(x))
    self.tape.append(pool_hits(lax.stop_gradient(x), window_shape, strides,
                               padding))
    return super().max_pool(x, window_shape, strides, padding)

  def pool_with_geometry(self, x: ArrayLike,
                         geom: pooling.WindowGeometry) -> Array:
    x = lax.optimization_barrier(jnp.asarray(x))
    self.tape.append(geometry_hits(lax.stop_gradient(x), geom))
    return super().pool_with_geometry(x, geom)
