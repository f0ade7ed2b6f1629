r"""``kinkify``: an unmodified function's kinks, routed through ``Kinks``.

:func:`kinkify` takes any JAX-traceable function, written with ``jax.nn``,
``flax.linen``, plain ``jnp`` or ``lax``, and returns one that takes a
:class:`jaxkink.Kinks` first: its forward is the original function's, and its
derivatives at the recognised kinks follow the kink values. It works as JAX's
"Writing custom interpreters" guide does: trace the function to a jaxpr with
``jax.make_jaxpr``, then evaluate the jaxpr equation by equation, replacing
the equations it recognises by jaxkink's primitives and binding every other
one as it was. :func:`jaxkink.audit` shares the interpreter.

Only derivative rules change: a recognised equation is replaced by a jaxkink
primitive whose forward is the same primitive on the same operands
(``max(x, 0)``, ``min(max(x, 0), 6)``, ``select_n(x >= 0, slope * x, x)``,
``reduce_window_max``), so the rebuilt program computes the same values, bit
for bit, as the original under the same transformation (both jitted, or both
run eagerly). See DESIGN.md, section 9.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import math
import os
import warnings
from typing import Any, Callable, Sequence

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxkink import pooling
from jaxkink.kinks import Kinks

try:  # JAX's own summary of where an equation was written; private, so guarded.
  from jax._src import source_info_util as _source_info_util
except ImportError:  # pragma: no cover
  _source_info_util = None  # type: ignore[assignment]

# Primitive names, across versions (``pjit`` is now ``jit``; ``remat2`` may
# become ``checkpoint``; ``custom_vjp_call_jaxpr`` is the older name).
_JIT = ('jit', 'pjit')
_REMAT = ('remat2', 'checkpoint', 'remat')
_CUSTOM_VJP = ('custom_vjp_call', 'custom_vjp_call_jaxpr')
# Ops that change neither values nor (for a uniform array) the uniform value.
_PASS_CONST = ('convert_element_type', 'broadcast_in_dim', 'reshape', 'squeeze',
               'expand_dims', 'copy', 'copy_p')
_COMPARE = ('gt', 'ge', 'lt', 'le', 'eq', 'ne')
_INLINE_MAX = 8
# Primitives whose outputs carry no tangent whatever their inputs do.
_NO_TANGENT = ('bitcast_convert_type', 'floor', 'ceil', 'round', 'sign',
               'stop_gradient', 'random_bits', 'random_wrap', 'random_seed')
_Tracer = getattr(jax.core, 'Tracer', None)

#: Nonsmooth primitives that are left alone, with what their kink is.
NONSMOOTH = {
    'abs': 'kink at 0',
    'sign': 'jump at 0',
    'floor': 'jumps at the integers',
    'ceil': 'jumps at the integers',
    'round': 'jumps at the half-integers',
    'max': 'kink where the operands are equal',
    'min': 'kink where the operands are equal',
    'clamp': 'kinks at the two bounds',
    'select_n': 'a branch on a float comparison (jnp.where)',
    'reduce_max': 'ties of the maximum',
    'reduce_min': 'ties of the minimum',
    'argmax': 'ties of the maximum',
    'argmin': 'ties of the minimum',
    'sort': 'ties of the keys',
    'top_k': 'ties of the values',
    'cummax': 'ties of the running maximum',
    'cummin': 'ties of the running minimum',
    'reduce_window_max': 'ties in a window (dilated, not recognised)',
    'reduce_window_min': 'ties in a window',
    'reduce_window': 'a window reduction with a custom body',
}


# Operations a small jit may hold to be inlined (see _Interpreter._jit).
_INLINE = frozenset(_PASS_CONST + _COMPARE + tuple(NONSMOOTH) + (
    'mul', 'neg', 'and', 'or', 'not', 'iota', 'slice', 'transpose', 'rev'))


@dataclasses.dataclass(frozen=True)
class Site:
  """A nonsmooth equation of the program, as the interpreter met it.

  Attributes:
    kind: what it is: ``'relu'``, ``'relu6'``, ``'leaky_relu'``,
      ``'max_pool'`` for the recognised patterns, else the primitive's name
      (``'abs'``, ``'max'``, ``'reduce_max'``, ...).
    primitive: the jaxpr primitive (``'custom_jvp_call'``, ``'max'``, ...).
    where: the source line JAX recorded for the equation, or ``path``.
    path: the equation's place in the jaxpr: equation indices and the
      higher-order primitives around it, e.g. ``'3:scan/1:custom_jvp_call'``.
    shape: the shape of the operand whose kinks are counted.
    recognised: whether :func:`kinkify` replaces it by a jaxkink primitive.
  """
  kind: str
  primitive: str
  where: str
  path: str
  shape: tuple[int, ...]
  recognised: bool


#: ``measure(site, operands) -> (count, min_distance) | None``, the audit hook.
Measure = Callable[[Site, dict], Any]


@dataclasses.dataclass(frozen=True)
class _Op:
  """An equation seen through ``jit`` wrappers, in the caller's variables."""
  primitive: Any
  params: dict
  invars: tuple
  outvars: tuple

  @property
  def name(self) -> str:
    return self.primitive.name


