"""Models by name, with options and a precision policy.

``get('vgg11', batch_norm=False)`` builds a model; scripts can forward their
flags (``--model=vgg11 --batch_norm=false``): string option values are
converted to the type of the field's default (``'false'`` -> False,
``'256,256,10'`` -> ``(256, 256, 10)``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxkink.kinks import Kinks
from jaxkink.models import external
from jaxkink.models.densenet import DenseNet
from jaxkink.models.lenet import LeNet5
from jaxkink.models.mlp import MLP
from jaxkink.models.mobilenet import MobileNetV3Small
from jaxkink.models.resnet import ResNet
from jaxkink.models.vgg import VGG
from jaxkink.precision import Policy, get_policy
from jaxkink.typing import KinkModel

# name -> (module class, preset options). Presets are defaults: options given
# to ``get`` override them.
_MODELS: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {
    'mlp': (MLP, {}),
    'mlp_reference': (MLP, dict(widths=(256, 256, 256, 10),
                                relu_after_first=False)),
    # The same network summed in PyTorch's CPU order (MKL's K-blocks as
    # measured in issue 13 on an AVX2 CPU with one thread).
    'mlp_reference_torch': (MLP, dict(widths=(256, 256, 256, 10),
                                      relu_after_first=False,
                                      torch_order=('784:192', '256:128'))),
    'mlp_bifurcation': (MLP, dict(widths=(2000, 128, 10))),
    'mlp_relu6': (MLP, dict(widths=(4000, 256, 10), activation='relu6')),
    'mlp_2048': (MLP, dict(widths=(2048, 2048, 2048, 10))),
    'lenet5': (LeNet5, {}),
    'vgg11': (VGG, dict(config='vgg11')),
    'vgg13': (VGG, dict(config='vgg13')),
    'vgg16': (VGG, dict(config='vgg16')),
    'vgg19': (VGG, dict(config='vgg19')),
    'resnet18': (ResNet, dict(stage_sizes=(2, 2, 2, 2), block='basic')),
    'resnet34': (ResNet, dict(stage_sizes=(3, 4, 6, 3), block='basic')),
    'resnet50': (ResNet, dict(stage_sizes=(3, 4, 6, 3), block='bottleneck')),
    'densenet121': (DenseNet, dict(block_config=(6, 12, 24, 16))),
    'mobilenet_v3_small': (MobileNetV3Small, {}),
}

_TRUE = ('true', 't', 'yes', 'y', '1', 'on')
_FALSE = ('false', 'f', 'no', 'n', '0', 'off')


def names() -> tuple[str, ...]:
  """The registered model names, sorted."""
  return tuple(sorted(_MODELS))


def options(name: str) -> tuple[str, ...]:
  """The option names model ``name`` accepts (its module fields, or an
  outside model's factory arguments)."""
  if external.is_spec(name):
    return external.options(name)
  cls, _ = _lookup(name)
  return _fields(cls)


def get(name: str, *, policy: Policy | str | None = None,
        **opts: Any) -> nn.Module | external.External:
  """Builds the model registered as ``name``, or an outside one.

  Args:
    name: a name of :func:`names`; case, ``-`` and ``_`` do not matter
      (``'VGG-11'`` is ``'vgg11'``). Or ``'package.module:factory'``, a
      model defined outside jaxkink (:mod:`jaxkink.models.external`): a
      flax module written with ``nn.relu``, ``nn.max_pool``, ... that runs
      through :func:`jaxkink.kinkify`.
    policy: a precision policy or its name: sets the model's ``dtype``
      (compute), ``param_dtype`` and ``precision`` (see :func:`with_policy`).
    **opts: module fields, e.g. ``batch_norm=False``, ``num_classes=10``;
      strings are converted to the type of the field's default.

  Returns:
    The (unbound) flax module.

  Raises:
    ValueError: for an unknown name (listing the valid ones), an unknown
      option (listing the model's options) or a bad option value.

  Examples:
    >>> import jaxkink.models as models
    >>> models.get('vgg11', batch_norm='false').batch_norm
    False
    >>> models.get('mlp', widths='784,10').widths
    (784, 10)
  """
  if external.is_spec(name):
    return external.load(name, policy=policy, **opts)
  cls, preset = _lookup(name)
  fields = _fields(cls)
  unknown = sorted(set(opts) - set(fields))
  if unknown:
    raise ValueError(f'model {name!r} has no option(s) {", ".join(unknown)}; '
                     f'valid options: {", ".join(fields)}')
  defaults = {f.name: f.default for f in dataclasses.fields(cls)}
  values = dict(preset)
  for key, value in opts.items():
    values[key] = _convert(key, value, values.get(key, defaults.get(key)))
  model = cls(**values)
  return model if policy is None else with_policy(model, policy)


def with_policy(model: nn.Module, policy: Policy | str) -> nn.Module:
  """A copy of ``model`` with the policy's dtypes and matmul precision.

  ``dtype = policy.compute_dtype``, ``param_dtype = policy.param_dtype``,
  ``precision = policy.jax_precision`` (None for ``'default'``). Inputs
  are not cast by the model: use ``policy.cast_inputs``; trace under
  ``policy.scope()`` so that operations outside the layers see the
  precision too.

  Raises:
    ValueError: for an unknown policy name.
    RuntimeError: for a 64-bit policy while ``jax_enable_x64`` is off (the
      model would silently compute in float32).
  """
  policy = get_policy(policy)
  return model.clone(dtype=policy.compute_dtype,
                     param_dtype=policy.param_dtype,
                     precision=policy.jax_precision)


def is_convolutional(model: nn.Module | KinkModel, sample: Any) -> bool:
  """Whether ``model`` has a convolution kernel (a parameter of rank >= 3)
  on inputs shaped like ``sample`` (only its shape is read; nothing is
  computed). The engine and the trainer pick their CPU programs by it."""
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros(sample.shape, jnp.float32), Kinks()))
  return any(len(leaf.shape) >= 3
             for leaf in jax.tree.leaves(shapes.get('params', {})))


