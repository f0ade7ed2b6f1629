"""DenseNet-BC (DenseNet121), with batch norm switchable to the identity."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxkink.kinks import Kinks
from jaxkink.models.layers import (POOLS, KinkedModule, Layers, check_choice,
                                   dropout, global_avg_pool)
from jaxkink.models.resnet import STEMS
from jaxkink.typing import Array


class DenseNet(KinkedModule):
  """torchvision's DenseNet-BC, for 32x32 or 224x224 inputs.

  Stem ``conv -> [BN] -> act -> max pool``; per dense layer
  ``[BN] -> act -> conv 1x1 (bn_size * growth) -> [BN] -> act -> conv 3x3
  (growth) -> [dropout]``, its output concatenated to its input; between
  blocks a transition ``[BN] -> act -> conv 1x1 (halving) -> avg pool 2x2/2``;
  then ``[BN] -> act ->`` global average pooling and a dense classifier.
  Convolutions have no bias.

  The "CIFAR variant" the TMLR paper uses (``ryanboustany/MaxPool-numerical``
  ``models/densenet.py``, taken from torchvision) is this network with 10
  classes on 32x32 inputs: it keeps the 7x7 stride-2 stem (``stem=
  'imagenet'``, the default) followed by a 2x2/2 max pool where torchvision
  has 3x3/2 padding 1 (``stem_pool='2x2s2'`` / ``'3x3s2'``). That reference
  forgets to pass its ``norm_layer`` and ``relu_fn`` to the dense blocks and
  transitions (they get the identity and a plain ReLU); here every batch
  norm follows ``batch_norm`` and every ReLU goes through the kinks.
  ``stem='cifar'`` gives a 3x3 stride-1 stem instead.

  Used in: TMLR MaxPool paper, DenseNet121 on CIFAR10 (appendix C.1, the
  learning-rate studies of its code).

  Attributes:
    growth_rate: channels each dense layer adds (k).
    block_config: dense layers per block; ``(6, 12, 24, 16)`` is
      DenseNet121.
    num_init_features: stem channels.
    bn_size: bottleneck width factor (bn_size * k channels).
    drop_rate: dropout rate after each dense layer.
    num_classes: output size.
    stem: ``'imagenet'`` (7x7 stride 2 pad 3) or ``'cifar'`` (3x3 stride 1).
    stem_pool: ``'3x3s2'``, ``'2x2s2'`` or ``'none'``.
    batch_norm: batch norm where DenseNet has it; False: the identity.
    (and the shared keyword-only options of :class:`KinkedModule`)
  """
  growth_rate: int = 32
  block_config: Sequence[int] = (6, 12, 24, 16)
  num_init_features: int = 64
  bn_size: int = 4
  drop_rate: float = 0.0
  num_classes: int = 10
  stem: str = 'imagenet'
  stem_pool: str = '3x3s2'

  def __post_init__(self):
    check_choice('stem', self.stem, STEMS)
    check_choice('stem_pool', self.stem_pool, tuple(POOLS))
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, kinks: Kinks, train: bool = False) -> Array:
    """Logits for NHWC images ``x``.

    Args:
      x: ``(batch, height, width, 3)``.
      kinks: the kink values (ReLU and the stem pool's ties; traced).
      train: batch norm in training mode (updates ``'batch_stats'``) and
        dropout on (rng ``'dropout'``).
    """
    ly = Layers.of(self)
    if self.stem == 'imagenet':
      x = ly.conv(x, self.num_init_features, 7, strides=2, padding=3,
                  use_bias=False)
    else:
      x = ly.conv(x, self.num_init_features, 3, padding=1, use_bias=False)
    x = ly.pool(ly.act(ly.norm(x, train), kinks), kinks, self.stem_pool)
    for i, num_layers in enumerate(self.block_config):
      for _ in range(num_layers):
        y = ly.act(ly.norm(x, train), kinks)
        y = ly.conv(y, self.bn_size * self.growth_rate, 1, use_bias=False)
        y = ly.act(ly.norm(y, train), kinks)
        y = ly.conv(y, self.growth_rate, 3, padding=1, use_bias=False)
        x = jnp.concatenate([x, dropout(y, self.drop_rate, train)], axis=-1)
      if i != len(self.block_config) - 1:
        y = ly.act(ly.norm(x, train), kinks)
        y = ly.conv(y, x.shape[-1] // 2, 1, use_bias=False)
        x = nn.avg_pool(y, (2, 2), (2, 2))
    x = ly.act(ly.norm(x, train), kinks)
    return ly.dense(global_avg_pool(x), self.num_classes)
