"""MobileNetV3-Small with ReLU / ReLU6 kinks."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn

from jaxkink.kinks import Kinks
from jaxkink.models.layers import (KinkedModule, Layers, dropout,
                                   global_avg_pool, hard_sigmoid, hard_swish)
from jaxkink.typing import Array

# torchvision's ``mobilenet_v3_small`` bottlenecks: kernel, expanded
# channels, output channels, squeeze-and-excitation, activation ('RE' the
# model's ReLU-type activation, 'HS' hard-swish), stride.
SMALL = (
    (3, 16, 16, True, 'RE', 2),
    (3, 72, 24, False, 'RE', 2),
    (3, 88, 24, False, 'RE', 1),
    (5, 96, 40, True, 'HS', 2),
    (5, 240, 40, True, 'HS', 1),
    (5, 240, 40, True, 'HS', 1),
    (5, 120, 48, True, 'HS', 1),
    (5, 144, 48, True, 'HS', 1),
    (5, 288, 96, True, 'HS', 2),
    (5, 576, 96, True, 'HS', 1),
    (5, 576, 96, True, 'HS', 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
  """torchvision's ``_make_divisible``: round to a multiple of ``divisor``,
  not below ``divisor`` and not more than 10% below ``value``."""
  new = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * value else new


class MobileNetV3Small(KinkedModule):
  """torchvision's ``mobilenet_v3_small`` with every kink through ``Kinks``.

  The 'RE' layers (the first three bottlenecks and every
  squeeze-and-excitation's inner activation) use ``activation``: ReLU by
  default, ReLU6 in the EPFL reproducibility report's setting (kink values
  ``relu6_alpha``, ``relu6_beta``). Hard-swish ``x * relu6(x + 3) / 6`` and
  the squeeze-and-excitation's hard-sigmoid ``relu6(x + 3) / 6`` are written
  with ``kinks.relu6`` too, so their kinks at -3 and 3 take the ReLU6 kink
  values (scaled by 1/6 and by x); with the default ``Kinks()`` they equal
  ``jax.nn.hard_swish`` / ``hard_sigmoid`` bit for bit.

  Batch norm has torchvision's ``eps=0.001`` and PyTorch momentum 0.01
  (flax momentum 0.99). With ``batch_norm=False`` it is the identity and the
  convolutions stay bias-free (the papers' ``norm_layer=nn.Identity`` way,
  not torchvision's ``norm_layer=None``, which would add biases).

  Used in: the EPFL reproducibility report of the ReLU'(0) paper
  (MobileNetV3-small on MNIST / FashionMNIST, ReLU6 kinks tuned as
  hyperparameters, its Fig. 7).

  Attributes:
    num_classes: output size.
    blocks: the bottleneck table (torchvision's
      ``inverted_residual_setting``), rows ``(kernel, expanded, out, se,
      'RE' or 'HS', stride)``; ``SMALL`` by default.
    last_channel: width of the classifier's hidden layer (1024).
    width_mult: torchvision's channel multiplier (channels rounded to
      multiples of 8).
    dropout: classifier dropout rate (torchvision: 0.2).
    batch_norm: batch norm after every convolution.
    activation: ``'relu'``, ``'relu6'`` or ``'leaky_relu'`` for 'RE' layers.
    (and the shared keyword-only options of :class:`KinkedModule`)
  """
  num_classes: int = 10
  blocks: Sequence[tuple[int, int, int, bool, str, int]] = SMALL
  last_channel: int = 1024
  width_mult: float = 1.0
  dropout: float = 0.2
  batch_norm: bool = dataclasses.field(default=True, kw_only=True)

  def __post_init__(self):
    for row in self.blocks:
      if len(row) != 6 or row[4] not in ('RE', 'HS'):
        raise ValueError(f'bad MobileNetV3 block {row!r}: expected (kernel, '
                         "expanded, out, se, 'RE' or 'HS', stride)")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, kinks: Kinks, train: bool = False) -> Array:
    """Logits for NHWC images ``x`` (3 channels).

    Args:
      x: ``(batch, height, width, 3)``.
      kinks: the kink values (ReLU or ReLU6; traced).
      train: batch norm in training mode (updates ``'batch_stats'``) and
        classifier dropout on (rng ``'dropout'``).
    """
    ly = Layers.of(self, bn_momentum=0.99, bn_epsilon=1e-3)
    ch = lambda c: make_divisible(c * self.width_mult)
    act = lambda y, kind: (ly.act(y, kinks) if kind == 'RE'
                           else hard_swish(y, kinks))
    x = act(ly.norm(ly.conv(x, ch(16), 3, strides=2, padding=1,
                            use_bias=False), train), 'HS')
    for kernel, expanded, out, use_se, kind, strides in self.blocks:
      expanded, out = ch(expanded), ch(out)
      y = x
      if expanded != x.shape[-1]:
        y = act(ly.norm(ly.conv(y, expanded, 1, use_bias=False), train), kind)
      y = ly.conv(y, expanded, kernel, strides=strides,
                  padding=(kernel - 1) // 2, groups=expanded, use_bias=False)
      y = act(ly.norm(y, train), kind)
      if use_se:
        s = global_avg_pool(y)[..., None, None, :]
        s = ly.act(ly.conv(s, make_divisible(expanded // 4), 1), kinks)
        y = y * hard_sigmoid(ly.conv(s, expanded, 1), kinks)
      y = ly.norm(ly.conv(y, out, 1, use_bias=False), train)
      x = x + y if strides == 1 and x.shape[-1] == out else y
    x = act(ly.norm(ly.conv(x, 6 * x.shape[-1], 1, use_bias=False), train),
            'HS')
    x = hard_swish(ly.dense(global_avg_pool(x), ch(self.last_channel)), kinks)
    x = dropout(x, self.dropout, train)
    return ly.dense(x, self.num_classes)