class _Local:
  """A fresh variable for an equation inlined from a nested ``jit``.

  Inlining the same (cached) jaxpr twice must not make its two copies share
  variables, so each inlined intermediate gets one of these.
  """
  __slots__ = ('aval',)

  def __init__(self, aval):
    self.aval = aval

  def __repr__(self) -> str:
    return f'_Local({self.aval})'


def _is_var(a) -> bool:
  return isinstance(a, (jex.Var, _Local))


def _is_literal(a) -> bool:
  return isinstance(a, jex.Literal)


def _flatten(jaxpr, invars, outvars) -> list[_Op] | None:
  """The equations of ``jaxpr`` with nested ``jit`` calls inlined.

  ``invars`` / ``outvars`` are the caller's atoms for the jaxpr's inputs and
  outputs, so the returned operations read and write the caller's variables
  where they touch them, and fresh :class:`_Local` ones in between. None
  where that is not a plain renaming (an output that is an input or a
  literal, a nested call with constants).
  """
  env = dict(zip(jaxpr.invars, invars))
  rename = {}
  for v, o in zip(jaxpr.outvars, outvars):
    if not _is_var(v) or v in env or v in rename:
      return None
    rename[v] = o
  ops = []
  for eqn in jaxpr.eqns:
    ins = tuple(env.get(a, a) if _is_var(a) else a for a in eqn.invars)
    outs = tuple(rename[v] if v in rename else _Local(v.aval)
                 for v in eqn.outvars)
    env.update(zip(eqn.outvars, outs))
    sub_jaxpr, sub_consts = (_closed(eqn.params['jaxpr'])
                             if eqn.primitive.name in _JIT else (None, ()))
    if sub_jaxpr is not None and not sub_consts:
      sub = _flatten(sub_jaxpr, ins, outs)
      if sub is None:
        return None
      ops.extend(sub)
    else:
      ops.append(_Op(eqn.primitive, eqn.params, ins, outs))
  return ops


def _subjaxprs(params: dict):
  for value in params.values():
    for v in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(v, jex.ClosedJaxpr):
        yield v.jaxpr
      elif isinstance(v, jex.Jaxpr):
        yield v


def _is_float(a) -> bool:
  aval = getattr(a, 'aval', None)
  return aval is not None and jnp.issubdtype(aval.dtype, jnp.floating)


# Libraries whose frames are skipped when naming where an op was written: the
# user's line calling ``nn.max_pool`` says more than flax's own.
_LIBRARIES = tuple(f'{os.sep}{name}{os.sep}' for name in
                   ('flax', 'equinox', 'haiku', 'optax'))


def _where(eqn, fallback: str) -> str:
  """The user's source line JAX recorded for ``eqn``, else ``fallback``."""
  if _source_info_util is None:
    return fallback
  try:
    frames = list(itertools.islice(
        _source_info_util.user_frames(eqn.source_info.traceback), 64))
  except Exception:  # pylint: disable=broad-except
    return fallback
  if not frames:
    return fallback
  frame = next((f for f in frames
                if not any(lib in f.file_name for lib in _LIBRARIES)),
               frames[0])
  return f'{frame.file_name}:{frame.start_line} ({frame.function_name})'


class _Frame:
  """One jaxpr being evaluated: its environment and what is known statically."""

  def __init__(self, path: str, known: dict | None = None):
    self.path = path
    self.env: dict = {}
    self.known: dict = dict(known or {})  # Var -> uniform float value
    self.consts: dict = {}  # constvar -> concrete value, checked lazily
    self.definers: dict = {}  # Var -> _Op that computed it
    self.uses: collections.Counter = collections.Counter()
    self.live: set = set()  # variables that may carry a tangent
    self.relu_records: dict = {}  # bare max(x, 0)'s output -> its record

  def read(self, a):
    return a.val if _is_literal(a) else self.env[a]

  def is_live(self, a) -> bool:
    return _is_var(a) and a in self.live

  def mark(self, eqn) -> None:
    """Outputs of ``eqn`` may carry a tangent if a float input may."""
    if (eqn.primitive.name not in _NO_TANGENT
        and any(self.is_live(a) for a in eqn.invars)):
      self.live.update(v for v in eqn.outvars if _is_float(v))

  def uniform(self, a) -> float | None:
    """The single value every element of ``a`` has, if known statically."""
    if _is_literal(a):
      return _uniform_value(a.val)
    if a in self.known:
      return self.known[a]
    if a in self.consts:
      self.known[a] = _uniform_value(self.consts.pop(a))  # None for a tracer
      return self.known[a]
    return None

  def propagate(self, src, dst) -> None:
    """``dst`` is ``src`` reshaped or converted: so is its uniform value."""
    value = self.uniform(src)
    if value is not None:
      try:  # the value as converted (0.5 -> 0 for an integer dtype)
        value = float(np.asarray(value).astype(dst.aval.dtype))
      except Exception:  # pylint: disable=broad-except
        return
      self.known[dst] = value

  def is_zero(self, a) -> bool:
    v = self.uniform(a)
    return v is not None and v == 0 and math.copysign(1.0, v) > 0

  def defined_as(self, a, name: str) -> _Op | None:
    op = self.definers.get(a) if _is_var(a) else None
    return op if op is not None and op.name == name else None


