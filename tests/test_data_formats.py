"""Native formats read back exactly, in every layout; the real files match."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxkink import data
from jaxkink.data import cifar
from jaxkink.data import idx
from jaxkink.data import sample
from test_data_writers import idx_bytes
from test_data_writers import py2_pickle
from test_data_writers import cifar_batch
from test_data_writers import cifar_splits
from test_data_writers import mat_bytes
from test_data_writers import svhn_arrays
from test_data_writers import write_cifar_archive
from test_data_writers import write_cifar_dir
from test_data_writers import write_file
from test_data_writers import write_mnist
from test_data_writers import write_svhn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Read before the autouse fixture below clears the variable for each test.
_REAL_DATA_DIR = os.environ.get(data.ENV_VAR) or os.path.join(
    ROOT, '..', 'shared', 'data')


def real_data_dir() -> str | None:
  """``$JAXKINK_DATA_DIR``, else ``<repo>/../shared/data``, if it exists."""
  return _REAL_DATA_DIR if os.path.isdir(_REAL_DATA_DIR) else None


def need_real(*parts: str) -> str:
  d = real_data_dir()
  path = os.path.join(d, *parts) if d else None
  if path is None or not os.path.exists(path):
    pytest.skip(f'real data not present: no {os.path.join(*parts)} in '
                f'{_REAL_DATA_DIR} (${data.ENV_VAR}, else ../shared/data)')
  return path


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
  monkeypatch.delenv(data.ENV_VAR, raising=False)


def mnist_like(rng, n):
  return (rng.integers(0, 256, (n, 28, 28), np.uint8),
          rng.integers(0, 10, n).astype(np.uint8))


# ------------------------------------------------------------------ IDX


@pytest.mark.parametrize('gz', [True, False])
@pytest.mark.parametrize('dtype, shape', [
    ('u1', (5, 28, 28)), ('u1', (7,)), ('i1', (3, 2)), ('>i2', (2, 3, 4)),
    ('>i4', (6,)), ('>f4', (2, 2)), ('>f8', (1, 1, 1, 3))])
def test_idx_round_trip(tmp_path, rng, gz, dtype, shape):
  array = (rng.standard_normal(shape) * 100).astype(dtype)
  path = write_file(tmp_path / 'a.idx', idx_bytes(array), gz)
  out = idx.read_idx(path)
  assert out.shape == shape and out.dtype == np.dtype(dtype).newbyteorder('=')
  np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize('layout, gz, dotted', [
    ('', True, False), ('', False, False), ('MNIST/raw', True, False),
    ('mnist', False, False), ('mnist', True, True)])
def test_mnist_layouts(tmp_path, rng, layout, gz, dotted):
  splits = {s: mnist_like(rng, n) for s, n in (('train', 6), ('test', 4))}
  directory = tmp_path / layout
  for split, (images, labels) in splits.items():
    write_mnist(directory, split, images, labels, gz)
  if dotted:  # train-images.idx3-ubyte.gz, as some mirrors name them
    for name in os.listdir(directory):
      os.rename(directory / name, directory / name.replace('-idx', '.idx'))
  for split, (images, labels) in splits.items():
    ds = data.load('mnist', split, data_dir=tmp_path)
    assert ds.images.shape == (len(images), 28, 28, 1)
    np.testing.assert_array_equal(ds.images[..., 0], images)
    assert ds.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.source.startswith(str(directory).rstrip('/'))


def test_fashion_mnist_prefers_its_own_directory(tmp_path, rng):
  digits, clothes = mnist_like(rng, 3), mnist_like(rng, 3)
  write_mnist(tmp_path, 'test', *digits)  # flat: taken for either dataset
  write_mnist(tmp_path / 'FashionMNIST' / 'raw', 'test', *clothes)
  np.testing.assert_array_equal(
      data.load('fashion_mnist', 'test', data_dir=tmp_path).images[..., 0],
      clothes[0])
  np.testing.assert_array_equal(
      data.load('mnist', 'test', data_dir=tmp_path).images[..., 0], digits[0])
  assert data.load('fmnist', 'test', data_dir=tmp_path).name == (
      'fashion_mnist')


# ------------------------------------------------------------------ CIFAR-10


def expected_cifar(batches, split):
  names = cifar.TRAIN_BATCHES if split == 'train' else cifar.TEST_BATCHES
  return (np.concatenate([batches[n][0] for n in names]),
          np.concatenate([batches[n][1] for n in names]))


@pytest.mark.parametrize('layout', ['cifar-10-batches-py',
                                    'cifar10/cifar-10-batches-py', ''])
def test_cifar10_batch_directory(tmp_path, rng, layout):
  batches = cifar_splits(rng)
  write_cifar_dir(tmp_path / layout, batches)
  for split in ('train', 'test'):
    ds = data.load('cifar10', split, data_dir=tmp_path)
    images, labels = expected_cifar(batches, split)
    assert ds.images.shape == (len(images), 32, 32, 3)
    assert ds.images.flags.c_contiguous
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels)


def test_cifar10_channel_order(tmp_path):
  # data rows are the R plane, then G, then B, each row-major.
  row = np.concatenate([np.full(1024, 10), np.full(1024, 20),
                        np.full(1024, 30)]).astype(np.uint8)
  row[1024 + 32 * 2 + 5] = 99  # green, h=2, w=5
  batch = {'data': row[None], 'labels': [3]}
  images, _ = cifar.parse_batch(py2_pickle(batch))
  assert images.shape == (1, 32, 32, 3)
  np.testing.assert_array_equal(images[0, 0, 0], [10, 20, 30])
  assert images[0, 2, 5, 1] == 99 and images[0, 5, 2, 1] == 20


@pytest.mark.parametrize('where', ['', 'cifar10'])
def test_cifar10_archive(tmp_path, rng, where):
  batches = cifar_splits(rng)
  members = {n: py2_pickle(cifar_batch(*batches[n])) for n in batches}
  members['batches.meta'] = py2_pickle({'label_names': ['airplane']})
  path = write_cifar_archive(tmp_path / where / cifar.ARCHIVE, members)
  for split in ('train', 'test'):
    ds = data.load('cifar10', split, data_dir=tmp_path)
    images, labels = expected_cifar(batches, split)
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.source == path


def test_cifar10_directory_wins_over_archive(tmp_path, rng):
  batches, other = cifar_splits(rng), cifar_splits(rng)
  write_cifar_dir(tmp_path / cifar.BATCH_DIR, batches)
  write_cifar_archive(tmp_path / cifar.ARCHIVE, {
      n: py2_pickle(cifar_batch(*other[n])) for n in other})
  np.testing.assert_array_equal(
      data.load('cifar10', 'test', data_dir=tmp_path).images,
      batches['test_batch'][0])


@pytest.mark.parametrize('protocol', [3, 4])
def test_cifar10_python3_pickles(rng, protocol):
  # A batch re-saved from Python 3 with bytes keys, as pickle.load(...,
  # encoding='bytes') returns them.
  images = rng.integers(0, 256, (2, 32, 32, 3), np.uint8)
  batch = {k.encode(): v for k, v in cifar_batch(images, [4, 5]).items()}
  import pickle  # pylint: disable=g-import-not-at-top
  out, labels = cifar.parse_batch(pickle.dumps(batch, protocol=protocol))
  np.testing.assert_array_equal(out, images)
  np.testing.assert_array_equal(labels, [4, 5])


# ------------------------------------------------------------------ SVHN


@pytest.mark.parametrize('compress', [True, False])
@pytest.mark.parametrize('layout', ['', 'svhn'])
def test_svhn_mat(tmp_path, rng, compress, layout):
  for split, n in (('train', 5), ('test', 3), ('extra', 2)):
    images = rng.integers(0, 256, (n, 32, 32, 3), np.uint8)
    labels = np.arange(n) % 10
    labels[0] = 0  # stored as 10 in the file
    write_svhn(tmp_path / layout / f'{split}_32x32.mat', images, labels,
               compress)
    ds = data.load('svhn', split, data_dir=tmp_path)
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, labels)
    assert ds.images.flags.c_contiguous


def test_svhn_mat_written_by_scipy(tmp_path, rng):
  import scipy.io  # pylint: disable=g-import-not-at-top
  images = rng.integers(0, 256, (4, 32, 32, 3), np.uint8)
  labels = np.array([0, 1, 9, 0])
  for compress in (True, False):
    path = tmp_path / f'{compress}' / 'test_32x32.mat'
    os.makedirs(path.parent)
    scipy.io.savemat(path, svhn_arrays(images, labels),
                     do_compression=compress)
    out, out_labels = data.read_svhn_mat(path)
    np.testing.assert_array_equal(out, images)
    np.testing.assert_array_equal(out_labels, labels)


def test_svhn_mat_integer_labels(tmp_path, rng):
  images = rng.integers(0, 256, (3, 32, 32, 3), np.uint8)
  arrays = svhn_arrays(images, np.array([3, 0, 5]))
  arrays['y'] = arrays['y'].astype(np.uint8)[:, 0]  # (N,) uint8, not (N, 1)
  path = write_file(tmp_path / 'train_32x32.mat', mat_bytes(arrays))
  np.testing.assert_array_equal(data.read_svhn_mat(path)[1], [3, 0, 5])


# ------------------------------------------------------------------ real data

MNIST_COUNTS = {
    'train': [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    'test': [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}


def test_real_mnist_md5():
  directory = need_real('mnist', 'MD5SUMS')
  with open(directory) as f:
    sums = dict(reversed(line.split()) for line in f if line.strip())
  assert len(sums) == 4
  for name, md5 in sums.items():
    with open(os.path.join(os.path.dirname(directory), name), 'rb') as f:
      assert hashlib.md5(f.read()).hexdigest() == md5, name


@pytest.mark.parametrize('split, n', [('train', 60000), ('test', 10000)])
def test_real_mnist(split, n, monkeypatch):
  need_real('mnist')
  ds = data.load('mnist', split, data_dir=real_data_dir())
  assert ds.images.shape == (n, 28, 28, 1) and ds.images.dtype == np.uint8
  assert ds.labels.shape == (n,) and ds.labels.dtype == np.int32
  assert np.bincount(ds.labels).tolist() == MNIST_COUNTS[split]
  assert ds.describe()['label_counts'] == MNIST_COUNTS[split]
  assert not ds.is_sample
  # Background is 0, strokes reach 255, as in the original files.
  assert ds.images.min() == 0 and ds.images.max() == 255
  # The default source picks the configured directory up from the env.
  monkeypatch.setenv(data.ENV_VAR, real_data_dir())
  np.testing.assert_array_equal(data.load('mnist', split).labels, ds.labels)


def test_sample_is_the_start_of_the_real_files():
  need_real('mnist')
  for split, count in sample.SPLITS.items():
    real = data.load('mnist', split, data_dir=real_data_dir())
    ds = data.load('mnist', split, source='sample')
    assert len(ds) == count
    np.testing.assert_array_equal(ds.images, real.images[:count])
    np.testing.assert_array_equal(ds.labels, real.labels[:count])


def test_sample_regenerates_byte_for_byte():
  need_real('mnist')
  made = sample.build_sample(os.path.join(real_data_dir(), 'mnist'))
  with open(sample.sample_path(), 'rb') as f:
    assert f.read() == made


def test_sample_tool_runs(tmp_path):
  need_real('mnist')
  out = tmp_path / 'sample.npz'
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'tools', 'make_data_sample.py'),
       f'--mnist_dir={os.path.join(real_data_dir(), "mnist")}',
       f'--sample_out={out}'], capture_output=True, text=True, check=False,
      env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
  assert result.returncode == 0, result.stderr
  with open(sample.sample_path(), 'rb') as f:
    assert out.read_bytes() == f.read()


def test_real_cifar10_sample_through_the_native_formats(tmp_path):
  """The real CIFAR-10 images, written as batches and archive, read back."""
  path = need_real('cifar10-first4000', 'cifar10_first4000.npz')
  with np.load(path) as npz:
    x, y = npz['x'], npz['y']
  assert x.shape == (4000, 32, 32, 3) and x.dtype == np.uint8
  assert y.shape == (4000,) and 0 <= y.min() and y.max() == 9
  parts = {n: (x[i * 500:(i + 1) * 500], y[i * 500:(i + 1) * 500])
           for i, n in enumerate(cifar.TRAIN_BATCHES + cifar.TEST_BATCHES)}
  write_cifar_dir(tmp_path / 'dir' / cifar.BATCH_DIR, parts)
  write_cifar_archive(tmp_path / 'tar' / cifar.ARCHIVE, {
      n: py2_pickle(cifar_batch(*parts[n])) for n in parts})
  for where in ('dir', 'tar'):
    train = data.load('cifar10', 'train', data_dir=tmp_path / where)
    test = data.load('cifar10', 'test', data_dir=tmp_path / where)
    np.testing.assert_array_equal(train.images, x[:2500])
    np.testing.assert_array_equal(train.labels, y[:2500])
    np.testing.assert_array_equal(test.images, x[2500:3000])
  # Real images have the channel statistics the normalisation assumes.
  mean = (x / 255).mean(axis=(0, 1, 2))
  np.testing.assert_allclose(mean, data.get_info('cifar10').mean, atol=0.02)
