"""Layer builders shared by the model zoo.

Every model turns its fields into one :class:`Layers` value and builds its
layers through it, so that dtypes, matmul precision, the initialiser, batch
norm and the activation are set in one place, and every nonsmooth operation
goes through the ``Kinks`` value given at call time. Call the builders from
inside a ``nn.compact`` method: the flax layers they create become children
of the calling module (flax's ``Dense_0``, ``Conv_0``, ``BatchNorm_0``
names).

Geometry follows PyTorch: convolution padding is an explicit symmetric
integer (``padding=1`` is PyTorch's ``padding=1``, not ``'SAME'``, which pads
asymmetrically for even inputs with stride 2).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from jaxkink.kinks import Kinks
from jaxkink.models import initializers
from jaxkink.typing import Array

ACTIVATIONS = ('relu', 'relu6', 'leaky_relu')

# torchvision-style stem pools: window, strides, symmetric padding.
POOLS = {
    '3x3s2': ((3, 3), (2, 2), 1),  # nn.MaxPool2d(3, 2, padding=1)
    '2x2s2': ((2, 2), (2, 2), 0),  # nn.MaxPool2d(2, 2) / TMLR MaxPool2DBeta
    'none': None,
}


def check_choice(what: str, value: Any, choices: Sequence[Any]) -> Any:
  """Returns ``value`` if it is one of ``choices``, else a clear error."""
  if value not in choices:
    raise ValueError(f'unknown {what} {value!r}; valid: '
                     f'{", ".join(map(str, choices))}')
  return value


@dataclasses.dataclass(frozen=True)
class Layers:
  """How a model builds its layers.

  Attributes:
    init_scheme: initialiser scheme, one of :data:`initializers.INITS`.
    dtype: computation dtype (``None``: inferred by flax from inputs and
      parameters).
    param_dtype: dtype the parameters are created in.
    precision: matmul / convolution precision of every layer (``None``,
      ``'highest'``, ``'tensorfloat32'``, ... as in ``jax.lax``).
    batch_norm: use batch norm where the architecture has it; with False the
      layer is the identity (no parameters, no statistics).
    bn_momentum: flax's running-average momentum (PyTorch's ``1 -
      momentum``; PyTorch's default 0.1 is 0.9 here).
    bn_epsilon: batch norm's epsilon.
    activation: ``'relu'``, ``'relu6'`` or ``'leaky_relu'``.
    leaky_slope: LeakyReLU's negative slope.
    tap_conv_pixels: convolutions whose output maps have at most this many
      pixels run as :func:`tap_conv` (one matmul per kernel tap) instead of
      XLA's convolution; 0: never.
  """
  init_scheme: str = 'pytorch'
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  batch_norm: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  activation: str = 'relu'
  leaky_slope: float = 0.01
  tap_conv_pixels: int = 4

  def __post_init__(self):
    initializers.check_init(self.init_scheme)
    check_choice('activation', self.activation, ACTIVATIONS)
    if (isinstance(self.tap_conv_pixels, bool)
        or not isinstance(self.tap_conv_pixels, int)
        or self.tap_conv_pixels < 0):
      raise ValueError('tap_conv_pixels must be an integer >= 0, got '
                       f'{self.tap_conv_pixels!r}')

  @classmethod
  def of(cls, model: Any, **overrides) -> 'Layers':
    """The builders for ``model``: its fields of the same names, overridden."""
    values = {f.name: getattr(model, f.name)
              for f in dataclasses.fields(cls) if hasattr(model, f.name)}
    values.update(overrides)
    return cls(**values)

  def dense(self, x: Array, features: int, *, use_bias: bool = True,
            block: int | None = None, name: str | None = None) -> Array:
    """A dense layer over the last axis of ``x``.

    ``block=None`` is flax's ``nn.Dense`` (XLA's ``dot`` then ``+ b``); an
    integer gives a :class:`BiasFirstDense` with the same parameters, summed
    in PyTorch's CPU order (:func:`bias_first_dense`).
    """
    fan_in = x.shape[-1]
    common: dict[str, Any] = dict(
        use_bias=use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
        precision=self.precision,
        kernel_init=initializers.kernel_init(self.init_scheme, 'dense',
                                             fan_in, features),
        bias_init=initializers.bias_init(self.init_scheme, 'dense', fan_in),
        name=name)
    if block is None:
      return nn.Dense(features, **common)(x)
    return BiasFirstDense(features, block, **common)(x)

  def conv(self, x: Array, features: int, kernel_size: int | Sequence[int],
           *, strides: int = 1, padding: int = 0, groups: int = 1,
           use_bias: bool = True, name: str | None = None) -> Array:
    """A 2-D convolution (NHWC) with PyTorch's symmetric integer padding.

    flax's ``nn.Conv`` (its parameters, names and draws); on output maps of
    at most ``tap_conv_pixels`` pixels it computes through :func:`tap_conv`.
    """
    if isinstance(kernel_size, int):
      kernel_size = (kernel_size, kernel_size)
    kernel_size = tuple(kernel_size)
    receptive = math.prod(kernel_size)
    fan_in = x.shape[-1] // groups * receptive
    fan_out = features * receptive
    return nn.Conv(
        features, kernel_size, strides=strides,
        padding=tuple((padding, padding) for _ in kernel_size),
        feature_group_count=groups, use_bias=use_bias, dtype=self.dtype,
        param_dtype=self.param_dtype, precision=self.precision,
        kernel_init=initializers.kernel_init(self.init_scheme, 'conv',
                                             fan_in, fan_out),
        bias_init=initializers.bias_init(self.init_scheme, 'conv', fan_in),
        conv_general_dilated=(
            functools.partial(tap_conv, max_pixels=self.tap_conv_pixels)
            if self.tap_conv_pixels else None),
        name=name)(x)

  def norm(self, x: Array, train: bool, *, name: str | None = None) -> Array:
    """Batch norm over the last axis, or the identity without batch norm.

    In training mode it normalises with the batch's statistics and updates
    the running averages in the ``'batch_stats'`` collection (apply with
    ``mutable=['batch_stats']``); otherwise it uses the running averages.
    Flax keeps the biased batch variance in the running average where
    PyTorch keeps the unbiased one.
    """
    if not self.batch_norm:
      return x
    return nn.BatchNorm(
        use_running_average=not train, momentum=self.bn_momentum,
        epsilon=self.bn_epsilon, dtype=self.dtype,
        param_dtype=self.param_dtype, name=name)(x)

  def act(self, x: Array, kinks: Kinks) -> Array:
    """The model's activation, through ``kinks``."""
    if self.activation == 'relu':
      return kinks.relu(x)
    if self.activation == 'relu6':
      return kinks.relu6(x)
    return kinks.leaky_relu(x, self.leaky_slope)

  def pool(self, x: Array, kinks: Kinks, pool: str) -> Array:
    """A named max pool of :data:`POOLS` (``'none'``: the identity)."""
    spec = POOLS[check_choice('pool', pool, tuple(POOLS))]
    if spec is None:
      return x
    window, strides, pad = spec
    return kinks.max_pool(x, window, strides, ((pad, pad), (pad, pad)))