def _uniform_value(value) -> float | None:
  if np.size(value) > 1 << 16:
    return None
  try:
    arr = np.asarray(value)
  except Exception:  # pylint: disable=broad-except
    return None
  if arr.size == 0 or arr.dtype == object:
    return None
  flat = arr.ravel()
  first = flat[0]
  if not np.all(flat == first) or np.isnan(first):
    return None
  if np.issubdtype(arr.dtype, np.floating) and first == 0:
    if np.any(np.signbit(flat) != np.signbit(first)):
      return None
  return float(first)


def _bind(eqn, invals):
  """Evaluates ``eqn`` as it was, as ``jax.core.eval_jaxpr`` does."""
  bind_params = eqn.primitive.get_bind_params(eqn.params)
  subfuns = ()
  if isinstance(bind_params, tuple):  # JAX < 0.9 returned (subfuns, params)
    subfuns, bind_params = bind_params
  with _context(eqn):
    out = eqn.primitive.bind(*subfuns, *invals, **bind_params)
  return list(out) if eqn.primitive.multiple_results else [out]


def _context(eqn):
  """The equation's source line and context, for the re-traced program."""
  stack = contextlib.ExitStack()
  if _source_info_util is not None:
    try:
      stack.enter_context(_source_info_util.user_context(
          eqn.source_info.traceback, name_stack=(
              _source_info_util.current_name_stack()
              + eqn.source_info.name_stack)))
    except Exception:  # pylint: disable=broad-except
      pass
  ctx = getattr(eqn, 'ctx', None)
  if ctx is not None and getattr(ctx, 'manager', None) is not None:
    stack.enter_context(ctx.manager)
  return stack


