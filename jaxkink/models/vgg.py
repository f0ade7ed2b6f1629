"""VGG 11/13/16/19, CIFAR variant."""

from __future__ import annotations

from typing import Sequence, Union

import flax.linen as nn

from jaxkink.kinks import Kinks
from jaxkink.models.layers import KinkedModule, Layers, flatten
from jaxkink.typing import Array

# torchvision's convolution stacks (``cfgs`` 'A', 'B', 'D', 'E'): an integer
# is a 3x3 padding-1 convolution with that many filters, 'M' a 2x2/2 max pool.
CONFIGS: dict[str, tuple[Union[int, str], ...]] = {
    'vgg11': (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'),
    'vgg13': (64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M', 512,
              512, 'M'),
    'vgg16': (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512,
              'M', 512, 512, 512, 'M'),
    'vgg19': (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512,
              512, 512, 'M', 512, 512, 512, 512, 'M'),
}


class VGG(KinkedModule):
  """VGG for 32x32 inputs: torchvision's conv stack, one linear classifier.

  ``conv 3x3 pad 1 -> [BN] -> act`` per integer of ``config``, a 2x2/2 max
  pool per ``'M'``, then a flatten and a single dense layer (512 -> 10 on
  CIFAR's 32x32 inputs, where five pools leave 1x1x512). This is
  ``kuangliu/pytorch-cifar``'s adaptation that both papers use
  (``deel-ai/relu-prime`` ``vgg.py``, ``ryanboustany/MaxPool-numerical``
  ``models/vgg.py``; their trailing ``AvgPool2d(1, 1)`` is the identity).
  With ``batch_norm`` a batch norm follows each convolution.

  Used in: NeurIPS 2021 ReLU'(0) paper, VGG11 training on CIFAR10 and SVHN,
  Fig. 3, 4, 9, 10 (appendix D.3), volume Fig. 5; TMLR MaxPool paper,
  VGG11 volume Table 2 and Fig. 4 (VGG11/13/16/19, batch sizes, batch norm),
  thresholds Table 4, training with beta Fig. 5, 6, 11.

  Attributes:
    config: a ``CONFIGS`` name or a sequence of widths and ``'M'``.
    num_classes: output size.
    batch_norm: batch norm after each convolution.
    (and the shared keyword-only options of :class:`KinkedModule`)
  """
  config: Union[str, Sequence[Union[int, str]]] = 'vgg11'
  num_classes: int = 10

  def __post_init__(self):
    self.stack()
    super().__post_init__()

  def stack(self) -> tuple[Union[int, str], ...]:
    """The resolved configuration (widths and ``'M'``)."""
    if isinstance(self.config, str):
      if self.config not in CONFIGS:
        raise ValueError(f'unknown VGG config {self.config!r}; valid: '
                         f'{", ".join(CONFIGS)} or a sequence of ints and "M"')
      return CONFIGS[self.config]
    stack = tuple(self.config)
    for item in stack:
      if item != 'M' and not (isinstance(item, int) and item > 0):
        raise ValueError(f'VGG config entries are positive ints or "M", got '
                         f'{item!r}')
    return stack

  @nn.compact
  def __call__(self, x: Array, kinks: Kinks, train: bool = False) -> Array:
    """Logits for NHWC images ``x`` (32x32x3 for CIFAR10 / SVHN).

    Args:
      x: ``(batch, height, width, channels)``.
      kinks: the kink values (ReLU and MaxPool ties; traced).
      train: batch norm in training mode (updates ``'batch_stats'``).
    """
    layers = Layers.of(self)
    for item in self.stack():
      if isinstance(item, str):  # 'M' (stack() checks)
        x = kinks.max_pool(x, (2, 2), (2, 2))
      else:
        x = layers.conv(x, item, 3, padding=1)
        x = layers.act(layers.norm(x, train), kinks)
    return layers.dense(flatten(x), self.num_classes)
