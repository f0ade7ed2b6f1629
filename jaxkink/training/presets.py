"""The papers' training settings, by name, at full and at reduced size.

Sources: the ReLU'(0) paper's Table 2 (batch 128, 200 epochs, SGD or Adam,
10 repetitions), its reference code ``deel-ai/relu-prime``
(``compute_best_lr.py``: SGD with momentum 0.9 and weight decay 5e-4, or
Adam; constant learning rate; ``data_utils.py``: CIFAR-10 random crop and
flip, MNIST normalised with mean 0.5 and std 0.5), and for the MaxPool sweep
the TMLR paper's Table 5 and ``ryanboustany/MaxPool-numerical``.

The reference code tuned the learning rate separately for every kink value
(optuna, ``results/best_learning_rates/.../best_lr.csv``). A sweep that only
varies the kink value needs one learning rate for all members, so the presets
take the reference's tuned value at ReLU'(0) = 0 (beta = 0) for every member
and say so; nothing here was tuned by us.

``reduced`` overrides make a preset run on 2 CPU cores in minutes: fewer
epochs and seeds, the CIFAR-10 sample (``cifar10_sample``: the first 4000
training images, the last 1000 held out as a test set), a narrower MLP.
"""

from __future__ import annotations

import dataclasses
from typing import Any

_SGD = dict(optimizer='sgd', momentum=0.9, weight_decay=5e-4,
            schedule='constant', batch_size=128, epochs=200, seeds=10)
_S_GRID = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
_S_GRID_MNIST = (-1.0, -0.6, -0.2, 0.0, 0.2, 0.6, 1.0)
_CIFAR = dict(model='vgg11', dataset='cifar10', augment=True)
_MNIST = dict(model='mlp_2048', dataset='mnist', augment=False)
_REDUCED_CIFAR = dict(dataset='cifar10_sample', epochs=2, seeds=2)
_REDUCED_MNIST = dict(model='mlp', widths=(512, 512, 512, 10), epochs=3,
                      seeds=3, kink_values=(0.0, 0.5, 1.0))


@dataclasses.dataclass(frozen=True)
class Preset:
  """A named setting.

  Attributes:
    name: how it is selected (``--preset=name``).
    source: the figure or table it reproduces.
    settings: flag values at full size.
    reduced: overrides for a run on a CPU (``--reduced``).
  """
  name: str
  source: str
  settings: dict[str, Any]
  reduced: dict[str, Any]

  def resolve(self, reduced: bool = False) -> dict[str, Any]:
    """The flag values, with the reduced overrides when asked."""
    return {**self.settings, **(self.reduced if reduced else {})}


def _p(name, source, reduced, **settings):
  return Preset(name, source, settings, reduced)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    _p('relu_vgg11_sgd', "ReLU'(0) Fig. 3 (no batch norm)", _REDUCED_CIFAR,
       **_SGD, **_CIFAR, lr=0.00776, batch_norm=False, kink_values=_S_GRID),
    _p('relu_vgg11_sgd_bn', "ReLU'(0) Fig. 3 and 9 (batch norm)",
       _REDUCED_CIFAR, **_SGD, **_CIFAR, lr=0.00369, batch_norm=True,
       kink_values=_S_GRID),
    _p('relu_vgg11_adam', "ReLU'(0) Fig. 4 and 10 (Adam)", _REDUCED_CIFAR,
       **{**_SGD, 'optimizer': 'adam', 'momentum': 0.0, 'weight_decay': 0.0},
       **_CIFAR, lr=0.00035, batch_norm=False,
       kink_values=(0.0, 2.0, 4.0, 6.0, 8.0, 10.0)),
    _p('relu_resnet18_sgd', "ReLU'(0) Fig. 11 (no batch norm)",
       _REDUCED_CIFAR, **_SGD, **{**_CIFAR, 'model': 'resnet18'},
       lr=0.01296, batch_norm=False, kink_values=_S_GRID),
    _p('relu_resnet18_sgd_bn', "ReLU'(0) Fig. 11 (batch norm)",
       _REDUCED_CIFAR, **_SGD, **{**_CIFAR, 'model': 'resnet18'},
       lr=0.01202, batch_norm=True, kink_values=_S_GRID),
    _p('relu_mlp_mnist', "ReLU'(0) appendix Fig. 7 (784-2048x3-10, SGD)",
       _REDUCED_MNIST, **_SGD, **_MNIST, lr=0.01526, batch_norm=False,
       kink_values=_S_GRID_MNIST),
    _p('relu_mlp_mnist_bn', "ReLU'(0) appendix Fig. 7 (batch norm)",
       _REDUCED_MNIST, **_SGD, **_MNIST, lr=0.00837, batch_norm=True,
       kink_values=_S_GRID_MNIST),
    _p('relu_mlp_mnist_dropout', "ReLU'(0) appendix Fig. 8 (dropout 0.2)",
       _REDUCED_MNIST, **_SGD, **_MNIST, lr=0.01526, batch_norm=False,
       dropout=0.2, kink_values=_S_GRID_MNIST),
    _p('relu_mlp_mnist_16', "ReLU'(0) MNIST sweep in 16 bits",
       _REDUCED_MNIST, **_SGD, **_MNIST, lr=0.01526, batch_norm=False,
       precision='float16', kink_values=_S_GRID_MNIST),
    _p('relu_mlp_mnist_64', "ReLU'(0) MNIST sweep in 64 bits",
       _REDUCED_MNIST, **_SGD, **_MNIST, lr=0.01526, batch_norm=False,
       precision='float64', kink_values=_S_GRID_MNIST),
    _p('tmlr_vgg11_beta', 'TMLR Fig. 5 (32 bits, no batch norm)',
       _REDUCED_CIFAR, **_SGD, **_CIFAR, lr=0.0382, batch_norm=False,
       kink_values=(0.0,), pool_betas=(0.0, 1.0, 10.0, 100.0, 1e3, 1e4)),
    _p('tmlr_vgg11_beta_bn', 'TMLR Fig. 5 (32 bits, batch norm)',
       _REDUCED_CIFAR, **_SGD, **_CIFAR, lr=0.00742, batch_norm=True,
       kink_values=(0.0,), pool_betas=(0.0, 1.0, 10.0, 100.0, 1e3, 1e4)),
    # Fig. 6: plain SGD, step size in [0.01, 0.012] (the middle here), one
    # initialisation, weight differences to beta = 0 per epoch.
    _p('tmlr_vgg11_beta_fig6', 'TMLR Fig. 6 (weight differences)',
       _REDUCED_CIFAR, **{**_SGD, 'momentum': 0.0, 'weight_decay': 0.0,
                          'seeds': 1},
       **_CIFAR, lr=0.011, batch_norm=False, kink_values=(0.0,),
       pool_betas=(0.0, 1.0, 10.0, 100.0, 1e3, 1e4)),
)}


def get_preset(name: str) -> Preset:
  """The preset of this name.

  Raises:
    ValueError: for an unknown name (listing the valid ones).
  """
  if name not in PRESETS:
    raise ValueError(f'unknown preset {name!r}; valid: '
                     f'{", ".join(sorted(PRESETS))}')
  return PRESETS[name]
