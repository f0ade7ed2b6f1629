r"""Regenerates ``jaxkink/data/mnist_sample.npz`` from the MNIST files.

The sample is the first 2000 digits of MNIST's training file and the first
1000 of its test file, unchanged, with their labels and an ``about`` entry
giving the source and license (``jaxkink/data/sample.py``, which holds the
code: ``build_sample``). The output is deterministic: regenerating it from
the official files gives the same bytes (a test checks this when the files
are present).

Run from the repository root::

  python tools/make_data_sample.py --mnist_dir=../shared/data/mnist

``--sample_out`` defaults to the file inside the package.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags

from jaxkink.data import sample

_MNIST_DIR = flags.DEFINE_string(
    'mnist_dir', None, 'Directory holding the four MNIST IDX files.')
_SAMPLE_OUT = flags.DEFINE_string(
    'sample_out', os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), 'jaxkink', 'data', sample.FILE_NAME),
    'Where to write the sample.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _MNIST_DIR.value:
    raise app.UsageError('--mnist_dir is required')
  data = sample.build_sample(_MNIST_DIR.value)
  with open(_SAMPLE_OUT.value, 'wb') as f:
    f.write(data)
  print(f'wrote {_SAMPLE_OUT.value} ({len(data)} bytes)')


if __name__ == '__main__':
  app.run(main)
