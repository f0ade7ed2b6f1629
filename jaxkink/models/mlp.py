"""Fully connected networks of any depth and width (MNIST)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn

from jaxkink.kinks import Kinks
from jaxkink.models.layers import KinkedModule, Layers, dropout, flatten
from jaxkink.typing import Array


class MLP(KinkedModule):
  """Dense layers with a kinked activation between them.

  Each hidden layer is ``Dense -> [BatchNorm] -> activation -> [Dropout]``
  (the order of ``deel-ai/relu-prime``'s ``train_mnist.py``), the last layer
  is a plain ``Dense``. Inputs are flattened past the batch axis, so
  ``(B, 28, 28, 1)`` and ``(B, 784)`` both work.

  Used in (NeurIPS 2021 ReLU'(0) paper unless said otherwise):
    - 784-256-256-256-10: Monte Carlo volume of S01, Table 1; with
      ``relu_after_first=False`` it is the reference notebook's network
      (``notebooks/MNIST_volume_estimation.ipynb``: no ReLU after the first
      linear layer; registry name ``'mlp_reference'``).
    - 784-2000-128-10: the bifurcation experiment, Fig. 1 (in 64 bits: Fig. 7
      of the appendix document); 784-4000-256-10 with ReLU6: Fig. 8 of the
      appendix document (registry name ``'mlp_relu6'``).
    - 784-2048-2048-2048-10: training sweeps on MNIST, appendix D.2 of the
      main document, Fig. 7, with dropout Fig. 8 (``'mlp_2048'``).
    - 256 x depth (1 to 6 hidden layers) and width sweeps (16 to 1024):
      ``notebooks/volume_estimation_by_architecture.ipynb``.
    - ReLU / ReLU6 / LeakyReLU, 3 hidden layers of 200: the EPFL
      reproducibility report.

  Attributes:
    widths: output size of each dense layer, the last one being the number
      of classes, e.g. ``(256, 256, 256, 10)``; the input size is inferred.
    dropout: dropout rate after each hidden activation (0: none).
    batch_norm: batch norm after each hidden dense layer (before the
      activation); False makes it the identity.
    relu_after_first: False leaves the first hidden layer without activation
      (dropout and batch norm still apply), as the reference notebook does.
    (and the shared keyword-only options of :class:`KinkedModule`)
  """
  widths: Sequence[int] = (256, 256, 256, 10)
  dropout: float = 0.0
  relu_after_first: bool = True

  def __post_init__(self):
    if not self.widths:
      raise ValueError('MLP needs at least one width (the output layer)')
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, kinks: Kinks, train: bool = False) -> Array:
    """Logits for a batch ``x``.

    Args:
      x: inputs, ``(batch, ...)``.
      kinks: the kink values (traced; vmappable).
      train: batch statistics and dropout on (rng ``'dropout'``), updating
        ``'batch_stats'``.

    Returns:
      ``(batch, widths[-1])`` logits.
    """
    layers = Layers.of(self)
    x = flatten(x)
    for i, width in enumerate(self.widths[:-1]):
      x = layers.dense(x, width)
      x = layers.norm(x, train)
      if i > 0 or self.relu_after_first:
        x = layers.act(x, kinks)
      x = dropout(x, self.dropout, train)
    return layers.dense(x, self.widths[-1])
