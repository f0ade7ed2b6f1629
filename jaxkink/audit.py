"""``audit``: every nonsmooth operation of a program, and how close it came.

:func:`audit` runs a function through :mod:`jaxkink.kinkify`'s interpreter
and, at each nonsmooth equation, counts the inputs exactly on a kink and the
smallest distance to one, with the counters of :mod:`jaxkink.hits` where they
fit. The program is evaluated as one ``jax.jit``, so the counts read the
values a jitted ``fn`` computes.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxkink import hits
from jaxkink.kinkify import Site, _Interpreter, trace

#: What counts as "on a kink", per kind.
KINK_RULES = {
    'relu': 'x == 0',
    'leaky_relu': 'x == 0',
    'relu6': 'x == 0 or x == 6',
    'max_pool': 'a window with a tied maximum (count: windows)',
    'abs': 'x == 0',
    'sign': 'x == 0',
    'floor': 'x an integer',
    'ceil': 'x an integer',
    'round': 'x half-way between integers',
    'max': 'equal operands',
    'min': 'equal operands',
    'clamp': 'x at a bound',
    'select_n': 'the compared operands equal',
    'reduce_max': 'a reduction with a tied maximum (count: reductions)',
    'reduce_min': 'a reduction with a tied minimum (count: reductions)',
    'argmax': 'a reduction with a tied maximum (count: reductions)',
    'argmin': 'a reduction with a tied minimum (count: reductions)',
    'sort': 'equal neighbours once sorted (count: pairs)',
}


@dataclasses.dataclass(frozen=True)
class AuditRecord(Site):
  """One nonsmooth operation of the audited program: the interpreter's
  :class:`~jaxkink.kinkify.Site` and what was measured there.

  Attributes:
    kind: ``'relu'``, ``'relu6'``, ``'leaky_relu'``, ``'max_pool'`` for the
      patterns :func:`jaxkink.kinkify` recognises, else the primitive's name
      (``'abs'``, ``'max'``, ``'reduce_max'``, ...).
    primitive: the jaxpr primitive it was found as.
    where: the source line JAX recorded for it, or its jaxpr path.
    path: its place in the jaxpr (equation indices, enclosing primitives).
    shape: the shape of its input (of its largest operand, for ops that
      compare operands).
    recognised: whether :func:`jaxkink.kinkify` replaces it.
    hits: inputs exactly on a kink (see :data:`KINK_RULES`; for pooling and
      reductions, windows or reductions with a tie), summed over the
      iterations of enclosing loops; None where it is not measured.
    min_distance: the smallest distance to a kink over those inputs (for
      pooling and reductions, the smallest gap between the largest and the
      second largest member; 0 at a tie); ``inf`` when nothing was measured.
  """
  hits: int | None
  min_distance: float | None


class AuditReport(tuple):
  """The records of :func:`audit`, in program order; prints as a table."""

  def table(self) -> str:
    """A fixed-width table: one row per record (file names without their
    directories)."""
    head = ('kind', 'op', 'hits', 'min distance', 'shape', 'kinkify', 'where')
    rows: list[tuple[str, ...]] = [head]
    for r in self:
      rows.append((r.kind, r.primitive, '-' if r.hits is None else str(r.hits),
                   '-' if r.min_distance is None else f'{r.min_distance:.6g}',
                   'x'.join(map(str, r.shape)) or '()',
                   'replaced' if r.recognised else 'left alone',
                   r.where if r.where == r.path else os.path.basename(r.where)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
    lines = ['  '.join(c.ljust(w) for c, w in zip(row, widths)) + '  ' + row[-1]
             for row in rows]
    lines.insert(1, '-' * max(len(l) for l in lines))
    return '\n'.join(l.rstrip() for l in lines)

  def __str__(self) -> str:
    return self.table()

  def __repr__(self) -> str:
    return f'AuditReport({list(self)!r})'

  def total_hits(self) -> int:
    """Hits over all measured records."""
    return sum(r.hits for r in self if r.hits is not None)


def _equal_hits(a, b):
  a, b = jnp.broadcast_arrays(jnp.asarray(a), jnp.asarray(b))
  dist = jnp.abs(a - b)
  return hits.KinkHits(jnp.sum(a == b, dtype=jnp.int32),
                       jnp.min(dist, initial=jnp.inf))


def _tie_hits(x, axes, largest: bool):
  """Reductions over ``axes`` whose extreme is attained more than once."""
  x = x if largest else -x
  m = jnp.max(x, axis=axes, keepdims=True)
  on = x == m
  count = jnp.sum(on, axis=axes, dtype=jnp.int32)
  second = jnp.max(jnp.where(on, -jnp.inf, x), axis=axes, keepdims=True)
  gap = jnp.where(count > 1, 0, jnp.squeeze(m - second, axes))
  return hits.KinkHits(jnp.sum(count > 1, dtype=jnp.int32),
                       jnp.min(gap, initial=jnp.inf).astype(x.dtype))


def _integer_hits(x, offset: float):
  frac = x - jnp.floor(x)
  dist = jnp.abs(frac - offset)
  if offset == 0:
    dist = jnp.minimum(dist, 1 - frac)
  return hits.KinkHits(jnp.sum(dist == 0, dtype=jnp.int32),
                       jnp.min(dist, initial=jnp.inf))


def measure(site: Site, operands: dict) -> Any:
  """``(count, min_distance)`` for one site, or None where not measured."""
  kind = site.kind
  if kind in ('relu', 'leaky_relu', 'relu6', 'max_pool'):
    x = lax.stop_gradient(operands['x'])
    if kind == 'relu6':
      return tuple(hits.relu6_hits(x))
    if kind == 'max_pool':
      return tuple(hits.geometry_hits(x, operands['geom']))
    return tuple(hits.relu_hits(x))
  invals, params = operands['invals'], operands['params']
  v = invals[0]
  if kind in ('abs', 'sign'):
    return tuple(hits.relu_hits(v))
  if kind in ('floor', 'ceil'):
    return tuple(_integer_hits(v, 0.0))
  if kind == 'round':
    return tuple(_integer_hits(v, 0.5))
  if kind in ('max', 'min'):
    return tuple(_equal_hits(*invals))
  if kind == 'select_n':
    return tuple(_equal_hits(*operands['compare']))
  if kind == 'clamp':
    lo, x, hi = invals
    a, b = _equal_hits(x, lo), _equal_hits(x, hi)
    return (a[0] + b[0], jnp.minimum(a[1], b[1]))
  if kind in ('reduce_max', 'argmax', 'reduce_min', 'argmin'):
    largest = kind in ('reduce_max', 'argmax')
    return tuple(_tie_hits(v, tuple(params['axes']), largest))
  if kind == 'sort':
    keys = jnp.sort(v, axis=params['dimension'])
    d = params['dimension']
    n = keys.shape[d]
    gap = (lax.slice_in_dim(keys, 1, n, axis=d)
           - lax.slice_in_dim(keys, 0, n - 1, axis=d))
    return (jnp.sum(gap == 0, dtype=jnp.int32), jnp.min(gap, initial=jnp.inf))
  return None


def audit(fn: Callable) -> Callable[..., AuditReport]:
  r"""``audit(fn)(*args)``: each nonsmooth operation of ``fn`` at ``args``.

  Returns an :class:`AuditReport` (a tuple of :class:`AuditRecord`, one per
  nonsmooth equation met, in program order; ``print`` it for a table). A
  record gives the operation's kind, where it was written, its shape, how
  many of its inputs sit exactly on a kink and how close the others came.
  The kinds are those :func:`jaxkink.kinkify` recognises (``relu``,
  ``relu6``, ``leaky_relu``, ``max_pool``, counted as :func:`jaxkink.relu_hits`,
  :func:`jaxkink.relu6_hits` and :func:`jaxkink.pool_hits` count) and the
  nonsmooth primitives it leaves alone (``abs``, ``max`` of two operands,
  ``reduce_max``, ``sort``, ...; see :data:`KINK_RULES`).

  ``fn`` is evaluated as one ``jax.jit`` program (so the counts read the
  values a jitted ``fn`` computes), inside ``jit``, ``scan``, ``cond``
  (only the branch taken counts), ``while`` bodies and ``checkpoint``; an
  operation inside a loop counts over all its iterations. Not looked into:
  ``custom_jvp`` / ``custom_vjp`` bodies other than ``jax.nn.relu`` /
  ``relu6`` (including jaxkink's own primitives: count those with
  :class:`jaxkink.TapedKinks`), ``while`` conditions, and ``shard_map``
  bodies (a ``shard_map`` that holds a nonsmooth op gets one record of kind
  ``'shard_map'`` with no counts). Operations that no tangent can reach
  (on constants, integers or random bits) are not listed.
  ``fn`` must not be called under a transformation of your own: ``audit``
  returns Python numbers.

  Args:
    fn: a function of arrays that JAX can trace.

  Returns:
    ``audited(*args) -> AuditReport``.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxkink
    >>> report = jaxkink.audit(lambda x: jax.nn.relu(x) + jnp.abs(x))(
    ...     jnp.array([0.0, 1.0, -2.0]))
    >>> [(r.kind, r.hits, r.min_distance) for r in report]
    [('relu', 1, 0.0), ('abs', 1, 0.0)]
  """

  def audited(*args) -> AuditReport:
    sites: list[Site] = []

    def run(*a):
      closed, leaves, _ = trace(fn, a)
      interp = _Interpreter(None, measure)
      interp.eval_closed(closed, leaves)
      sites[:] = [s for s, _ in interp.records]
      return [m for _, m in interp.records]

    measured = jax.jit(run)(*args)
    records = []
    for site, m in zip(sites, measured):
      count, dist = (None, None) if m is None else (int(m[0]), float(m[1]))
      records.append(AuditRecord(**vars(site), hits=count,
                                 min_distance=dist))
    return AuditReport(records)

  return audited