def bias_first_dense(x: Array, kernel: Array, bias: Array | None,
                     block: int, precision: Any = None) -> Array:
  """``b + x[:, :k] @ W[:k] + x[:, k:2k] @ W[k:2k] + ...``, left to right.

  PyTorch's CPU ``nn.Linear`` (``addmm``: MKL sgemm with ``beta = 1`` on
  ``C = b``) starts from the bias and adds the product's K-blocks to it, each
  block an FMA chain from zero; XLA's ``x @ W + b`` is one chain over all of
  K with the bias added last. The two round differently, and where a
  pre-activation is an exact zero depends on the last addition (BUILD_NOTES,
  issue 13). This function is XLA computing PyTorch's order: every block is
  one ``dot`` (one chain on the CPU for the Table-1 shapes) and XLA does not
  reassociate the additions. On the 2-core AMD EPYC (AVX2) machine of issue
  13 with torch 2.13 (MKL, one thread), ``block=192`` for K = 784 and 128
  for K = 256 gave PyTorch's pre-activations bit for bit; the block size is
  MKL's choice for a CPU, a shape and a thread count, not a constant:
  check it with ``benchmarks/crosscheck_torch.py``.

  Args:
    x: ``(..., K)`` inputs.
    kernel: ``(K, N)``.
    bias: ``(N,)`` or None (then the first block starts the sum).
    block: the K-block size, ``>= 1``.
    precision: ``jax.lax`` matmul precision of each block.

  Returns:
    ``(..., N)``.

  Raises:
    ValueError: for ``block < 1``.
  """
  if block < 1:
    raise ValueError(f'block must be >= 1, got {block}')
  k_total = x.shape[-1]
  z = None if bias is None else jnp.broadcast_to(
      bias, x.shape[:-1] + bias.shape)
  for start in range(0, k_total, block):
    stop = min(k_total, start + block)
    part = jnp.dot(x[..., start:stop], kernel[start:stop],
                   precision=precision)
    z = part if z is None else z + part
  if z is None:  # K = 0 and no bias: the empty product
    z = jnp.zeros(x.shape[:-1] + kernel.shape[1:], jnp.result_type(x, kernel))
  return z