def _lookup(name: str):
  key = str(name).strip().lower().replace('-', '_')
  if key not in _MODELS:
    key = key.replace('_', '')
    key = {k.replace('_', ''): k for k in _MODELS}.get(key, key)
  if key not in _MODELS:
    raise ValueError(f'unknown model {name!r}; valid names: '
                     f'{", ".join(names())}, or package.module:factory for '
                     'a model defined outside jaxkink')
  return _MODELS[key]


def _fields(cls) -> tuple[str, ...]:
  """The model's own fields first, then the keyword-only shared options."""
  fields = [f for f in dataclasses.fields(cls)
            if f.init and f.name not in ('parent', 'name')]
  return tuple(f.name for f in sorted(fields, key=lambda f: bool(f.kw_only)))


def _convert(key: str, value: Any, default: Any) -> Any:
  """``value`` converted to the type of ``default`` when it is a string;
  lists become tuples (module fields stay hashable)."""
  if isinstance(value, list):
    return tuple(value)
  if not isinstance(value, str) or isinstance(default, str) or default is None:
    return value
  text = value.strip()
  try:
    if isinstance(default, bool):
      if text.lower() in _TRUE:
        return True
      if text.lower() in _FALSE:
        return False
      raise ValueError(text)
    if isinstance(default, int):
      return int(text)
    if isinstance(default, float):
      return float(text)
    if isinstance(default, tuple):
      items = [t for t in text.split(',') if t.strip()]
      return tuple(int(t) if t.strip().lstrip('-').isdigit() else t.strip()
                   for t in items)
  except ValueError:
    raise ValueError(f'option {key}={value!r}: expected a value like '
                     f'{default!r}') from None
  return value
