"""Datasets from their native files, a bundled sample, preprocessing, batches.

``load(name, split, data_dir=..., source=...)`` reads a whole split into host
memory as NHWC uint8 images and int32 labels: MNIST / Fashion-MNIST (IDX,
gzipped or not), CIFAR-10 (python batches, or the archive), SVHN (``.mat``),
or tensorflow-datasets as an option. With no data directory configured,
MNIST comes from a 3000-digit sample bundled with the package, and a warning
says so. :func:`preprocess` and :func:`random_crop_flip` reproduce the
reference code's transforms in JAX; :func:`batches` yields fixed-size device
batches in a seeded order. Every bad or missing file raises
:class:`DataError` with a message that names it.

Only the names below are public API.
"""

from jaxkink.data.batching import Batch
from jaxkink.data.batching import batches
from jaxkink.data.batching import epoch_order
from jaxkink.data.batching import num_batches
from jaxkink.data.cifar import safe_loads
from jaxkink.data.cifar_sample import read_cifar10_sample
from jaxkink.data.datasets import Dataset
from jaxkink.data.datasets import ORDERS
from jaxkink.data.datasets import SOURCES
from jaxkink.data.datasets import load
from jaxkink.data.datasets import requested
from jaxkink.data.errors import DataError
from jaxkink.data.files import ENV_VAR
from jaxkink.data.files import resolve_data_dir
from jaxkink.data.idx import read_idx
from jaxkink.data.info import DATASETS
from jaxkink.data.info import DatasetInfo
from jaxkink.data.info import get_info
from jaxkink.data.preprocess import pixel_table
from jaxkink.data.preprocess import preprocess
from jaxkink.data.preprocess import random_crop_flip
from jaxkink.data.svhn import read_svhn_mat

__all__ = (
    'Batch',
    'DATASETS',
    'DataError',
    'Dataset',
    'DatasetInfo',
    'ENV_VAR',
    'ORDERS',
    'SOURCES',
    'batches',
    'epoch_order',
    'get_info',
    'load',
    'num_batches',
    'pixel_table',
    'preprocess',
    'random_crop_flip',
    'read_cifar10_sample',
    'read_idx',
    'read_svhn_mat',
    'requested',
    'resolve_data_dir',
    'safe_loads',
)