class _Interpreter:
  """Evaluates a jaxpr, replacing kinks (``kinks``) and/or measuring them."""

  def __init__(self, kinks: Kinks | None, measure: Measure | None = None,
               warn: set | None = None, bare_max: bool = True):
    self.kinks = kinks
    self.measure = measure
    self.warned = warn  # kinds already warned about, or None: no warnings
    self.bare_max = bare_max  # recognise bare max(x, 0), min(max(x, 0), 6)
    self.records: list = []  # (Site, measured arrays or None)
    # The enclosing equation's source line, for nested ones.
    self.where: str | None = None
    self._touch_cache: dict = {}

  def child(self, where: str | None = None) -> '_Interpreter':
    new = _Interpreter(self.kinks, self.measure, self.warned, self.bare_max)
    new.where = where or self.where
    new._touch_cache = self._touch_cache  # pylint: disable=protected-access
    return new

  def where_of(self, eqn, path: str) -> str:
    return _where(eqn, self.where or path)

  # ---------------------------------------------------------------- driving

  def eval_closed(self, closed, args, path='', known=None, live=None):
    jaxpr, consts = _closed(closed)
    return self.eval_jaxpr(jaxpr, consts, args, path, known, live)

  def eval_jaxpr(self, jaxpr, consts, args, path='', known=None, live=None):
    """Evaluates ``jaxpr``; ``live`` says which inputs may carry a tangent
    (default: the float ones)."""
    frame = _Frame(path, known)
    frame.uses.update(a for e in jaxpr.eqns for a in e.invars if _is_var(a))
    frame.uses.update(a for a in jaxpr.outvars if _is_var(a))
    for v, c in zip(jaxpr.constvars, consts):
      frame.env[v] = c
      frame.consts[v] = c
      if _is_float(v) and (_Tracer is None or isinstance(c, _Tracer)):
        frame.live.add(v)  # a traced constant: the caller may differentiate it
    live = [True] * len(jaxpr.invars) if live is None else live
    for v, a, l in zip(jaxpr.invars, args, live):
      frame.env[v] = a
      if l and _is_float(v):
        frame.live.add(v)
    for i, eqn in enumerate(jaxpr.eqns):
      invals = [frame.read(a) for a in eqn.invars]
      here = f'{path}/{i}:{eqn.primitive.name}' if path else (
          f'{i}:{eqn.primitive.name}')
      if len(eqn.outvars) == 1:
        frame.definers[eqn.outvars[0]] = _Op(eqn.primitive, eqn.params,
                                             tuple(eqn.invars),
                                             tuple(eqn.outvars))
      outs = self._eqn(eqn, invals, frame, here)
      frame.mark(eqn)
      for v, o in zip(eqn.outvars, outs):
        frame.env[v] = o
    return [frame.read(a) for a in jaxpr.outvars]

  # ------------------------------------------------------- what to recurse

  def touches(self, jaxpr) -> bool:
    """Whether ``jaxpr`` (open or closed) holds anything to replace or count."""
    jaxpr = _closed(jaxpr)[0]
    key = id(jaxpr)
    if key not in self._touch_cache:
      self._touch_cache[key] = (jaxpr, self._touches(jaxpr))
    return self._touch_cache[key][1]

  def _touches(self, jaxpr) -> bool:
    for eqn in jaxpr.eqns:
      name = eqn.primitive.name
      if name in NONSMOOTH and (self.measure or self.warned is not None
                                or name in ('max', 'min', 'select_n',
                                            'reduce_window_max')):
        return True
      if name == 'custom_jvp_call':
        if _match_custom_jvp(eqn) is not None:
          return True
      elif name in _CUSTOM_VJP:
        continue
      elif any(self.touches(j) for j in _subjaxprs(eqn.params)):
        return True
    return False

  # ------------------------------------------------------------ equations

  def _eqn(self, eqn, invals, frame: _Frame, path: str):
    name = eqn.primitive.name
    if name in _JIT:
      return self._jit(eqn, invals, frame, path)
    if ((name in NONSMOOTH or name == 'custom_jvp_call')
        and not any(frame.is_live(a) for a in eqn.invars)):
      # No tangent can reach it (constants, integer or random bits): its
      # derivative is never used, so it is neither replaced nor counted.
      return _bind(eqn, invals)
    if name == 'custom_jvp_call':
      kind = _match_custom_jvp(eqn)
      if kind is not None:
        x = invals[0]
        return [self._kink(kind, eqn, path, {'x': x},
                           lambda k: getattr(k, kind)(x),
                           lambda: _bind(eqn, invals)[0])]
      return _bind(eqn, invals)
    if name == 'max' and self.bare_max and _is_float(eqn.outvars[0]):
      a, b = eqn.invars
      if frame.is_zero(b) or frame.is_zero(a):
        xi = 0 if frame.is_zero(b) else 1
        x = invals[xi]
        if eqn.invars[xi].aval.shape == eqn.outvars[0].aval.shape:
          out = self._kink('relu', eqn, path, {'x': x},
                           lambda k: k.relu(x), lambda: _bind(eqn, invals)[0])
          if self.measure is not None:
            frame.relu_records[eqn.outvars[0]] = self.records[-1]
          return [out]
    if name == 'min' and self.bare_max and _is_float(eqn.outvars[0]):
      x, inner = self._match_relu6(eqn.invars, frame)
      if x is not None:
        # The max(x, 0) inside is part of this ReLU6, not a ReLU of its own.
        record = frame.relu_records.pop(inner, None)
        if record is not None and frame.uses[inner] == 1:
          del self.records[next(i for i, r in enumerate(self.records)
                                if r is record)]
        xv = frame.read(x)
        return [self._kink('relu6', eqn, path, {'x': xv},
                           lambda k: k.relu6(xv),
                           lambda: _bind(eqn, invals)[0])]
    if name == 'select_n':
      out = self._select_n(eqn, invals, frame, path)
      if out is not None:
        return out
    if name == 'reduce_window_max' and _is_float(eqn.outvars[0]):
      geom = _pool_geometry(eqn.params)
      if geom is not None:
        x = invals[0]
        return [self._kink('max_pool', eqn, path, {'x': x, 'geom': geom},
                           lambda k: _kinked_pool(k, x, geom),
                           lambda: _bind(eqn, invals)[0])]
    if name in NONSMOOTH:
      return self._left_alone(eqn, invals, frame, path)
    if name == 'scan' and self.touches(eqn.params['jaxpr']):
      return self._scan(eqn, invals, frame, path)
    if name == 'cond' and any(self.touches(b) for b in eqn.params['branches']):
      return self._cond(eqn, invals, path)
    if name == 'while' and self.touches(eqn.params['body_jaxpr']):
      return self._while(eqn, invals, path)
    if name in _REMAT and self.touches(eqn.params['jaxpr']):
      return self._remat(eqn, invals, path)
    if name == 'shard_map' and self.touches(eqn.params['jaxpr']):
      return self._shard_map(eqn, invals, path)
    outs = _bind(eqn, invals)
    if name in _PASS_CONST:
      frame.propagate(eqn.invars[0], eqn.outvars[0])
    return outs

  def _kink(self, kind, eqn, path, operands, replace, original):
    """A recognised kink: replaced when kinks are given, measured if asked."""
    x = operands['x']
    site = Site(kind, eqn.primitive.name, self.where_of(eqn, path), path,
                tuple(jnp.shape(x)), True)
    if self.measure is not None:
      self.records.append((site, self.measure(site, operands)))
    return replace(self.kinks) if self.kinks is not None else original()

  def _left_alone(self, eqn, invals, frame, path):
    name = eqn.primitive.name
    operands = {'invals': invals, 'params': eqn.params}
    if name == 'select_n':
      pred = (frame.definers.get(eqn.invars[0]) if _is_var(eqn.invars[0])
              else None)
      if (pred is None or pred.name not in _COMPARE
          or not _is_float(pred.invars[0])):
        return _bind(eqn, invals)
      operands['compare'] = [frame.read(a) for a in pred.invars]
    elif not any(_is_float(a) for a in eqn.invars):
      return _bind(eqn, invals)
    if name in ('max', 'min') and all(frame.uniform(a) is not None
                                      for a in eqn.invars):
      return _bind(eqn, invals)
    shape = max((tuple(getattr(a.aval, 'shape', ())) for a in eqn.invars),
                key=len)
    site = Site(name, name, self.where_of(eqn, path), path, shape, False)
    if self.warned is not None and name not in self.warned:
      self.warned.add(name)
      warnings.warn(
          f'kinkify leaves {name!r} alone ({NONSMOOTH[name]}), first met at '
          f'{site.where}: its derivative there is JAX\'s own.', stacklevel=4)
    if self.measure is not None:
      self.records.append((site, self.measure(site, operands)))
    return _bind(eqn, invals)

  # ---------------------------------------------------------------- patterns

  def _match_relu6(self, invars, frame: _Frame):
    """``min(max(x, 0), 6)`` in either operand order: ``x`` and the max's
    output, or ``(None, None)``."""
    for six, inner in ((invars[1], invars[0]), (invars[0], invars[1])):
      if frame.uniform(six) != 6.0:
        continue
      op = frame.defined_as(inner, 'max')
      if op is None:
        continue
      a, b = op.invars
      if frame.is_zero(b) and _is_var(a):
        return a, inner
      if frame.is_zero(a) and _is_var(b):
        return b, inner
    return None, None

  def _select_n(self, eqn, invals, frame: _Frame, path: str):
    """Leaky ReLU: ``select_n(x >= 0, slope * x, x)``, i.e. ``jnp.where``."""
    if len(eqn.invars) != 3 or not _is_float(eqn.outvars[0]):
      return None
    pred, neg, x = eqn.invars
    ge = frame.defined_as(pred, 'ge')
    mul = frame.defined_as(neg, 'mul')
    if (ge is None or mul is None or not _is_var(x) or ge.invars[0] is not x
        or not frame.is_zero(ge.invars[1])):
      return None
    if mul.invars[1] is x:
      slope = mul.invars[0]
    elif mul.invars[0] is x:
      slope = mul.invars[1]
    else:
      return None
    xv, sv = frame.read(x), frame.read(slope)
    return [self._kink('leaky_relu', eqn, path, {'x': xv},
                       lambda k: k.leaky_relu(xv, sv),
                       lambda: _bind(eqn, invals)[0])]

  # ----------------------------------------------- higher-order primitives

  def _check_untaped(self, what) -> None:
    """Refuses to carry a kink-hit tape into a nested program.

    :class:`jaxkink.TapedKinks` (the Monte Carlo engine's screen) appends
    the hits of each kink to a trace-time list; inside a re-emitted ``jit``,
    a ``scan`` or another nested program those entries would be tracers
    of that program, not values of the caller's.
    """
    if getattr(self.kinks, 'tape', None) is not None:
      raise ValueError(
          f'kinkify: kink hits cannot be taped across a nested program '
          f'({what}) of the kinkified function; run the Monte Carlo engine '
          'with screen=False (volume.py --screen=false), or write the model '
          'with jaxkink primitives')

  def _call(self, transform, body, args, where):
    """``transform(f)(*args)`` where ``f`` evaluates ``body`` in a child.

    The child's measurements come out of the transformed function as extra
    outputs, so that they are the values of that very program.
    """
    self._check_untaped(where)
    child = self.child(where)
    sites = []

    def f(*a):
      child.records = []
      outs = body(child, *a)
      sites[:] = [s for s, _ in child.records]
      return outs, [m for _, m in child.records]

    outs, measured = transform(f)(*args)
    self.records.extend(zip(sites, measured))
    return list(outs)

  def _probe(self, body, args, where):
    """The sites ``body(child, *args)`` meets, and their counts' shapes."""
    child = self.child(where)
    sites = []

    def f(*a):
      outs = body(child, *a)
      sites[:] = [s for s, _ in child.records]
      return outs, [m for _, m in child.records]

    _, shapes = jax.eval_shape(f, *args)
    return list(zip(sites, shapes))

  def _jit(self, eqn, invals, frame, path):
    closed = eqn.params['jaxpr']
    jaxpr, consts = _closed(closed)
    flat = None
    if not consts:
      flat = _flatten(jaxpr, tuple(eqn.invars), tuple(eqn.outvars))
    if (flat is not None and len(flat) <= _INLINE_MAX
        and all(op.name in _INLINE for op in flat)):
      # A small jit of exactly rounded operations (jnp.where, jnp.clip,
      # jnp.sort, jax.nn.leaky_relu): inlined, so that patterns that span it
      # are seen and the source line is the caller's. Nothing in it can be
      # rounded otherwise inlined (no add to contract into an FMA).
      label = f'{path}[{eqn.params.get("name", "")}]'
      frame.uses.update(a for op in flat for a in op.invars if _is_var(a))
      for i, op in enumerate(flat):
        inner = eqn.replace(primitive=op.primitive, params=op.params,
                            invars=list(op.invars), outvars=list(op.outvars))
        if len(op.outvars) == 1:
          frame.definers[op.outvars[0]] = op
        outs = self._eqn(inner, [frame.read(a) for a in op.invars], frame,
                         f'{label}/{i}:{op.name}')
        frame.mark(inner)
        for v, o in zip(op.outvars, outs):
          frame.env[v] = o
      return [frame.read(v) for v in eqn.outvars]
    if not self.touches(jaxpr):
      return _bind(eqn, invals)
    known = {v: frame.uniform(a) for v, a in zip(jaxpr.invars, eqn.invars)}
    known = {v: u for v, u in known.items() if u is not None}
    live = [frame.is_live(a) for a in eqn.invars]
    label = f'{path}[{eqn.params.get("name", "")}]'

    def body(child, kinks, *a):
      child.kinks = kinks
      return child.eval_closed(closed, a, label, known, live)

    def transform(f):
      g = lambda kinks, *a: f(kinks, *a)  # pylint: disable=unnecessary-lambda
      g.__name__ = str(eqn.params.get('name', 'jit'))
      return jax.jit(g)

    return self._call(transform, body, (self.kinks, *invals),
                      self.where_of(eqn, path))

  def _remat(self, eqn, invals, path):
    p = eqn.params

    def body(child, *a):
      return child.eval_closed(p['jaxpr'], a, path)

    transform = lambda f: jax.checkpoint(f, prevent_cse=p['prevent_cse'],
                                         policy=p['policy'])
    return self._call(transform, body, invals, self.where_of(eqn, path))

  def _shard_map(self, eqn, invals, path):
    self._check_untaped('shard_map')
    p = eqn.params
    if self.measure is not None:  # per-shard counts would need collectives
      site = Site('shard_map', 'shard_map', self.where_of(eqn, path), path,
                  (), False)
      self.records.append((site, None))
      return _bind(eqn, invals)
    leaves, treedef = jax.tree_util.tree_flatten(self.kinks)
    n = len(leaves)
    spec = jax.sharding.PartitionSpec()
    child = self.child(self.where_of(eqn, path))

    def f(*a):
      child.kinks = jax.tree_util.tree_unflatten(treedef, a[:n])
      return tuple(child.eval_closed(p['jaxpr'], a[n:], path))

    kwargs = {}
    if 'newly_manual_axes' in p:
      kwargs['axis_names'] = p['newly_manual_axes']
    if 'check_vma' in p:
      kwargs['check_vma'] = p['check_vma']
    mapped = jax.shard_map(f, mesh=p['mesh'],
                           in_specs=(spec,) * n + tuple(p['in_specs']),
                           out_specs=tuple(p['out_specs']), **kwargs)
    return list(mapped(*leaves, *invals))

  def _scan(self, eqn, invals, frame, path):
    self._check_untaped('scan')
    p = eqn.params
    consts, init, xs = _scan_operands(p, invals)
    nc, nk = len(consts), len(init)
    closed = p['jaxpr']
    known = {v: frame.uniform(a) for v, a in
             zip(_closed(closed)[0].invars[:nc], eqn.invars[:nc])}
    known = {v: u for v, u in known.items() if u is not None}
    child = self.child(self.where_of(eqn, path))
    sites = []

    def step(carry, x):
      child.records = []
      outs = child.eval_closed(closed, [*consts, *carry, *x], path, known)
      sites[:] = [s for s, _ in child.records]
      return outs[:nk], (outs[nk:], [m for _, m in child.records])

    carry, (ys, measured) = lax.scan(step, list(init), list(xs),
                                     length=p['length'], reverse=p['reverse'],
                                     unroll=p['unroll'])
    for site, m in zip(sites, measured):
      self.records.append((site, _reduce_steps(m)))
    return [*carry, *ys]

  def _cond(self, eqn, invals, path):  # pylint: disable=too-many-locals
    self._check_untaped('cond')
    index, ops = invals[0], invals[1:]
    branches = eqn.params['branches']
    labels = [f'{path}[{i}]' for i in range(len(branches))]
    where = self.where_of(eqn, path)
    # The sites of every branch, found by tracing each once (shapes only).
    per_branch = [self._probe(lambda ch, *o, c=closed, lb=label:
                              ch.eval_closed(c, o, lb), ops, where)
                  for closed, label in zip(branches, labels)]

    def branch(i):
      def f(*o):
        child = self.child(where)
        outs = child.eval_closed(branches[i], o, labels[i])
        measured = []
        for j, recs in enumerate(per_branch):
          measured += ([m for _, m in child.records] if j == i
                       else [_no_hits(m) for _, m in recs])
        return outs, measured
      return f

    outs, measured = lax.switch(
        index, [branch(i) for i in range(len(branches))], *ops)
    sites = [s for recs in per_branch for s, _ in recs]
    self.records.extend(zip(sites, measured))
    return list(outs)

  def _while(self, eqn, invals, path):
    self._check_untaped('while')
    p = eqn.params
    cc, bc = p['cond_nconsts'], p['body_nconsts']
    cconsts, bconsts, init = invals[:cc], invals[cc:cc + bc], invals[cc + bc:]
    cond = jex.jaxpr_as_fun(p['cond_jaxpr'])
    where = self.where_of(eqn, path)
    probed = self._probe(lambda ch, *c: ch.eval_closed(
        p['body_jaxpr'], [*bconsts, *c], path), init, where)
    sites = [s for s, _ in probed]
    acc0 = [_no_hits(m) for _, m in probed]

    def cond_fun(state):
      return cond(*cconsts, *state[0])[0]

    def body_fun(state):
      carry, acc = state
      child = self.child(where)
      outs = child.eval_closed(p['body_jaxpr'], [*bconsts, *carry], path)
      acc = [_combine(a, m) for a, (_, m) in zip(acc, child.records)]
      return outs, acc

    outs, acc = lax.while_loop(cond_fun, body_fun, (list(init), acc0))
    self.records.extend(zip(sites, acc))
    return list(outs)


