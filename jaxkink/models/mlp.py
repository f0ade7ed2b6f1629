"""Fully connected networks of any depth and width (MNIST)."""

from __future__ import annotations

from typing import Any, Sequence

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
    torch_order: empty (the default): every dense layer is flax's
      ``nn.Dense``, XLA's one FMA chain then ``+ b``. Otherwise the K-block
      size of PyTorch's CPU ``addmm`` per fan-in, as ``'K:kc'`` strings or
      ``(K, kc)`` pairs, e.g. ``('784:192', '256:128')`` (registry name
      ``'mlp_reference_torch'``): each hidden dense layer is then summed in
      PyTorch's order, bias first (:func:`~jaxkink.models.layers.
      bias_first_dense`), with the same parameters, so the same thetas. The
      output layer stays ``nn.Dense`` (for 10 outputs PyTorch adds the bias
      after the product, in an order not identified; no kink reads it). A
      hidden fan-in missing from the list is an error.
    (and the shared keyword-only options of :class:`KinkedModule`)
  """
  widths: Sequence[int] = (256, 256, 256, 10)
  dropout: float = 0.0
  relu_after_first: bool = True
  torch_order: Sequence[Any] = ()

  def __post_init__(self):
    if not self.widths:
      raise ValueError('MLP needs at least one width (the output layer)')
    torch_blocks(self.torch_order)  # checks the entries early
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
    blocks = torch_blocks(self.torch_order)
    for i, width in enumerate(self.widths[:-1]):
      if blocks:
        if x.shape[-1] not in blocks:
          raise ValueError(
              f'torch_order={tuple(self.torch_order)!r} has no block size '
              f'for the fan-in {x.shape[-1]} of hidden layer {i}')
        x = layers.dense(x, width, block=blocks[x.shape[-1]],
                         name=f'Dense_{i}')
      else:
        x = layers.dense(x, width)
      x = layers.norm(x, train)
      if i > 0 or self.relu_after_first:
        x = layers.act(x, kinks)
      x = dropout(x, self.dropout, train)
    last = f'Dense_{len(self.widths) - 1}' if blocks else None
    return layers.dense(x, self.widths[-1], name=last)


def torch_blocks(torch_order: Sequence[Any]) -> dict[int, int]:
  """``('784:192', (256, 128))`` -> ``{784: 192, 256: 128}``, checked.

  Raises:
    ValueError: for an entry that is not ``'K:kc'`` or ``(K, kc)`` with
      positive integers, or a fan-in given twice.
  """
  out: dict[int, int] = {}
  for entry in torch_order:
    pair = str(entry).split(':') if isinstance(entry, str) else entry
    try:
      k, kc = (int(v) for v in pair)
    except (TypeError, ValueError):
      k = kc = 0
    if k < 1 or kc < 1 or k in out:
      raise ValueError(f'torch_order entry {entry!r}: expected K:kc with '
                       'positive integers, each fan-in K once, e.g. 784:192')
    out[k] = kc
  return out
