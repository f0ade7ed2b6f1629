"""tensorflow-datasets as an optional source (``source='tfds'``).

Needs the ``tfds`` extra (``pip install 'jaxkink[tfds]'``), which installs
``tensorflow-datasets``; tensorflow-datasets in turn needs TensorFlow (or,
for some builders, only ``array_record``) to read its files. Nothing is
downloaded: the data must already be prepared in a tensorflow-datasets data
directory (``tfds build mnist --data_dir=...`` or
``tfds.builder(name, data_dir=...).download_and_prepare()`` on a machine with
internet access, then copied). The directory is ``data_dir`` if given, else
``$JAXKINK_DATA_DIR``, else tensorflow-datasets' own default
(``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

Names used: ``mnist``, ``fashion_mnist``, ``cifar10``, ``svhn_cropped``
(whose labels are already 0..9).
"""

from __future__ import annotations

import numpy as np

from jaxkink.data import info as info_lib
from jaxkink.data.errors import DataError


def read_tfds(info: info_lib.DatasetInfo, split: str, data_dir: str | None
              ) -> tuple[np.ndarray, np.ndarray, str]:
  """Reads a whole split from a prepared tensorflow-datasets directory.

  Returns:
    ``(images, labels, description)``: NHWC uint8, int32, and the source.

  Raises:
    DataError: if tensorflow-datasets is not installed, the split is not
      prepared in the directory, or what it returns has the wrong shape.
  """
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(
        "data source 'tfds' needs tensorflow-datasets (and TensorFlow): pip "
        "install 'jaxkink[tfds]'; or use the native files (source 'native')"
    ) from e
  where = data_dir or 'the tensorflow-datasets default directory'
  try:
    images, labels = tfds.as_numpy(tfds.load(
        info.tfds_name, split=split, data_dir=data_dir, download=False,
        batch_size=-1, as_supervised=True))
  except Exception as e:  # pylint: disable=broad-except
    # tfds raises many types (AssertionError, DatasetNotFoundError, ...).
    raise DataError(
        f'tensorflow-datasets could not load {info.tfds_name}:{split} from '
        f'{where} (download=False: it must be prepared there beforehand): '
        f'{type(e).__name__}: {e}') from e
  images, labels = np.asarray(images), np.asarray(labels)
  if (images.dtype != np.uint8 or images.ndim != 4
      or images.shape[1:] != info.image_shape):
    shape = ', '.join(map(str, info.image_shape))
    raise DataError(f'tensorflow-datasets {info.tfds_name}:{split}: expected '
                    f'uint8 images of shape (N, {shape}), found '
                    f'{images.dtype} {images.shape}')
  if labels.shape != (len(images),):
    raise DataError(f'tensorflow-datasets {info.tfds_name}:{split}: '
                    f'{len(images)} images but labels of shape {labels.shape}')
  info_lib.check_labels(labels, info.num_classes,
                        f'tensorflow-datasets {info.tfds_name}:{split}')
  return images, labels.astype(np.int32), (
      f'tfds: {info.tfds_name}:{split} from {where}')