def _scan_operands(params: dict, invals):
  """``(consts, carry, xs)`` of a scan equation, in any JAX version.

  Up to JAX 0.10 a scan counts its constants and carries (``num_consts``,
  ``num_carry``); later ones describe the operands with a flat tree
  (``ft_in``).
  """
  if 'ft_in' in params:
    consts, carry, xs = params['ft_in'].update(list(invals)).unpack()
    return list(consts), list(carry), list(xs)
  nc, nk = params['num_consts'], params['num_carry']
  return invals[:nc], invals[nc:nc + nk], invals[nc + nk:]


def _closed(jaxpr):
  """``(jaxpr, consts)`` of a ClosedJaxpr, or of an open Jaxpr."""
  return getattr(jaxpr, 'jaxpr', jaxpr), tuple(getattr(jaxpr, 'consts', ()))


# ------------------------------------------------------- measured records


def _no_hits(m):
  """The measurement of nothing: count 0, distance +inf (same shapes)."""
  if m is None:
    return None
  count, dist = m
  return (jnp.zeros(count.shape, count.dtype),
          jnp.full(dist.shape, jnp.inf, dist.dtype))


def _combine(a, b):
  if a is None:
    return None
  return (a[0] + b[0], jnp.minimum(a[1], b[1]))


def _reduce_steps(m):
  if m is None:
    return None
  count, dist = m
  return (jnp.sum(count, axis=0, dtype=count.dtype),
          jnp.min(dist, axis=0, initial=jnp.inf))