_NHWC = ('NHWC', 'HWIO', 'NHWC')


def tap_conv(lhs: Array, rhs: Array, window_strides: Sequence[int],
             padding: Any, lhs_dilation: Sequence[int] | None = None,
             rhs_dilation: Sequence[int] | None = None,
             dimension_numbers: Any = None, feature_group_count: int = 1,
             precision: Any = None, *, max_pixels: int = 4) -> Array:
  """``lax.conv_general_dilated``, as one matmul per kernel tap on small maps.

  For a 2-D NHWC / HWIO convolution with unit strides and dilations, one
  group and explicit non-negative padding whose output map has at most
  ``max_pixels`` pixels, the result is ``sum_(i, j) xpad[:, i:i+H, j:j+W] @
  rhs[i, j]``, the taps added in row-major order from ``(0, 0)``, each a
  ``(batch * H * W, C) @ (C, O)`` dot. Everything else goes to
  ``lax.conv_general_dilated`` unchanged.

  XLA's CPU convolution is pathological on 1x1 and 2x2 maps: on the 2-core
  AMD EPYC (Zen 4) machine of issue 17, a 3x3 512 -> 512 convolution of a
  batch of 128 on 2x2 maps took about 1,100 ms forward and as long for its
  input gradient, the taps 14-15 ms; from 4x4 maps on XLA's convolution is
  as fast or faster (BUILD_NOTES.md, issue 17). The taps sum in another
  order than XLA's convolution: the values differ in the last bits
  (about 3e-6 absolute on those shapes), they are not equal bit for bit.

  Args:
    lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
      dimension_numbers, feature_group_count, precision: as in
      ``lax.conv_general_dilated`` (flax's ``nn.Conv`` passes them so).
    max_pixels: the largest output map (height times width) computed by
      taps.

  Returns:
    The convolution, shaped and typed as ``lax.conv_general_dilated``'s.
  """
  conv = functools.partial(
      lax.conv_general_dilated, lhs, rhs, window_strides, padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, precision=precision)
  ones = (1, 1)
  if (lhs.ndim != 4 or rhs.ndim != 4 or feature_group_count != 1
      or tuple(window_strides) != ones
      or tuple(lhs_dilation or ones) != ones
      or tuple(rhs_dilation or ones) != ones
      or isinstance(padding, str)
      or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
      != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)):
    return conv()
  pads = tuple(tuple(int(p) for p in pair) for pair in padding)
  if min(min(pair) for pair in pads) < 0:
    return conv()
  kh, kw, channels, _ = rhs.shape
  height = lhs.shape[1] + sum(pads[0]) - kh + 1
  width = lhs.shape[2] + sum(pads[1]) - kw + 1
  if (lhs.shape[3] != channels or height < 1 or width < 1
      or height * width > max_pixels):
    return conv()
  xpad = jnp.pad(lhs, ((0, 0),) + pads + ((0, 0),))
  taps = [lax.dot_general(xpad[:, i:i + height, j:j + width], rhs[i, j],
                          (((3,), (0,)), ((), ())), precision=precision)
          for i in range(kh) for j in range(kw)]
  out = taps[0]
  for tap in taps[1:]:   # left to right, as the docstring says
    out = out + tap
  return out


