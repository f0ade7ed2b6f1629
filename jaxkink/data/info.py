"""What each dataset is: shapes, classes, splits and normalisation constants.

The normalisation constants are the ones the reference PyTorch code applies
after ``transforms.ToTensor()`` (which scales to [0, 1]):

* MNIST and Fashion-MNIST: mean 0.5, std 0.5 (``get_mnist_loaders`` and
  ``get_fashion_mnist_loaders`` in ``data_utils.py`` of
  ``deel-ai/relu-prime`` and ``ryanboustany/MaxPool-numerical``). Note that
  the volume-estimation notebooks of ``deel-ai/relu-prime``
  (``notebooks/MNIST_volume_estimation.ipynb``) use ``ToTensor()`` alone,
  that is [0, 1] without normalisation: pass ``normalize=False``.
* CIFAR-10: mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010)
  (``get_cifar10_*_loader`` in both repositories' ``data_utils.py``). These
  std values are the widely copied ones from ``kuangliu/pytorch-cifar``, not
  the dataset's per-pixel std (about 0.247, 0.243, 0.261); they are kept as
  the papers used them.
* SVHN: mean 0.5, std 0.5 per channel (``get_svhn_loaders``, both
  repositories). The reference code trains on SVHN's ``extra`` split
  (``split='extra'``) and tests on ``test``.
* ImageNet (tensorflow-datasets only): mean (0.485, 0.456, 0.406), std
  (0.229, 0.224, 0.225) (``train_imagenet.py``, both repositories); listed
  for completeness, no ImageNet loader is provided.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxkink.data.errors import DataError

MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                         'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                   'frog', 'horse', 'ship', 'truck')

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static facts about a dataset.

  Attributes:
    name: the name it is loaded by.
    image_shape: (height, width, channels) of one image.
    num_classes: number of labels; labels are ``0 .. num_classes - 1``.
    class_names: the label names, in label order.
    splits: the splits it has.
    mean: per-channel mean subtracted after scaling to [0, 1].
    std: per-channel std divided by after subtracting the mean.
    tfds_name: its name in tensorflow-datasets.
  """
  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  class_names: tuple[str, ...]
  splits: tuple[str, ...]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  tfds_name: str


DATASETS: dict[str, DatasetInfo] = {i.name: i for i in (
    DatasetInfo('mnist', (28, 28, 1), 10, MNIST_CLASSES, ('train', 'test'),
                (0.5,), (0.5,), 'mnist'),
    DatasetInfo('fashion_mnist', (28, 28, 1), 10, FASHION_MNIST_CLASSES,
                ('train', 'test'), (0.5,), (0.5,), 'fashion_mnist'),
    DatasetInfo('cifar10', (32, 32, 3), 10, CIFAR10_CLASSES, ('train', 'test'),
                (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
                'cifar10'),
    DatasetInfo('svhn', (32, 32, 3), 10, MNIST_CLASSES,
                ('train', 'test', 'extra'), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
                'svhn_cropped'),
)}

_ALIASES = {'fashion-mnist': 'fashion_mnist', 'fmnist': 'fashion_mnist',
            'cifar-10': 'cifar10', 'cifar_10': 'cifar10',
            'svhn_cropped': 'svhn'}


def get_info(name: str) -> DatasetInfo:
  """The :class:`DatasetInfo` of a dataset name (case-insensitive).

  Raises:
    DataError: for an unknown name (the message lists the known ones).
  """
  key = str(name).strip().lower()
  key = _ALIASES.get(key, key)
  if key not in DATASETS:
    raise DataError(f'unknown dataset {name!r}; known: '
                    f'{", ".join(DATASETS)}')
  return DATASETS[key]


def check_split(info: DatasetInfo, split: str) -> str:
  """``split`` if ``info`` has it; raises :class:`DataError` otherwise."""
  if split not in info.splits:
    raise DataError(f'{info.name} has no split {split!r}; its splits: '
                    f'{", ".join(info.splits)}')
  return split


def check_labels(labels: np.ndarray, num_classes: int, name: str) -> None:
  """Raises :class:`DataError` unless every label is in ``0..num_classes-1``."""
  bad = (labels < 0) | (labels >= num_classes)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise DataError(f'{name}: label {labels[i]} at index {i} is outside '
                    f'0..{num_classes - 1}')
