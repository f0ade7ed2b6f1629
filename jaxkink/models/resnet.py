"""ResNet 18/34/50, CIFAR and ImageNet variants, batch norm switchable."""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn

from jaxkink.kinks import Kinks
from jaxkink.models.layers import (POOLS, KinkedModule, Layers, check_choice,
                                   global_avg_pool)
from jaxkink.typing import Array

BLOCKS = ('basic', 'bottleneck')
STEMS = ('cifar', 'imagenet')


class BasicBlock(nn.Module):
  """torchvision's ``BasicBlock``: two 3x3 convolutions and a shortcut.

  Attributes:
    features: output channels.
    strides: stride of the first convolution (and of the shortcut).
    layers: the layer builders of the enclosing network.
  """
  features: int
  strides: int
  layers: Layers

  @nn.compact
  def __call__(self, x: Array, kinks: Kinks, train: bool = False) -> Array:
    ly = self.layers
    y = ly.conv(x, self.features, 3, strides=self.strides, padding=1,
                use_bias=False)
    y = ly.act(ly.norm(y, train), kinks)
    y = ly.conv(y, self.features, 3, padding=1, use_bias=False)
    y = ly.norm(y, train)
    return ly.act(y + _shortcut(x, self.features, self.strides, ly, train),
                  kinks)


class Bottleneck(nn.Module):
  """torchvision's ``Bottleneck`` (v1.5: the stride is on the 3x3 conv).

  Attributes:
    features: width of the 1x1 and 3x3 convolutions; the block outputs
      ``4 * features`` channels.
    strides: stride of the 3x3 convolution (and of the shortcut).
    layers: the layer builders of the enclosing network.
  """
  features: int
  strides: int
  layers: Layers

  @nn.compact
  def __call__(self, x: Array, kinks: Kinks, train: bool = False) -> Array:
    ly = self.layers
    y = ly.act(ly.norm(ly.conv(x, self.features, 1, use_bias=False), train),
               kinks)
    y = ly.conv(y, self.features, 3, strides=self.strides, padding=1,
                use_bias=False)
    y = ly.act(ly.norm(y, train), kinks)
    y = ly.norm(ly.conv(y, 4 * self.features, 1, use_bias=False), train)
    return ly.act(
        y + _shortcut(x, 4 * self.features, self.strides, ly, train), kinks)


def _shortcut(x: Array, features: int, strides: int, ly: Layers,
              train: bool) -> Array:
  """Identity, or a strided 1x1 convolution (+ norm) when shapes change."""
  if strides == 1 and x.shape[-1] == features:
    return x
  y = ly.conv(x, features, 1, strides=strides, use_bias=False,
              name='downsample_conv')
  return ly.norm(y, train, name='downsample_norm')


class ResNet(KinkedModule):
  """torchvision's ResNet, with the papers' CIFAR modification.

  ``stem`` selects the first convolution: ``'cifar'`` a 3x3 stride-1
  padding-1 convolution (the papers' change of ``conv1``), ``'imagenet'``
  torchvision's 7x7 stride-2 padding-3 one. Then ``[BN] -> act ->`` the stem
  max pool, four stages of blocks (stage ``i`` has ``width * 2**i``
  channels, stride 2 from the second stage on), global average pooling and
  a dense classifier. Convolutions have no bias. With ``batch_norm=False``
  every batch norm (shortcuts included) is the identity, as the papers do by
  passing ``norm_layer=nn.Identity``.

  The stem max pool is kept in both variants, as in both reference codes:
  ``'3x3s2'`` is torchvision's ``MaxPool2d(3, 2, padding=1)`` (overlapping
  windows; ``deel-ai/relu-prime`` ``resnet.py`` keeps it for CIFAR too),
  ``'2x2s2'`` the 2x2/2 ``MaxPool2DBeta`` that
  ``ryanboustany/MaxPool-numerical`` ``models/resnet.py`` puts there, and
  ``'none'`` drops it.

  Used in: NeurIPS 2021 ReLU'(0) paper, ResNet18 on CIFAR10, training
  Fig. 11 (appendix D.4) and volume Fig. 12; TMLR MaxPool paper, ResNet18 on
  CIFAR10, thresholds Table 4, training Fig. 13 (appendix C.4), and ResNet50
  on ImageNet, Fig. 14 (appendix C.5); ResNet18 in the EPFL reproducibility
  report.

  Attributes:
    stage_sizes: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet18.
    block: ``'basic'`` or ``'bottleneck'``.
    num_classes: output size.
    width: channels of the stem and of the first stage (torchvision: 64).
    stem: ``'cifar'`` or ``'imagenet'``.
    stem_pool: ``'3x3s2'``, ``'2x2s2'`` or ``'none'``.
    batch_norm: batch norm after every convolution.
    (and the shared keyword-only options of :class:`KinkedModule`)
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = 'basic'
  num_classes: int = 10
  width: int = 64
  stem: str = 'cifar'
  stem_pool: str = '3x3s2'

  def __post_init__(self):
    check_choice('block', self.block, BLOCKS)
    check_choice('stem', self.stem, STEMS)
    check_choice('stem_pool', self.stem_pool, tuple(POOLS))
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, kinks: Kinks, train: bool = False) -> Array:
    """Logits for NHWC images ``x``.

    Args:
      x: ``(batch, height, width, 3)``; 32x32 (CIFAR) or 224x224 (ImageNet).
      kinks: the kink values (ReLU and the stem pool's ties; traced).
      train: batch norm in training mode (updates ``'batch_stats'``).
    """
    layers = Layers.of(self)
    if self.stem == 'cifar':
      x = layers.conv(x, self.width, 3, padding=1, use_bias=False)
    else:
      x = layers.conv(x, self.width, 7, strides=2, padding=3, use_bias=False)
    x = layers.act(layers.norm(x, train), kinks)
    x = layers.pool(x, kinks, self.stem_pool)
    block = BasicBlock if self.block == 'basic' else Bottleneck
    for i, size in enumerate(self.stage_sizes):
      for j in range(size):
        strides = 2 if i > 0 and j == 0 else 1
        x = block(self.width * 2**i, strides, layers)(x, kinks, train)
    return layers.dense(global_avg_pool(x), self.num_classes)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block='basic')
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block='basic')
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                             block='bottleneck')
