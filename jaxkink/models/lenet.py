"""LeNet-5 for MNIST, with max pooling."""

from __future__ import annotations

import flax.linen as nn

from jaxkink.kinks import Kinks
from jaxkink.models.layers import KinkedModule, Layers, flatten
from jaxkink.typing import Array


class LeNet5(KinkedModule):
  """LeNet-5 as in the TMLR MaxPool paper's code.

  ``ryanboustany/MaxPool-numerical``, ``models/lenet.py`` (after
  ``ChawDoe/LeNet5-MNIST-PyTorch``), on 28x28x1 inputs::

    conv 5x5 1->6 (valid) -> act -> maxpool 2x2/2 -> [BN]
    conv 5x5 6->16 (valid) -> act -> maxpool 2x2/2 -> [BN]
    flatten (16*4*4) -> dense 120 -> act -> [BN]
    dense 84 -> act -> [BN] -> dense num_classes

  Batch norm comes after the pooling / activation, as in that code. The
  flatten is NHWC (height, width, channel), PyTorch's is channel-first: the
  same layer sizes, a permuted first dense kernel.

  Used in the TMLR MaxPool paper: backprop variation histograms, Fig. 1, 2,
  3 and 10; thresholds, Table 4; training with beta, Fig. 12 (appendix C.3).

  Attributes:
    num_classes: output size.
    batch_norm: batch norm after each pooling and hidden dense layer.
    (and the shared keyword-only options of :class:`KinkedModule`)
  """
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: Array, kinks: Kinks, train: bool = False) -> Array:
    """Logits for NHWC images ``x`` (28x28x1 for MNIST).

    Args:
      x: ``(batch, height, width, channels)``.
      kinks: the kink values (ReLU and MaxPool ties; traced).
      train: batch norm in training mode (updates ``'batch_stats'``).
    """
    layers = Layers.of(self)
    for features in (6, 16):
      x = layers.conv(x, features, 5)
      x = layers.act(x, kinks)
      x = kinks.max_pool(x, (2, 2), (2, 2))
      x = layers.norm(x, train)
    x = flatten(x)
    for features in (120, 84):
      x = layers.act(layers.dense(x, features), kinks)
      x = layers.norm(x, train)
    return layers.dense(x, self.num_classes)
