"""Preprocessing, augmentation, batching, the bundled sample and sources."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkink import data
from jaxkink.data import sample
from conftest import assert_bits_equal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
  monkeypatch.delenv(data.ENV_VAR, raising=False)


# ------------------------------------------------------------ constants


def test_normalisation_constants_are_the_reference_codes():
  # deel-ai/relu-prime and ryanboustany/MaxPool-numerical, data_utils.py.
  want = {
      'mnist': ((0.5,), (0.5,)),
      'fashion_mnist': ((0.5,), (0.5,)),
      'cifar10': ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
      'svhn': ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
  }
  for name, (mean, std) in want.items():
    info = data.get_info(name)
    assert (info.mean, info.std) == (mean, std), name
    assert len(info.mean) == info.image_shape[2] == len(info.std)
  assert set(data.DATASETS) == set(want)


# ------------------------------------------------------------ preprocess


@pytest.mark.parametrize('name', ['mnist', 'cifar10', 'svhn'])
def test_preprocess_is_totensor_then_normalize(rng, name):
  info = data.get_info(name)
  images = rng.integers(0, 256, (4,) + info.image_shape, np.uint8)
  images[0, 0, 0] = 0
  images[0, 0, 1] = 255
  # torchvision: ToTensor divides by 255 in float32; Normalize subtracts
  # then divides, in float32.
  x = images.astype(np.float32) / np.float32(255)
  want = (x - np.asarray(info.mean, np.float32)) / np.asarray(info.std,
                                                             np.float32)
  got = jax.jit(lambda im: data.preprocess(im, name))(images)
  assert got.shape == images.shape and got.dtype == jnp.float32
  assert_bits_equal(np.asarray(got), want)
  assert_bits_equal(np.asarray(data.preprocess(images, name,
                                               normalize=False)), x)
  flat = data.preprocess(images, info, flatten=True)
  assert flat.shape == (4, np.prod(info.image_shape))
  assert_bits_equal(np.asarray(flat), want.reshape(4, -1))


def test_preprocess_range_and_dtype():
  images = np.array([[[[0]], [[255]]]], np.uint8)  # (1, 2, 1, 1)
  x = data.preprocess(images, 'mnist', normalize=False)
  np.testing.assert_array_equal(x.ravel(), [0.0, 1.0])
  x = data.preprocess(images, 'mnist')
  np.testing.assert_array_equal(x.ravel(), [-1.0, 1.0])
  half = data.preprocess(np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1),
                         'mnist', dtype=jnp.float16)
  assert half.dtype == jnp.float16
  full = data.preprocess(np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1),
                         'mnist')
  assert_bits_equal(np.asarray(half), np.asarray(full).astype(np.float16))


# ------------------------------------------------------------ augmentation


def test_preprocess_takes_uint8_only():
  with pytest.raises(TypeError, match='uint8 images, got float32'):
    data.preprocess(np.zeros((1, 28, 28, 1), np.float32), 'mnist')


def test_pixel_table():
  table = data.pixel_table('cifar10')
  assert table.shape == (256, 3) and table.dtype == np.float32
  assert table[0, 0] == np.float32(-0.4914) / np.float32(0.2023)
  np.testing.assert_array_equal(data.pixel_table('mnist', normalize=False)[
      [0, 255], 0], [0.0, 1.0])


def unique_images(n, h=8, w=8, c=3):
  """Images whose every pixel value is unique and nonzero (int32)."""
  return (np.arange(n * h * w * c, dtype=np.int32) + 1).reshape(n, h, w, c)


def test_random_crop_flip_is_a_padded_crop_maybe_flipped():
  images = unique_images(64)
  key = jax.random.key(3)
  out = np.asarray(jax.jit(data.random_crop_flip)(key, images))
  assert out.shape == images.shape and out.dtype == images.dtype
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  seen_offsets, seen_flips = set(), set()
  for i in range(len(images)):
    matches = [(dy, dx, f) for dy in range(9) for dx in range(9)
               for f in (False, True)
               if np.array_equal(out[i], (lambda c: c[:, ::-1] if f else c)(
                   padded[i, dy:dy + 8, dx:dx + 8]))]
    assert len(matches) == 1, i
    seen_offsets.add(matches[0][:2])
    seen_flips.add(matches[0][2])
  assert seen_flips == {False, True}
  assert len(seen_offsets) > 20  # of 81
  # Same key, same result; another key, another result.
  np.testing.assert_array_equal(out, data.random_crop_flip(key, images))
  assert not np.array_equal(out, data.random_crop_flip(jax.random.key(4),
                                                       images))


def test_random_crop_flip_distribution():
  images = unique_images(4000, 1, 1, 1)  # 1x1 images: the offset is visible
  out = np.asarray(data.random_crop_flip(jax.random.key(0), images,
                                         padding=1, flip=False))
  kept = (out == images).mean()  # the centre offset (1, 1) of 9
  assert abs(kept - 1 / 9) < 0.02
  assert set(np.unique(out)) <= set(np.unique(images)) | {0}


def test_random_crop_flip_identity_without_padding_or_flip():
  images = unique_images(3)
  out = data.random_crop_flip(jax.random.key(0), images, padding=0,
                              flip=False)
  np.testing.assert_array_equal(out, images)


def test_random_crop_flip_on_uint8_then_preprocess(rng):
  images = rng.integers(1, 256, (16, 32, 32, 3), np.uint8)

  @jax.jit
  def step_input(key, batch):
    return data.preprocess(data.random_crop_flip(key, batch), 'cifar10')

  x = step_input(jax.random.fold_in(jax.random.key(0), 7), images)
  assert x.shape == images.shape and x.dtype == jnp.float32
  # Padding is black (0) before normalisation: -mean/std per channel.
  info = data.get_info('cifar10')
  pad_value = (0 - np.float32(info.mean[0])) / np.float32(info.std[0])
  assert np.isclose(np.asarray(x[..., 0]).min(), pad_value)


# ------------------------------------------------------------ batching


def test_num_batches():
  assert data.num_batches(10, 3) == 3
  assert data.num_batches(10, 3, 'pad') == 4
  assert data.num_batches(9, 3, 'pad') == 3
  assert data.num_batches(2, 3) == 0


def test_epoch_order_is_seeded_and_per_epoch():
  a = data.epoch_order(100, jax.random.key(5), epoch=0)
  np.testing.assert_array_equal(a, data.epoch_order(100, 5, epoch=0))
  np.testing.assert_array_equal(np.sort(a), np.arange(100))
  assert not np.array_equal(a, np.arange(100))
  b = data.epoch_order(100, jax.random.key(5), epoch=1)
  assert not np.array_equal(a, b)
  np.testing.assert_array_equal(b, data.epoch_order(100, 5, epoch=1))
  assert not np.array_equal(a, data.epoch_order(100, 6, epoch=0))
  np.testing.assert_array_equal(data.epoch_order(7, None), np.arange(7))


def test_epoch_order_is_the_documented_permutation():
  key = jax.random.key(0)
  for epoch in (0, 1, 7):
    np.testing.assert_array_equal(
        data.epoch_order(10, 0, epoch=epoch),
        np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), 10)))


@pytest.mark.parametrize('remainder', ['drop', 'pad'])
def test_batches_cover_the_epoch(remainder):
  n, b = 23, 5
  images = np.arange(n * 2, dtype=np.uint8).reshape(n, 2, 1, 1)
  labels = np.arange(n, dtype=np.int32)
  out = list(data.batches(images, labels, b, key=1, remainder=remainder))
  assert len(out) == data.num_batches(n, b, remainder)
  seen = []
  for batch in out:
    assert isinstance(batch, data.Batch)
    assert all(isinstance(x, jax.Array) for x in batch)
    assert batch.image.shape == (b, 2, 1, 1) and batch.label.shape == (b,)
    assert batch.image.dtype == np.uint8 and batch.label.dtype == np.int32
    mask = np.asarray(batch.mask)
    label = np.asarray(batch.label)
    np.testing.assert_array_equal(np.asarray(batch.image)[mask, 0, 0, 0],
                                  2 * label[mask])
    assert not np.asarray(batch.image)[~mask].any() and not label[~mask].any()
    seen.extend(label[mask])
  order = data.epoch_order(n, 1)
  expected = order if remainder == 'pad' else order[:n // b * b]
  np.testing.assert_array_equal(seen, expected)
  if remainder == 'pad':
    assert np.asarray(out[-1].mask).sum() == n % b


def test_batches_in_file_order_without_key():
  labels = np.arange(6, dtype=np.int32)
  out = [np.asarray(b.label) for b in data.batches(np.zeros((6, 1, 1, 1)),
                                                   labels, 3)]
  np.testing.assert_array_equal(np.concatenate(out), labels)


def test_batches_with_a_sharding():
  device = jax.devices()[0]
  mesh = jax.make_mesh((1,), ('batch',), devices=[device])
  sharding = jax.NamedSharding(mesh, jax.P('batch'))
  batch = next(data.batches(np.zeros((4, 2, 2, 1), np.uint8),
                            np.zeros(4, np.int32), 2, sharding=sharding))
  assert all(x.sharding == sharding for x in batch)
  single = jax.sharding.SingleDeviceSharding(device)
  batch = next(data.batches(np.zeros((4, 2, 2, 1), np.uint8),
                            np.zeros(4, np.int32), 2, sharding=single))
  assert batch.image.sharding == single


def test_batches_split_across_two_devices():
  """Two CPU devices (a fresh process): each holds half of every batch."""
  code = (
      'import jax, numpy as np\n'
      'from jaxkink import data\n'
      'assert jax.device_count() == 2, jax.devices()\n'
      "mesh = jax.make_mesh((2,), ('batch',))\n"
      "sharding = jax.NamedSharding(mesh, jax.P('batch'))\n"
      'images = np.arange(12, dtype=np.uint8).reshape(6, 2, 1, 1)\n'
      'batch = next(data.batches(images, np.arange(6, dtype=np.int32), 4,\n'
      '                          sharding=sharding))\n'
      'shards = batch.label.addressable_shards\n'
      'assert [s.data.tolist() for s in shards] == [[0, 1], [2, 3]], shards\n'
      'assert len({s.device for s in shards}) == 2\n'
      "print('ok')\n")
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES='2',
             PYTHONPATH=ROOT)
  result = subprocess.run([sys.executable, '-c', code], env=env,
                          capture_output=True, text=True, timeout=120,
                          check=False)
  assert result.returncode == 0 and 'ok' in result.stdout, result.stderr


# ------------------------------------------------------------ sample


def test_bundled_sample(caplog):
  with caplog.at_level(logging.WARNING):
    train = data.load('mnist')  # nothing configured: the sample
  assert 'bundled MNIST sample' in caplog.text and 'NOT the full' in caplog.text
  assert train.is_sample and train.source.startswith('sample: ')
  assert 'CC BY-SA 3.0' in train.source
  test = data.load('mnist', 'test', source='sample')
  for ds, n in ((train, 2000), (test, 1000)):
    assert ds.images.shape == (n, 28, 28, 1) and ds.images.dtype == np.uint8
    assert ds.labels.shape == (n,) and ds.labels.dtype == np.int32
    assert np.bincount(ds.labels, minlength=10).min() > 50
    assert ds.describe()['num_examples'] == n
  # The first digits of MNIST's files: 5 0 4 1 9 2 1 3 1 4 and 7 2 1 0 4 1.
  np.testing.assert_array_equal(train.labels[:10], [5, 0, 4, 1, 9, 2, 1, 3,
                                                    1, 4])
  np.testing.assert_array_equal(test.labels[:6], [7, 2, 1, 0, 4, 1])


def test_sample_file_is_small_and_says_its_license():
  path = sample.sample_path()
  assert os.path.getsize(path) < 1_000_000
  with np.load(path, allow_pickle=False) as npz:
    about = str(npz['about'])
    assert sorted(npz.files) == ['about', 'test_images', 'test_labels',
                                 'train_images', 'train_labels']
  assert 'CC BY-SA 3.0' in about and 'LeCun' in about and 'Cortes' in about
  assert about == sample.ABOUT


def test_sample_not_used_when_a_directory_is_configured(tmp_path,
                                                        monkeypatch):
  monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
  with pytest.raises(data.DataError, match='MNIST train images: no file'):
    data.load('mnist')


def test_dataset_arrays_are_read_only():
  ds = data.load('mnist', 'test', source='sample')
  with pytest.raises(ValueError):
    ds.images[0, 0, 0, 0] = 1
  images = np.zeros((2, 28, 28, 1), np.uint8)
  data.Dataset('mnist', 'train', images, np.zeros(2, np.int32), 'x')
  images[0] = 1  # the caller's array stays writable
  with pytest.raises(data.DataError, match='inconsistent dataset'):
    data.Dataset('mnist', 'train', images, np.zeros(3, np.int32), 'x')