# ---------------------------------------------------------------- patterns


def _match_custom_jvp(eqn) -> str | None:
  """``'relu'`` / ``'relu6'`` for a custom_jvp call of one float input whose
  body is ``max(x, 0)`` / ``min(max(x, 0), 6)`` (``jax.nn.relu`` / ``relu6``).
  """
  jaxpr, consts = _closed(eqn.params['call_jaxpr'])
  if (consts or len(eqn.invars) != 1 or len(eqn.outvars) != 1
      or not _is_float(eqn.invars[0])):
    return None
  ops = _flatten(jaxpr, tuple(jaxpr.invars), tuple(jaxpr.outvars))
  if not ops:
    return None
  x, = jaxpr.invars

  def is_const(a, value):
    return _is_literal(a) and _uniform_value(a.val) == value and (
        value != 0 or not np.signbit(np.asarray(a.val)).any())

  def is_max0(op):
    return (op.name == 'max' and op.invars[0] is x
            and is_const(op.invars[1], 0.0))

  if len(ops) == 1 and is_max0(ops[0]):
    return 'relu'
  if (len(ops) == 2 and is_max0(ops[0]) and ops[1].name == 'min'
      and ops[1].invars[0] is ops[0].outvars[0]
      and is_const(ops[1].invars[1], 6.0)):
    return 'relu6'
  return None


