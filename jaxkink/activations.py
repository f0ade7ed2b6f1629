r"""Kinked activations whose derivative at the kink is a runtime value.

Each activation's forward value is exactly that of its ``jax.nn`` namesake and
never depends on the kink value. The derivative at the kink is an ordinary
array argument, so it can be traced, vmapped and changed without recompiling.

Two backward conventions are offered:

* the default multiplies the upstream cotangent ``g`` by the kink value
  (``s * g`` at ``x == 0``). It is written as a ``jax.custom_jvp`` whose rule is
  linear in the tangent, as ``jax.nn.relu`` is, so forward mode, ``jacfwd`` and
  Hessian-vector products work too;
* ``legacy=True`` *assigns* the kink value to the input gradient (``s`` at
  ``x == 0``, whatever ``g`` is). This is what the 2021 reference code of
  Bertoin et al. does and is kept only to reproduce its figures; it is not
  linear in ``g``, hence a ``jax.custom_vjp`` (reverse mode only).

Kink values are cast to the input's dtype and may be scalars, per-element or
per-channel arrays (anything that broadcasts to the input without enlarging
it). They and the LeakyReLU slope get zero cotangent, except that in the
default convention the LeakyReLU slope is differentiated as the parameter it
is (``d/d slope = x`` for ``x < 0``).

References:
  Bertoin, Bolte, Gerchinovitz, Pauwels, *Numerical influence of ReLU'(0) on
  backpropagation*, NeurIPS 2021.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxkink._values import as_kink_value
from jaxkink._values import vary_together
from jaxkink.typing import Array, ArrayLike, PRNGKey

_Kink = tuple[float, Array]  # (kink location, kink value)


def _pullback(g: Array, smooth: Array, kinks: Sequence[_Kink], x: Array,
              legacy: bool) -> Array:
  """Input cotangent: ``smooth`` off the kinks, the kink value at each kink.

  ``smooth`` already holds the derivative times ``g`` away from the kinks and
  0 at them. At a kink the default convention gives ``value * g`` and the
  legacy one ``value``. A zero kink value leaves the +0.0 of ``smooth`` in
  place, so that the default values reproduce ``jax.nn`` to the bit (``0 * g``
  would be -0.0 for negative ``g``).
  """
  out = smooth
  for point, value in kinks:
    at_kink = x == point
    if legacy:
      out = lax.select(at_kink, jnp.broadcast_to(value, x.shape), out)
    else:
      hit = at_kink & (value != 0)
      out = lax.select(hit, value * g, out)
  return out


def _zeros(g: Array) -> Array:
  return lax.full_like(g, 0)


# --------------------------------------------------------------------- ReLU


@jax.custom_jvp
def _relu(x: Array, s: Array) -> Array:
  del s
  return jnp.maximum(x, 0)


@_relu.defjvp
def _relu_jvp(primals, tangents):
  x, s = primals
  g, _ = tangents
  smooth = lax.select(x > 0, g, _zeros(g))
  return _relu(x, s), _pullback(g, smooth, [(0, s)], x, legacy=False)


@jax.custom_vjp
def _relu_legacy(x: Array, s: Array) -> Array:
  del s
  return jnp.maximum(x, 0)


def _relu_legacy_fwd(x, s):
  return _relu_legacy(x, s), (x, s)


def _relu_legacy_bwd(res, g):
  x, s = res
  smooth = lax.select(x > 0, g, _zeros(g))
  return _pullback(g, smooth, [(0, s)], x, legacy=True), None


_relu_legacy.defvjp(_relu_legacy_fwd, _relu_legacy_bwd)


def relu(x: ArrayLike, s: ArrayLike = 0.0, *, legacy: bool = False) -> Array:
  r"""Rectified linear unit with a chosen derivative at 0.

  .. math::
    \mathrm{relu}(x) = \max(x, 0), \qquad
    \nabla \mathrm{relu}(x) = \begin{cases} 1 & x > 0 \\ s & x = 0 \\
    0 & x < 0 \end{cases}

  so the backward pass gives ``g * (x > 0) + s * g * (x == 0)``. With the
  default ``s = 0`` values and gradients are bit-identical to
  :func:`jax.nn.relu`.

  Args:
    x: input array.
    s: ReLU'(0), a scalar or an array broadcastable to ``x`` (per neuron,
      per channel); traced, so changing it does not recompile.
    legacy: assign ``s`` to the input gradient at ``x == 0`` instead of
      multiplying the upstream cotangent by it (the 2021 reference code's
      convention; reverse mode only).

  Returns:
    ``max(x, 0)``, with the dtype and shape of ``x``.

  Examples:
    >>> import jax, jaxkink
    >>> jax.grad(lambda x: jaxkink.relu(x, 0.5))(0.0)
    Array(0.5, dtype=float32, weak_type=True)
    >>> jax.grad(lambda x: 3.0 * jaxkink.relu(x, 0.5))(0.0)
    Array(1.5, dtype=float32, weak_type=True)

  See also: :func:`relu6`, :func:`leaky_relu`, :func:`random_kink_relu`.
  """
  x = jnp.asarray(x)
  s = as_kink_value(s, x.shape, x.dtype, 's')
  x, s = vary_together(x, s)
  return (_relu_legacy if legacy else _relu)(x, s)


# -------------------------------------------------------------------- ReLU6


@jax.custom_jvp
def _relu6(x: Array, alpha: Array, beta: Array) -> Array:
  del alpha, beta
  return jnp.minimum(jnp.maximum(x, 0), 6.0)


def _relu6_pullback(x, alpha, beta, g, legacy):
  smooth = lax.select((x > 0) & (x < 6), g, _zeros(g))
  return _pullback(g, smooth, [(0, alpha), (6, beta)], x, legacy)


@_relu6.defjvp
def _relu6_jvp(primals, tangents):
  x, alpha, beta = primals
  g = tangents[0]
  return _relu6(x, alpha, beta), _relu6_pullback(x, alpha, beta, g, False)


@jax.custom_vjp
def _relu6_legacy(x: Array, alpha: Array, beta: Array) -> Array:
  del alpha, beta
  return jnp.minimum(jnp.maximum(x, 0), 6.0)


def _relu6_legacy_fwd(x, alpha, beta):
  return _relu6_legacy(x, alpha, beta), (x, alpha, beta)


def _relu6_legacy_bwd(res, g):
  x, alpha, beta = res
  return _relu6_pullback(x, alpha, beta, g, True), None, None


_relu6_legacy.defvjp(_relu6_legacy_fwd, _relu6_legacy_bwd)


def relu6(x: ArrayLike, alpha: ArrayLike = 0.0, beta: ArrayLike = 0.0, *,
          legacy: bool = False) -> Array:
  r"""ReLU6 with chosen derivatives at its two kinks, 0 and 6.

  .. math::
    \mathrm{relu6}(x) = \min(\max(x, 0), 6), \qquad
    \nabla \mathrm{relu6}(x) = \begin{cases} 1 & 0 < x < 6 \\ \alpha & x = 0
    \\ \beta & x = 6 \\ 0 & \text{otherwise} \end{cases}

  With the defaults ``alpha = beta = 0`` values and gradients are
  bit-identical to :func:`jax.nn.relu6`.

  Args:
    x: input array.
    alpha: derivative at 0 (scalar or broadcastable array, traced).
    beta: derivative at 6 (scalar or broadcastable array, traced).
    legacy: assign ``alpha`` / ``beta`` to the input gradient at the kinks
      instead of multiplying the upstream cotangent (reverse mode only).

  Returns:
    ``min(max(x, 0), 6)``, with the dtype and shape of ``x``.

  Examples:
    >>> import jax, jaxkink
    >>> jax.grad(lambda x: jaxkink.relu6(x, 0.25, 0.75))(6.0)
    Array(0.75, dtype=float32, weak_type=True)

  See also: :func:`relu`.
  """
  x = jnp.asarray(x)
  alpha = as_kink_value(alpha, x.shape, x.dtype, 'alpha')
  beta = as_kink_value(beta, x.shape, x.dtype, 'beta')
  x, alpha, beta = vary_together(x, alpha, beta)
  return (_relu6_legacy if legacy else _relu6)(x, alpha, beta)


# ---------------------------------------------------------------- LeakyReLU


@jax.custom_jvp
def _leaky_relu(x: Array, slope: Array, s: Array) -> Array:
  del s
  return jnp.where(x >= 0, x, slope * x)


@functools.partial(_leaky_relu.defjvp, symbolic_zeros=True)
def _leaky_relu_jvp(primals, tangents):
  x, slope, s = primals
  g, dslope, _ = tangents
  y = _leaky_relu(x, slope, s)
  if isinstance(g, SymbolicZero):
    g = jnp.zeros(x.shape, x.dtype)
  smooth = lax.select(x > 0, g, lax.select(x < 0, slope * g, _zeros(g)))
  dy = _pullback(g, smooth, [(0, s)], x, legacy=False)
  if not isinstance(dslope, SymbolicZero):
    # slope is a parameter of the function (PReLU): it gets its derivative.
    dy = dy + lax.select(x < 0, x * dslope, _zeros(g))
  return y, dy


@jax.custom_vjp
def _leaky_relu_legacy(x: Array, slope: Array, s: Array) -> Array:
  del s
  return jnp.where(x >= 0, x, slope * x)


def _leaky_relu_legacy_fwd(x, slope, s):
  return _leaky_relu_legacy(x, slope, s), (x, slope, s)


def _leaky_relu_legacy_bwd(res, g):
  x, slope, s = res
  smooth = lax.select(x > 0, g, lax.select(x < 0, slope * g, _zeros(g)))
  return _pullback(g, smooth, [(0, s)], x, legacy=True), None, None


_leaky_relu_legacy.defvjp(_leaky_relu_legacy_fwd, _leaky_relu_legacy_bwd)


def leaky_relu(x: ArrayLike, slope: ArrayLike = 0.01, s: ArrayLike = 1.0, *,
               legacy: bool = False) -> Array:
  r"""Leaky ReLU with a chosen derivative at 0.

  .. math::
    \mathrm{leaky}(x) = \begin{cases} x & x \ge 0 \\ \mathrm{slope}\, x &
    x < 0 \end{cases}, \qquad
    \nabla \mathrm{leaky}(x) = \begin{cases} 1 & x > 0 \\ s & x = 0 \\
    \mathrm{slope} & x < 0 \end{cases}

  The default ``s = 1`` is what :func:`jax.nn.leaky_relu` (written as
  ``where(x >= 0, x, slope * x)``) gives at 0, and values and gradients then
  agree with it bit for bit. PyTorch's ``leaky_relu`` uses ``s = slope``.

  Args:
    x: input array.
    slope: the slope for ``x < 0`` (scalar or broadcastable array). It gets
      its true derivative (``x`` for ``x < 0``) in the default convention
      and zero cotangent with ``legacy=True``.
    s: derivative at 0 (scalar or broadcastable array, traced).
    legacy: assign ``s`` to the input gradient at 0 instead of multiplying
      the upstream cotangent (reverse mode only).

  Returns:
    The activation, with the dtype and shape of ``x``.

  See also: :func:`relu`.
  """
  x = jnp.asarray(x)
  slope = as_kink_value(slope, x.shape, x.dtype, 'slope')
  s = as_kink_value(s, x.shape, x.dtype, 's')
  x, slope, s = vary_together(x, slope, s)
  return (_leaky_relu_legacy if legacy else _leaky_relu)(x, slope, s)


# ------------------------------------------------------------- random kink


def random_kink_relu(x: ArrayLike, key: PRNGKey, *, minval: float = 0.0,
                     maxval: float = 1.0, legacy: bool = False) -> Array:
  """ReLU whose derivative at 0 is drawn per element, uniformly.

  ``s`` is drawn from ``U[minval, maxval)`` independently for each element of
  ``x`` with ``jax.random.uniform(key, x.shape)``, so the same key gives the
  same draws. Values equal :func:`jax.nn.relu`.

  Args:
    x: input array.
    key: a PRNG key (``jax.random.key``); split it yourself for each layer and
      step.
    minval: lower bound of the draw.
    maxval: upper bound of the draw.
    legacy: as in :func:`relu`.

  Returns:
    ``max(x, 0)``.
  """
  x = jnp.asarray(x)
  s = jax.random.uniform(key, x.shape, x.dtype, minval, maxval)
  return relu(x, s, legacy=legacy)
