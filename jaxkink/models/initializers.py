r"""Parameter initialisers, selectable by name: ``INITS``.

Each scheme gives the kernel and bias initialisers of dense and convolution
layers; batch-norm layers always start at scale 1 and bias 0 (PyTorch's and
flax's common default).

``'pytorch'``: PyTorch's default, what ``nn.Linear.reset_parameters`` and
``nn.Conv2d.reset_parameters`` (``_ConvNd``) do, and what the papers' Monte
Carlo draws from (``deel-ai/relu-prime`` notebooks re-draw every weight
sample with ``reset_parameters()``). The weight is filled by
``kaiming_uniform_(weight, a=sqrt(5))``, i.e. ``mode='fan_in'`` and
``nonlinearity='leaky_relu'`` with negative slope :math:`a = \sqrt 5`:

.. math::

  \mathrm{gain} = \sqrt{\frac{2}{1 + a^2}} = \sqrt{\frac{2}{6}}
  = \frac{1}{\sqrt 3}, \qquad
  \mathrm{std} = \frac{\mathrm{gain}}{\sqrt{\mathrm{fan\_in}}}, \qquad
  \mathrm{bound} = \sqrt 3\, \mathrm{std} = \frac{1}{\sqrt{\mathrm{fan\_in}}},

(a uniform law on :math:`[-b, b]` has standard deviation :math:`b/\sqrt 3`),
so ``weight ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, variance
``1 / (3 fan_in)``. The bias is drawn explicitly from the same interval,
``bound = 1 / sqrt(fan_in)`` with the weight's ``fan_in``. ``fan_in`` is
``in_features`` for ``nn.Linear`` and ``in_channels / groups * kh * kw`` for
``nn.Conv2d``; in flax's kernel layouts (``(in, out)`` and
``(kh, kw, in / groups, out)``) that is the product of all but the last
dimension. (He et al.'s Kaiming-uniform for ReLU would have bound
``sqrt(6 / fan_in)``, six times the variance: that is ``'tmlr'``.)

``'flax'``: flax's defaults, kernel ``lecun_normal()`` (truncated normal of
variance ``1 / fan_in``), bias zero.

``'tmlr'``: the TMLR MaxPool paper's volume notebooks
(``ryanboustany/MaxPool-numerical``,
``notebooks/volume_estimation_by_architecture.ipynb``, ``init_weights``):
convolution kernel ``kaiming_uniform_(mode='fan_in', nonlinearity='relu')``,
i.e. ``U(-sqrt(6 / fan_in), sqrt(6 / fan_in))``, convolution bias 0, dense
kernel ``N(0, 0.01^2)``, dense bias 0.

``'torchvision_resnet'``: what torchvision's ``ResNet`` constructor does
(and so the ResNet18 training runs of ``deel-ai/relu-prime``): convolution
kernel ``kaiming_normal_(mode='fan_out', nonlinearity='relu')``, i.e.
``N(0, 2 / fan_out)`` with ``fan_out = out_channels * kh * kw``
(untruncated); dense layers keep the PyTorch default.

The PyTorch-derived schemes draw in float32 and round to the parameter dtype,
as a PyTorch model built in float32 and then converted with ``.half()`` or
``.double()`` (the reference code's precision switch) does.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jaxkink.typing import Array, PRNGKey

Initializer = Callable[[PRNGKey, tuple[int, ...], Any], Array]

INITS = ('pytorch', 'flax', 'tmlr', 'torchvision_resnet')


def check_init(name: str) -> str:
  """Returns ``name`` if it is a known scheme, else raises ``ValueError``."""
  if name not in INITS:
    raise ValueError(f'unknown initialiser {name!r}; valid names: '
                     f'{", ".join(INITS)}')
  return name


def pytorch_bound(fan_in: int) -> float:
  """``1 / sqrt(fan_in)``: the half-width of PyTorch's default init."""
  return 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0


def uniform(bound: float) -> Initializer:
  """``U[-bound, bound)``, drawn in float32 and rounded to ``dtype``."""
  def init(key: PRNGKey, shape, dtype=jnp.float32) -> Array:
    draw = jax.random.uniform(key, shape, jnp.float32, -bound, bound)
    return draw.astype(dtype)
  return init


def normal(std: float) -> Initializer:
  """``N(0, std^2)``, drawn in float32 and rounded to ``dtype``."""
  def init(key: PRNGKey, shape, dtype=jnp.float32) -> Array:
    return (std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)
  return init


def kernel_init(name: str, kind: str, fan_in: int,
                fan_out: int) -> Initializer:
  """The kernel initialiser of scheme ``name`` for a layer.

  Args:
    name: one of ``INITS``.
    kind: ``'dense'`` or ``'conv'``.
    fan_in: inputs per output unit (``in * kh * kw / groups`` for a conv).
    fan_out: ``out * kh * kw`` for a conv, ``out`` for a dense layer.

  Returns:
    A flax-style initialiser ``init(key, shape, dtype)``.
  """
  check_init(name)
  if name == 'flax':
    return jax.nn.initializers.lecun_normal()
  if name == 'tmlr':
    if kind == 'conv':
      return uniform(math.sqrt(6.0 / fan_in))
    return normal(0.01)
  if name == 'torchvision_resnet' and kind == 'conv':
    return normal(math.sqrt(2.0 / fan_out))
  return uniform(pytorch_bound(fan_in))


def bias_init(name: str, kind: str, fan_in: int) -> Initializer:
  """The bias initialiser of scheme ``name`` (see :func:`kernel_init`)."""
  check_init(name)
  if name in ('flax', 'tmlr') or (name == 'torchvision_resnet' and
                                   kind == 'conv'):
    return jax.nn.initializers.zeros
  return uniform(pytorch_bound(fan_in))
