r"""Speed of the data layer: loading, preprocessing, batching, augmentation.

Cases (median wall time of ``--repeats`` runs after one warm-up run):

* ``load mnist (gz)``: ``jaxkink.data.load('mnist', split)`` for train and
  test, from the four gzipped IDX files: all 70000 digits into host memory,
  checked. Its baseline is the bare minimum, ``gzip.decompress`` plus
  ``np.frombuffer`` of the same files, so the ratio is the cost of the
  checks and the search for files. The target (issue 5) is well under 2 s.
* ``load mnist train (tfds array_record)``: ``jaxkink.data.load('mnist',
  'train', source='tfds')`` from ``--tfds_dir`` (default
  ``<data_dir>/tfds/array_record``), stored and native order: the records
  read in batches through ``tfds.data_source``, the PNGs decoded a batch at a
  time. Its baseline is tensorflow-datasets' own decoding of the same split
  as one ``__getitems__`` call (one timed run); item by item
  (``src[i]``) is slower still. The target (issue 18) is under 3 s. Skipped
  when tensorflow-datasets or the directory is missing.
* ``preprocess mnist train``: the 60000 training digits to normalised
  float32 on the default device, jitted (``block_until_ready``).
* ``epoch of batches``: one shuffled epoch of the MNIST training set in
  batches of ``--batch_size``, as device arrays (the last one waited for).
* ``crop+flip+preprocess``: one jitted CIFAR training input step on a batch
  of ``--batch_size`` 32x32x3 images.

Run::

  python benchmarks/data.py --data_dir=../shared/data

``--data_dir`` defaults to ``$JAXKINK_DATA_DIR``, else ``../shared/data``.
``--out`` writes the table and the environment as JSON.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import statistics
import time
from typing import Callable, Sequence

from absl import app
from absl import flags
import jax
import numpy as np

from jaxkink import cli
from jaxkink import data
from jaxkink import rundir

_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'Directory with mnist/ (default: $JAXKINK_DATA_DIR, '
    'else ../shared/data).')
_TFDS_DIR = flags.DEFINE_string(
    'tfds_dir', None, 'tensorflow-datasets data directory holding mnist/ in '
    'array_record format (default: <data_dir>/tfds/array_record).')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed runs after a warm-up.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 128, 'Batch size.')
_OUT = flags.DEFINE_string('out', None, 'Optional JSON path for the results.')
cli.check_positive(['repeats', 'batch_size'])
cli.check_output_file('out')


def timed(fn: Callable[[], object], repeats: int) -> float:
  """Median seconds of ``repeats`` calls of ``fn``, after one warm-up."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


MNIST_STEMS = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
               't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')


def bare_mnist(directory: str) -> None:
  for stem in MNIST_STEMS:
    with open(os.path.join(directory, 'mnist', stem + '.gz'), 'rb') as f:
      raw = gzip.decompress(f.read())
    np.frombuffer(raw, np.uint8, offset=16 if 'images' in stem else 8)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  directory = (_DATA_DIR.value or os.environ.get(data.ENV_VAR) or
               os.path.join(os.path.dirname(os.path.abspath(__file__)), '..',
                            '..', 'shared', 'data'))
  repeats, batch_size = _REPEATS.value, _BATCH_SIZE.value
  rows = []

  def load_all():
    return [data.load('mnist', s, data_dir=directory)
            for s in ('train', 'test')]

  train = load_all()[0]  # a DataError (missing, malformed) ends the run here
  missing = [stem + '.gz' for stem in MNIST_STEMS if not os.path.isfile(
      os.path.join(directory, 'mnist', stem + '.gz'))]
  if missing:
    raise cli.UsageValueError(
        f'--data_dir={directory!r}: the baseline reads the gzipped IDX files, '
        f'missing: {", ".join(missing)}')
  if batch_size > len(train):
    raise cli.UsageValueError(f'--batch_size={batch_size} is larger than the '
                              f'{len(train)} training digits')
  t_load = timed(load_all, repeats)
  t_bare = timed(lambda: bare_mnist(directory), repeats)
  rows.append(('load mnist (gz), 70000 digits', t_load, t_bare))

  tfds_dir = _TFDS_DIR.value or os.path.join(directory, 'tfds',
                                             'array_record')
  if (importlib.util.find_spec('tensorflow_datasets') is not None
      and os.path.isdir(os.path.join(tfds_dir, 'mnist'))):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    def tfds_own():
      src = tfds.data_source('mnist', split='train', data_dir=tfds_dir)
      return src.__getitems__(list(range(len(src))))

    for order in data.ORDERS:
      t_tfds = timed(lambda o=order: data.load(
          'mnist', 'train', data_dir=tfds_dir, source='tfds', order=o),
                     repeats)
      rows.append((f'load mnist train (tfds array_record, {order} order), '
                   '60000 digits', t_tfds,
                   timed(tfds_own, 1) if order == 'stored' else None))
  else:
    print(f'(tfds cases skipped: no tensorflow-datasets or no {tfds_dir}/'
          'mnist)')

  prep = jax.jit(lambda x: data.preprocess(x, 'mnist', flatten=True))
  t_prep = timed(lambda: prep(train.images).block_until_ready(), repeats)
  rows.append(('preprocess mnist train (device, jit)', t_prep, None))

  def epoch():
    batch = None
    for batch in data.batches(train.images, train.labels, batch_size,
                              key=0, epoch=1):
      pass
    jax.block_until_ready(batch)

  t_epoch = timed(epoch, repeats)
  rows.append((f'epoch of batches of {batch_size} '
               f'({data.num_batches(len(train), batch_size)} batches)',
               t_epoch, None))

  images = np.random.default_rng(0).integers(0, 256, (batch_size, 32, 32, 3),
                                             np.uint8)
  step = jax.jit(lambda k, x: data.preprocess(
      data.random_crop_flip(k, x), 'cifar10'))
  key = jax.random.key(0)
  t_aug = timed(lambda: step(key, images).block_until_ready(), repeats * 4)
  rows.append((f'crop+flip+preprocess, {batch_size}x32x32x3 (jit)', t_aug,
               None))

  table = ['| case | median s | baseline s | ratio |', '|---|---|---|---|']
  for name, t, base in rows:
    table.append(f'| {name} | {t:.4f} | '
                 f'{"" if base is None else f"{base:.4f}"} | '
                 f'{"" if base is None else f"{t / base:.2f}"} |')
  print('\n'.join(table))
  print(f'(backend {jax.default_backend()}, {repeats} repeats, data from '
        f'{os.path.abspath(directory)})')
  if _OUT.value:
    rundir.write_json(_OUT.value, {
        'rows': [{'case': n, 'median_s': t, 'baseline_s': b}
                 for n, t, b in rows],
        'environment': rundir.environment()})


if __name__ == '__main__':
  app.run(cli.main(main))
