r"""Max pooling whose derivative at ties is a runtime value ``beta``.

For a pooling window whose maximum is attained on the index set :math:`A`,
the backward pass sends the window's cotangent ``g``

* ``beta = 0`` (*native*): all of it to the first index of :math:`A` in
  row-major window order, as PyTorch/cuDNN and ``flax.linen.max_pool`` do;
* ``beta = 1`` (*minimal*): ``g / |A|`` to each index of :math:`A`;
* any other real ``beta`` (*hybrid*): ``(1 - beta) * native + beta * minimal``,
  computed per window; ``beta > 1`` gives the large "conservative" Jacobians
  that destabilise training in Boustany's paper.

A window without a tie sends exactly ``g`` to its maximum whatever ``beta``
is, so without ties every ``beta`` gives bit-identical gradients. Overlapping
windows add their contributions; padding never wins a window.

The forward value is the exact window maximum, bit-identical to
``lax.reduce_window(x, -inf, lax.max, ...)`` and ``flax.linen.max_pool``.
With ``blended_forward=True`` it is instead ``(1 - beta) * max + beta * max``,
rounded as written, which is how the TMLR reference code computes the pooled
value (it adds rounding error for large ``beta``).

References:
  Boustany, *On the numerical reliability of nonsmooth autodiff: a MaxPool
  case study*, TMLR 2024.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxkink._values import as_kink_value
from jaxkink._values import vary_together
from jaxkink.typing import Array, ArrayLike, Padding


class WindowGeometry(NamedTuple):
  """A pooling configuration resolved to full-rank XLA terms."""
  dims: tuple[int, ...]
  strides: tuple[int, ...]
  pads: tuple[tuple[int, int], ...]


def window_geometry(shape: Sequence[int], window_shape: Sequence[int],
                    strides: Sequence[int] | None = None,
                    padding: Padding = 'VALID') -> WindowGeometry:
  """Resolves flax-style pooling arguments for an input of ``shape``.

  The input has layout ``(batch dims..., window dims..., features)`` as in
  ``flax.linen.pool``; ``strides`` default to 1 (flax's default, not
  PyTorch's, which is the window size).

  Raises:
    ValueError: for mismatched lengths, non-positive sizes, negative padding
      or a window larger than the padded input.
  """
  window_shape = tuple(int(w) for w in window_shape)
  n = len(window_shape)
  strides = (1,) * n if strides is None else tuple(int(s) for s in strides)
  if len(strides) != n:
    raise ValueError(f'strides {strides} must have one entry per window '
                     f'dimension {window_shape}')
  if any(w < 1 for w in window_shape) or any(s < 1 for s in strides):
    raise ValueError(f'window_shape {window_shape} and strides {strides} must '
                     'be positive')
  if len(shape) < n + 1:
    raise ValueError(f'input of shape {tuple(shape)} has too few dimensions for '
                     f'a {n}-d window; expected (batch..., spatial..., '
                     'features)')
  nb = len(shape) - n - 1
  dims = (1,) * nb + window_shape + (1,)
  full_strides = (1,) * nb + strides + (1,)
  if isinstance(padding, str):
    if padding.upper() not in ('SAME', 'VALID'):
      raise ValueError(f"padding must be 'SAME', 'VALID' or (low, high) pairs, "
                       f'got {padding!r}')
    pads = tuple(lax.padtype_to_pads(tuple(shape), dims, full_strides,
                                     padding.upper()))
  else:
    spatial = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(spatial) != n:
      raise ValueError(f'padding {padding} must give one (low, high) pair per '
                       f'window dimension {window_shape}')
    pads = ((0, 0),) * nb + spatial + ((0, 0),)
  if any(lo < 0 or hi < 0 for lo, hi in pads):
    raise ValueError(f'negative padding {pads} is not supported')
  for size, (lo, hi), w in zip(shape, pads, dims):
    if size + lo + hi < w:
      raise ValueError(f'window {window_shape} does not fit in input of shape '
                       f'{tuple(shape)} with padding {pads}')
  return WindowGeometry(dims, full_strides, tuple(pads))


def reduce_max(x: Array, geom: WindowGeometry) -> Array:
  """The exact window maxima (``lax.reduce_window`` max, padding -inf)."""
  return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max,
                           geom.dims, geom.strides, geom.pads)


def _offsets(geom: WindowGeometry):
  return list(itertools.product(*(range(d) for d in geom.dims)))


def window_slices(x: Array, y: Array, geom: WindowGeometry):
  """The window members, one strided slice per window offset.

  Returns a list, in row-major window order, of ``(offset, values, valid)``:
  ``values[i]`` is the member at ``offset`` of the window whose output is
  ``y[i]``, and ``valid`` is False where that member is padding. Slicing is
  exact, so ``values == y`` finds the window's maxima bit for bit.
  """
  xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype), [(lo, hi, 0) for lo, hi in geom.pads])
  inside = lax.pad(jnp.ones(x.shape, bool), False,
                   [(lo, hi, 0) for lo, hi in geom.pads])
  out = []
  for off in _offsets(geom):
    limit = [o + s * (n - 1) + 1 for o, s, n in zip(off, geom.strides, y.shape)]
    out.append((off,
                lax.slice(xp, off, limit, geom.strides),
                lax.slice(inside, off, limit, geom.strides)))
  return out


def window_maxima(x: Array, y: Array, geom: WindowGeometry):
  """Per offset, whether that member attains its window's max; and |A|.

  Returns ``(hits, count)``: ``hits`` is a list of ``(offset, mask)`` in
  row-major window order and ``count`` the number of maxima per window.
  """
  members = window_slices(x, y, geom)
  hits = [(off, (v == y) & ok) for off, v, ok in members]
  count = sum(h.astype(jnp.int32) for _, h in hits)
  return hits, count


def _divide(num: Array, count: ArrayLike) -> Array:
  """``num / max(count, 1)``, correctly rounded in every program.

  XLA rewrites ``a / broadcast(b)`` into ``a * broadcast(1 / b)``, which is
  not correctly rounded, and ``jax.vmap`` broadcasts an unbatched divisor
  (here ``count``, when only ``g`` or ``beta`` is batched). A divisor that
  depends on the numerator element by element is never a broadcast, so XLA
  keeps the true division. The select changes no value: a NaN numerator
  gives NaN either way.
  """
  divisor = jnp.maximum(count, 1).astype(num.dtype)
  return num / jnp.where(jnp.isnan(num), jnp.ones_like(divisor), divisor)


def _pool_pullback(x: Array, beta: Array, g: Array, geom: WindowGeometry) -> Array:
  y = reduce_max(x, geom)
  hits, count = window_maxima(x, y, geom)
  tie = count > 1
  zeros = lax.full_like(g, 0)
  minimal = _divide(g, count)
  # Hybrid weights of a tied window: (1 - beta) + beta / |A| for its first
  # maximum, beta / |A| for the others, then one product with g. Written as
  # (1 - beta) * g + beta * g / |A| it would be a multiply-add, which XLA
  # fuses into an FMA in some programs and not in others, so that the same
  # beta could round differently vmapped and not.
  share = _divide(jnp.broadcast_to(beta, y.shape), count)
  lead = (1 - beta) + share
  is_native = beta == 0
  is_minimal = beta == 1
  taken = jnp.zeros(y.shape, bool)  # the window's first maximum is found
  shape_p = [n + lo + hi for n, (lo, hi) in zip(x.shape, geom.pads)]
  contributions = []
  for off, hit in hits:
    first = hit & ~taken
    taken = taken | hit
    tied = jnp.where(is_native, lax.select(first, g, zeros),
                     jnp.where(is_minimal, minimal,
                               g * jnp.where(first, lead, share)))
    c = lax.select(hit, lax.select(tie, tied, g), zeros)
    contributions.append((off, c))
  # Accumulate in the order XLA's select_and_scatter visits windows (row-major
  # over windows, i.e. reverse row-major over offsets), so that beta = 0
  # reproduces jax's own max-pool gradient bit for bit, overlaps included.
  dxp = jnp.zeros(shape_p, g.dtype)
  for off, c in reversed(contributions):
    cfg = [(o, sp - o - (s * (n - 1) + 1), s - 1)
           for o, s, n, sp in zip(off, geom.strides, y.shape, shape_p)]
    dxp = dxp + lax.pad(c, jnp.array(0, g.dtype), cfg)
  return lax.slice(dxp, [lo for lo, _ in geom.pads],
                   [lo + n for (lo, _), n in zip(geom.pads, x.shape)])


def _pool_tangent(x: Array, beta: Array, t: Array,
                  geom: WindowGeometry) -> Array:
  """The pooled value's tangent, ``sum_a w_a t_a`` per window (forward mode).

  The weights are the pullback's (:func:`_pool_pullback`), so this map and
  the pullback are each other's transpose.
  """
  y = reduce_max(x, geom)
  hits, count = window_maxima(x, y, geom)
  tie = count > 1
  share = _divide(jnp.broadcast_to(beta, y.shape), count)
  lead = (1 - beta) + share
  is_native = beta == 0
  is_minimal = beta == 1
  taken = jnp.zeros(y.shape, bool)
  zeros = lax.full_like(y, 0, t.dtype)
  members = window_slices(t, y, geom)
  out = zeros
  for (_, hit), (_, member, _) in zip(hits, members):
    first = hit & ~taken
    taken = taken | hit
    tied = jnp.where(is_native, lax.select(first, member, zeros),
                     jnp.where(is_minimal, _divide(member, count),
                               member * jnp.where(first, lead, share)))
    out = out + lax.select(hit, lax.select(tie, tied, member), zeros)
  return out


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _pool_linear(x: Array, beta: Array, t: Array, geom: WindowGeometry) -> Array:
  """:func:`_pool_tangent` as a linear map whose transpose is the pullback.

  JAX would transpose :func:`_pool_tangent` itself, but not to the pullback's
  bits: its transposed division becomes a multiplication by a reciprocal, and
  its selects become sums with zeros. ``lax.custom_linear_solve`` is JAX's
  public way of giving a linear map its own transpose; it wants a map from a
  space to itself, so both sides are flattened and zero-padded to one length
  (the "solve" is the tangent map, its transpose the exact pullback).
  """
  y_shape = _output_shape(x.shape, geom)
  n, m = x.size, math.prod(y_shape)
  size = max(n, m)

  def flat(v):
    return lax.pad(v.ravel(), jnp.array(0, v.dtype), [(0, size - v.size, 0)])

  def solve(_, b):
    return flat(_pool_tangent(x, beta, b[:n].reshape(x.shape), geom))

  def transpose_solve(_, ct):
    return flat(_pool_pullback(x, beta, ct[:m].reshape(y_shape), geom))

  dy = lax.custom_linear_solve(lambda v: v, flat(t), solve, transpose_solve)
  return dy[:m].reshape(y_shape)


@_pool_linear.defjvp
def _pool_linear_jvp(geom, primals, tangents):
  # Linear in t, and its weights are constant in x and beta between ties.
  # The rule also keeps custom_linear_solve's own JVP, which fails on a
  # symbolic-zero tangent (forward over forward), out of every program.
  x, beta, t = primals
  return (_pool_linear(x, beta, t, geom),
          _pool_linear(x, beta, tangents[2], geom))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _max_pool(x: Array, beta: Array, geom: WindowGeometry,
              blended: bool) -> Array:
  y = reduce_max(x, geom)
  if blended:
    y = (1 - beta) * y + beta * y
  return y


@_max_pool.defjvp
def _max_pool_jvp(geom, blended, primals, tangents):
  x, beta = primals
  t, _ = tangents
  return _max_pool(x, beta, geom, blended), _pool_linear(x, beta, t, geom)


def max_pool(x: ArrayLike, window_shape: Sequence[int],
             strides: Sequence[int] | None = None, padding: Padding = 'VALID',
             beta: ArrayLike = 0.0, *, blended_forward: bool = False) -> Array:
  r"""Max pooling with a chosen Jacobian at ties (native / minimal / hybrid).

  Arguments follow :func:`flax.linen.max_pool`: ``x`` has layout
  ``(batch dims..., window dims..., features)`` (NHWC for images),
  ``strides`` default to 1 in every window dimension, and ``padding`` is
  ``'SAME'``, ``'VALID'`` or one ``(low, high)`` pair per window dimension.
  With ``beta = 0`` values and gradients equal :func:`flax.linen.max_pool`'s.

  The backward pass sends, per window with maxima :math:`A`, cotangent
  :math:`g` as :math:`(1 - \beta)\, g\, e_{\min A} + \beta\, g / |A|
  \sum_{a \in A} e_a` (exactly ``g`` to the maximum when :math:`|A| = 1`).
  Forward mode is the transpose, the tangent :math:`\sum_a w_a \dot x_a` of
  each window with the same weights, so ``jax.jvp``, ``jacfwd``, ``hessian``
  and Hessian-vector products of either order work too.

  Args:
    x: input array.
    window_shape: the window size in each window dimension, e.g. ``(2, 2)``.
    strides: the strides, one per window dimension (default all 1).
    padding: ``'SAME'``, ``'VALID'`` or ``((lo, hi), ...)``; padding is
      ``-inf`` and never wins a window.
    beta: the tie rule, 0 native, 1 minimal, anything else hybrid: a scalar or
      an array broadcastable to the output (e.g. per channel); traced.
    blended_forward: compute the pooled value as ``(1 - beta) * max + beta *
      max`` as the TMLR reference code does (compatibility mode).

  Returns:
    The pooled array.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxkink
    >>> x = jnp.zeros((1, 2, 2, 1))
    >>> pool = lambda x, b: jaxkink.max_pool(x, (2, 2), (2, 2), beta=b).sum()
    >>> jax.grad(pool)(x, 0.0).ravel()
    Array([1., 0., 0., 0.], dtype=float32)
    >>> jax.grad(pool)(x, 1.0).ravel()
    Array([0.25, 0.25, 0.25, 0.25], dtype=float32)
  """
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f'max_pool needs a floating-point input, got {x.dtype}')
  unbatched = x.ndim == len(window_shape) + 1
  if unbatched:
    x = x[None]
  geom = window_geometry(x.shape, window_shape, strides, padding)
  y = pool_with_geometry(x, geom, beta, blended_forward=blended_forward)
  return y[0] if unbatched else y


def pool_with_geometry(x: Array, geom: WindowGeometry, beta: ArrayLike = 0.0,
                       *, blended_forward: bool = False,
                       name: str = 'beta') -> Array:
  """:func:`max_pool` on a resolved full-rank geometry, any layout.

  ``geom`` gives a window size, stride and padding for every dimension of
  ``x`` (1, 1, (0, 0) where nothing is pooled), as ``lax.reduce_window``
  takes them; :func:`window_geometry` builds one from flax-style arguments,
  and :func:`jaxkink.kinkify` from a traced ``reduce_window_max``. ``name``
  names ``beta`` in the error for a shape that does not broadcast.
  """
  beta = as_kink_value(beta, _output_shape(x.shape, geom), x.dtype, name)
  x, beta = vary_together(x, beta)
  return _max_pool(x, beta, geom, blended_forward)


def pool_output_shape(shape: Sequence[int], window_shape: Sequence[int],
                      strides: Sequence[int] | None = None,
                      padding: Padding = 'VALID') -> tuple[int, ...]:
  """Shape of ``max_pool``'s output for an input of ``shape``."""
  return _output_shape(shape, window_geometry(shape, window_shape, strides,
                                             padding))


def _output_shape(shape: Sequence[int], geom: WindowGeometry) -> tuple[int, ...]:
  return tuple((n + lo + hi - w) // s + 1 for n, w, s, (lo, hi)
               in zip(shape, geom.dims, geom.strides, geom.pads))

