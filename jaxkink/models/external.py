"""Models defined outside jaxkink, by ``package.module:factory``.

``models.get('package.module:factory', **opts)`` imports ``package.module``,
calls ``factory(**opts)`` and returns a model with the interface of
jaxkink's own (``init(rng, x, kinks)``, ``apply(variables, x, kinks, train,
mutable=..., rngs=...)``), so that the experiments and the engine run it
unchanged. The factory returns either

* a ``flax.linen.Module`` whose ``__call__`` takes ``kinks``: a model written
  with jaxkink's primitives, used as it is; or
* any other ``flax.linen.Module``, written with ``nn.relu``,
  ``nn.max_pool``, ``jnp.maximum``, ...: it is run through
  :func:`jaxkink.kinkify`, so its recognised kinks follow the ``Kinks``
  value and its forward is its own, bit for bit.

A module's ``train`` argument, if its ``__call__`` has one, gets the
engine's and the trainer's train switch; batch norm statistics and dropout
work as in flax (``mutable``, ``rngs``). The options are passed as given (the
command line's ``--model_opt key=value`` are strings).

The model records itself (``repr``) as its spec and options, and the
precision policy: the factory's module must have ``dtype`` and
``param_dtype`` fields for a policy other than float32 (they are set as for
jaxkink's models), else the model is refused rather than run silently in
float32.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxkink.kinkify import kinkify
from jaxkink.precision import Policy, get_policy


def is_spec(name: str) -> bool:
  """Whether ``name`` names an outside model (``package.module:factory``)."""
  return ':' in str(name)


def _factory(spec: str):
  module_name, _, attr = str(spec).partition(':')
  if not module_name or not attr:
    raise ValueError(f'model {spec!r}: expected package.module:factory')
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f'model {spec!r}: cannot import {module_name!r} ({e}); '
                     'is it on PYTHONPATH?') from e
  factory: Any = module
  for part in attr.split('.'):
    factory = getattr(factory, part, None)
    if factory is None:
      raise ValueError(f'model {spec!r}: {module_name} has no {attr!r}')
  if not callable(factory):
    raise ValueError(f'model {spec!r}: {attr} is not callable')
  return factory


def options(spec: str) -> tuple[str, ...]:
  """The keyword arguments ``spec``'s factory takes."""
  params = inspect.signature(_factory(spec)).parameters.values()
  return tuple(p.name for p in params
               if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _takes(module: nn.Module, name: str) -> bool:
  return name in inspect.signature(type(module).__call__).parameters


@dataclasses.dataclass(frozen=True)
class External:
  """An outside flax module with jaxkink's model interface.

  Attributes:
    spec: ``package.module:factory``.
    opts: the factory's keyword arguments, as given.
    module: the module the factory returned (with the policy's dtypes).
  """
  spec: str
  opts: tuple[tuple[str, Any], ...]
  module: nn.Module

  @property
  def kink_aware(self) -> bool:
    """Whether the module takes ``kinks`` itself (else it is kinkified)."""
    return _takes(self.module, 'kinks')

  def init(self, rngs, x, kinks, train: bool = False, **kwargs):
    """``module.init``; the kinks do not change the parameters."""
    kw: dict[str, Any] = (
        {'train': train} if _takes(self.module, 'train') else {})
    if self.kink_aware:
      return self.module.init(rngs, x, kinks, **kw, **kwargs)
    return self.module.init(rngs, x, **kw, **kwargs)

  def apply(self, variables, x, kinks, train: bool = False, **kwargs):
    """``module.apply``, its kinks' derivatives taken from ``kinks``."""
    kw: dict[str, Any] = (
        {'train': train} if _takes(self.module, 'train') else {})
    if self.kink_aware:
      return self.module.apply(variables, x, kinks, **kw, **kwargs)
    return kinkify(lambda variables, x: self.module.apply(
        variables, x, **kw, **kwargs))(kinks, variables, x)

  def __repr__(self) -> str:
    opts = ', '.join(f'{k}={v!r}' for k, v in self.opts)
    return f'External({self.spec}({opts}) -> {self.module!r})'


def load(spec: str, *, policy: Policy | str | None = None,
         **opts: Any) -> External:
  """Imports and builds the outside model ``spec`` (see the module doc).

  Raises:
    ValueError: for a spec that does not import, an option the factory
      does not take, a factory that returns no flax module, or a policy the
      module cannot follow.
  """
  factory = _factory(spec)
  unknown = sorted(set(opts) - set(options(spec)))
  if unknown:
    raise ValueError(f'model {spec!r} takes no option(s) {", ".join(unknown)}'
                     f'; its options: {", ".join(options(spec)) or "none"}')
  module = factory(**opts)
  if not isinstance(module, nn.Module):
    raise ValueError(f'model {spec!r}: the factory returned a '
                     f'{type(module).__name__}, not a flax.linen.Module')
  if policy is not None:
    policy = get_policy(policy)
    fields = {f.name for f in dataclasses.fields(module)}
    change: dict[str, Any] = {
        k: v for k, v in (('dtype', policy.compute_dtype),
                          ('param_dtype', policy.param_dtype),
                          ('precision', policy.jax_precision))
        if k in fields}
    needed = [k for k, v in (('dtype', policy.compute_dtype),
                             ('param_dtype', policy.param_dtype))
              if jnp.dtype(v) != jnp.float32 and k not in fields]
    if needed:
      raise ValueError(
          f'model {spec!r}: precision {policy.name} needs the module fields '
          f'{", ".join(needed)}, which {type(module).__name__} does not have '
          '(it would compute in float32)')
    module = module.clone(**change)
  return External(spec, tuple(sorted(opts.items())), module)