def _pool_geometry(params) -> pooling.WindowGeometry | None:
  if any(d != 1 for d in params['base_dilation']) or any(
      d != 1 for d in params['window_dilation']):
    return None
  pads = tuple((int(lo), int(hi)) for lo, hi in params['padding'])
  if any(lo < 0 or hi < 0 for lo, hi in pads):
    return None
  return pooling.WindowGeometry(tuple(params['window_dimensions']),
                                tuple(params['window_strides']), pads)


def _kinked_pool(kinks: Kinks, x, geom: pooling.WindowGeometry):
  """``reduce_window_max`` of any layout as :func:`jaxkink.max_pool`."""
  return kinks.pool_with_geometry(x, geom)


# -------------------------------------------------------------- public API


def trace(fn: Callable, args: Sequence[Any]):
  """``fn``'s closed jaxpr at ``args``, the flat arguments and output tree."""
  closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
  leaves = jax.tree_util.tree_leaves(args)
  return closed, leaves, jax.tree_util.tree_structure(out_shape)


def kinkify(fn: Callable, *, warn: bool = False,
            bare_max: bool = True) -> Callable:
  r"""``fn`` with its kinks' derivatives taken from a :class:`Kinks` value.

  ``kinkify(fn)`` returns ``fn_k(kinks, *args)``. Its forward is that of
  ``fn(*args)``, bit for bit (the same primitives on the same operands, in the
  same order), and its derivatives follow ``kinks`` at the kinks recognised
  below, and JAX's rules everywhere else. The kink values are ordinary traced
  data: ``jax.jit(fn_k)`` compiles once for all of them and
  ``jax.vmap(fn_k, in_axes=(Kinks(relu_s=0, ...), None, ...))`` sweeps them.
  ``fn_k(Kinks(), *args)`` gives ``jax.nn``'s and flax's conventions.

  ``fn`` is traced with :func:`jax.make_jaxpr` at every call of ``fn_k``
  (once per compilation under ``jax.jit``); every leaf of ``args`` must be an
  array or a scalar (close over static and keyword arguments, e.g. with
  ``functools.partial``). Differentiate ``fn_k``,
  not inside ``fn``: a derivative taken inside ``fn`` is already expanded
  into JAX's rules in the jaxpr, and stays so.

  Recognised, and replaced by jaxkink's primitives:

  * ``relu``: a ``custom_jvp`` call of one float input whose body is
    ``max(x, 0.0)`` (:func:`jax.nn.relu`, hence ``flax.linen.relu`` and
    ``nnx.relu``); and, with ``bare_max``, a bare ``max(x, 0)`` /
    ``max(0, x)`` whose other operand is ``+0.0`` as a literal, a constant,
    or a broadcast or conversion of one (``jnp.maximum(x, 0.)``,
    ``jnp.maximum(x, jnp.zeros_like(x))``). Derivative at 0:
    ``kinks.relu_s``. A bare ``max``'s own JAX derivative at 0 is 0.5 (half
    to each operand), not ``Kinks()``'s 0; and a bare ``max(0, v)`` is not
    always an activation (flax's ``BatchNorm`` clamps its variance so):
    :func:`jaxkink.audit` lists them with their source lines, and
    ``bare_max=False`` leaves them alone.
  * ``relu6``: a ``custom_jvp`` call whose body is ``min(max(x, 0), 6)``
    (:func:`jax.nn.relu6`) and, with ``bare_max``, a bare
    ``min(max(x, 0), 6)`` in either operand order (``jnp.clip(x, 0, 6)``,
    ``jnp.minimum(jnp.maximum(x, 0), 6)``); ``kinks.relu6_alpha`` at 0 and
    ``kinks.relu6_beta`` at 6.
  * ``leaky_relu``: ``select_n(x >= 0, slope * x, x)``, i.e. ``jnp.where(x
    >= 0, x, slope * x)`` with either product order
    (:func:`jax.nn.leaky_relu`); ``kinks.leaky_s`` at 0, the slope
    differentiated as the parameter it is. ``where(x > 0, ...)`` is not
    recognised (its value at ``-0.0`` differs from ``leaky_relu``'s).
  * ``max_pool``: ``reduce_window_max`` of a float input with no dilation
    and no negative padding, in any layout (``flax.linen.max_pool``,
    ``lax.reduce_window(x, -inf, lax.max, ...)``); the tie rule is
    ``kinks.pool_beta``.

  Patterns are matched on the jaxpr, through small ``jit`` wrappers of
  exactly rounded operations (``jnp.where``, ``jnp.clip``,
  ``jax.nn.leaky_relu``), which are inlined. Operations that no tangent can
  reach (on constants, integers or random bits) are left as they are. The
  modes of ``kinks`` apply (``legacy_relu_grad``; ``blended_pool_forward``
  changes the pooled value, as it does in :func:`jaxkink.max_pool`).
  Per-channel kink values must broadcast to every recognised operation.

  Recursed into: ``jit`` (re-emitted as a ``jax.jit`` of the rebuilt body,
  without its sharding and donation parameters, when it holds a ``max``,
  ``min``, ``select_n``, ``reduce_window_max`` or recognised ``custom_jvp``
  call; else bound as it was), ``scan``, ``cond``, the body of ``while``,
  ``checkpoint`` (remat) and ``shard_map``. Given a :class:`jaxkink.TapedKinks`
  (the Monte Carlo engine's screen), kinks inside any of these are refused
  with a ``ValueError``: their hits would be values of the nested program.
  Left alone, bound exactly as they were:

  * ``custom_jvp`` / ``custom_vjp`` calls other than the two above: their
    derivative is their own rule, which kinkify can neither see into nor
    change exactly (this includes jaxkink's own primitives, which already
    take kink values);
  * nonsmooth primitives with no jaxkink counterpart: ``abs``, ``sign``,
    ``floor`` / ``ceil`` / ``round``, ``max`` / ``min`` of two non-constant
    operands or with another constant, ``clamp``, ``jnp.where`` on a float
    comparison, ``reduce_max`` / ``argmax`` / ``sort`` / ``top_k`` /
    ``cummax`` (and the min versions), dilated or custom window reductions;
    ``warn=True`` warns once per primitive about them;
  * the bodies of other higher-order primitives (``pmap``, custom
    transposes, ...), and ``while`` conditions (which have no derivative).

  Args:
    fn: a function of arrays (pytrees of arrays) that JAX can trace.
    warn: warn (once per primitive kind, per ``kinkify``) about nonsmooth
      primitives that are left alone.
    bare_max: recognise bare ``max(x, 0)`` and ``min(max(x, 0), 6)`` too,
      not only ``jax.nn``'s functions.

  Returns:
    ``fn_k(kinks, *args)``, returning what ``fn(*args)`` returns.

  Examples:
    >>> import jax, jax.numpy as jnp, jaxkink
    >>> f = lambda x: jax.nn.relu(x).sum() + jnp.maximum(x, 0.).sum()
    >>> jax.grad(f)(jnp.zeros(2))  # jax.nn.relu'(0) = 0, max's tie: 0.5
    Array([0.5, 0.5], dtype=float32)
    >>> fk = jaxkink.kinkify(f)
    >>> jax.grad(fk, argnums=1)(jaxkink.Kinks(relu_s=1.0), jnp.zeros(2))
    Array([2., 2.], dtype=float32)
    >>> jax.jit(fk)(jaxkink.Kinks(relu_s=1.0), jnp.array([-1.0, 2.0]))
    Array(4., dtype=float32)
  """
  warned: set[str] | None = set() if warn else None

  def fn_k(kinks: Kinks, *args):
    if not isinstance(kinks, Kinks):
      raise TypeError(f'kinkify: the first argument must be a jaxkink.Kinks, '
                      f'got {type(kinks).__name__}')
    closed, leaves, out_tree = trace(fn, args)
    interp = _Interpreter(kinks, warn=warned, bare_max=bare_max)
    outs = interp.eval_closed(closed, leaves)
    return jax.tree_util.tree_unflatten(out_tree, outs)

  fn_k.__name__ = f'kinkified_{getattr(fn, "__name__", "fn")}'
  fn_k.__doc__ = getattr(fn, '__doc__', None)
  fn_k.__wrapped__ = fn  # type: ignore[attr-defined]
  return fn_k