class BiasFirstDense(nn.Module):
  """``nn.Dense``'s parameters (names, shapes, initialisers: the same draws
  from the same keys), summed as PyTorch's CPU ``addmm``
  (:func:`bias_first_dense`).

  Attributes:
    features: output size.
    block: the K-block size.
    (and ``nn.Dense``'s ``use_bias``, ``dtype``, ``param_dtype``,
    ``precision``, ``kernel_init``, ``bias_init``)
  """
  features: int
  block: int
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', self.kernel_init,
                        (x.shape[-1], self.features), self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,),
                       self.param_dtype) if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias,
                                              dtype=self.dtype)
    return bias_first_dense(x, kernel, bias, self.block, self.precision)


def dropout(x: Array, rate: float, train: bool) -> Array:
  """Dropout with the ``'dropout'`` rng in training mode; else the identity."""
  if rate == 0.0:
    return x
  return nn.Dropout(rate, deterministic=not train)(x)


def hard_sigmoid(x: Array, kinks: Kinks) -> Array:
  """``relu6(x + 3) / 6`` with ReLU6's kinks: the slope at x = -3 is
  ``relu6_alpha / 6``, at x = 3 ``relu6_beta / 6``. Equals
  ``jax.nn.hard_sigmoid`` bit for bit with the default kinks."""
  return kinks.relu6(x + 3.0) / 6.0


def hard_swish(x: Array, kinks: Kinks) -> Array:
  """``x * (relu6(x + 3) / 6)`` with ReLU6's kinks (``jax.nn.hard_swish``'s
  formula and order, bit for bit with the default kinks)."""
  return x * hard_sigmoid(x, kinks)


def global_avg_pool(x: Array) -> Array:
  """Mean over the spatial axes of an NHWC array (``AdaptiveAvgPool2d(1)``
  followed by a flatten)."""
  return jnp.mean(x, axis=(-3, -2))


def flatten(x: Array) -> Array:
  """Flattens every axis but the first (the batch)."""
  return x.reshape(x.shape[0], -1)


def _option(default: Any) -> Any:
  return dataclasses.field(default=default, kw_only=True)


class KinkedModule(nn.Module):
  """Base of the model zoo: the options every model shares.

  They are keyword-only fields, so each model's own fields keep their
  positions (``VGG('vgg13')``, ``MLP((256, 10))``).

  Attributes:
    batch_norm: use batch norm where the architecture has it (each model says
      where); False makes it the identity (no parameters, no statistics).
    activation: ``'relu'``, ``'relu6'`` or ``'leaky_relu'``.
    leaky_slope: LeakyReLU's negative slope.
    init_scheme: initialiser scheme (``initializers.INITS``).
    dtype: computation dtype (None: inferred).
    param_dtype: parameter dtype.
    precision: matmul / convolution precision of every layer.
    tap_conv_pixels: convolutions whose output maps have at most this many
      pixels (VGG's 2x2 maps on 32x32 inputs) are computed as a sum of one
      matmul per kernel tap (:func:`tap_conv`), 20-80x faster than XLA's
      CPU convolution there, rounded otherwise; 0: XLA's convolution
      everywhere (jaxkink before issue 17's fix).
  """
  batch_norm: bool = _option(False)
  activation: str = _option('relu')
  leaky_slope: float = _option(0.01)
  init_scheme: str = _option('pytorch')
  dtype: Any = _option(None)
  param_dtype: Any = _option(jnp.float32)
  precision: Any = _option(None)
  tap_conv_pixels: int = _option(4)

  def __post_init__(self):
    Layers.of(self)  # checks the option names early, with clear errors
    super().__post_init__()
