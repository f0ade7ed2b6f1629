"""source='tfds': prepared tensorflow-datasets directories, both formats.

The real MNIST 3.0.1 directories beside the checkout
(``../shared/data/tfds/{array_record,tfrecord}``, prepared by
tensorflow-datasets from the IDX files in ``../shared/data/mnist``) are read
whole and compared with the IDX files; tiny directories for the other
datasets' feature layouts are written here, record by record, as
tensorflow-datasets writes them (its builders cannot prepare image datasets
without TensorFlow: ``Image.encode_example`` imports it).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import struct
import sys
import zlib

import numpy as np
import pytest

from jaxkink import data
from jaxkink.data import png
from jaxkink.data import tfds_source
from test_data_writers import cifar_batch
from test_data_writers import idx_bytes
from test_data_writers import mat_bytes
from test_data_writers import py2_pickle
from test_data_writers import svhn_arrays
from test_data_writers import write_file
from test_data_writers import write_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Read before the autouse fixture below clears the variable for each test.
_REAL = os.environ.get(data.ENV_VAR) or os.path.join(ROOT, '..', 'shared',
                                                     'data')


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
  monkeypatch.delenv(data.ENV_VAR, raising=False)
  monkeypatch.delenv(tfds_source.TFDS_ENV_VAR, raising=False)


def need(*parts: str) -> str:
  path = os.path.join(_REAL, *parts)
  if not os.path.exists(path):
    pytest.skip(f'real data not present: no {os.path.join(*parts)} in '
                f'{_REAL} (${data.ENV_VAR}, else ../shared/data)')
  return path


def need_tfds(*modules: str) -> None:
  for m in ('tensorflow_datasets', 'array_record') + modules:
    if importlib.util.find_spec(m) is None:
      pytest.skip('TensorFlow is not installed: tensorflow-datasets reads '
                  'tfrecord only through it (optional: jaxkink[tfds-tf])'
                  if m == 'tensorflow' else
                  f'{m} is not installed (optional: jaxkink[tfds])')


def multiset(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """The examples as sorted rows of bytes (image, then label)."""
  rows = np.concatenate([images.reshape(len(images), -1),
                         labels.astype(np.uint8)[:, None]], axis=1)
  return np.sort(np.ascontiguousarray(rows).view(
      np.dtype((np.void, rows.shape[1]))).ravel())


_NATIVE: dict[str, data.Dataset] = {}


def native_mnist(split: str) -> data.Dataset:
  if split not in _NATIVE:
    _NATIVE[split] = data.load('mnist', split, data_dir=need(),
                               source='native')
  return _NATIVE[split]


# ------------------------------------------------------------ real MNIST


@pytest.mark.parametrize('fmt', ['array_record', 'tfrecord'])
@pytest.mark.parametrize('split, n', [('train', 60000), ('test', 10000)])
def test_real_mnist(fmt, split, n):
  directory = need('tfds', fmt)
  need('mnist')
  if fmt == 'tfrecord':
    need_tfds('tensorflow')
  else:
    need_tfds()
  native = native_mnist(split)
  stored = data.load('mnist', split, data_dir=directory, source='tfds')
  assert len(stored) == n and stored.images.shape == (n, 28, 28, 1)
  assert stored.labels.dtype == np.int32
  assert stored.source.startswith(f'tfds: mnist:3.0.1 {split} ({fmt}, '
                                  'stored order) from ')
  # tfds's own shuffled order: the same examples, elsewhere.
  assert not np.array_equal(stored.labels, native.labels)
  np.testing.assert_array_equal(multiset(stored.images, stored.labels),
                                multiset(native.images, native.labels))
  # MNIST has no two equal (image, label) pairs in a split, so the native
  # order is the only one that gives the IDX arrays; here it is exact.
  assert len(np.unique(multiset(native.images, native.labels))) == n
  ordered = data.load('mnist', split, data_dir=directory, source='tfds',
                      order='native')
  assert ordered.source.endswith(f'({fmt}, native order) from '
                                 f'{os.path.abspath(directory)}')
  assert ordered.images.tobytes() == native.images.tobytes()
  assert ordered.labels.tobytes() == native.labels.tobytes()


def test_native_positions_are_tfds_hashing():
  need_tfds()
  from tensorflow_datasets.core import hashing  # pylint: disable=g-import-not-at-top
  for split in ('train', 'test', 'extra'):
    h = hashing.Hasher(split)
    want = sorted(range(500), key=h.hash_key)
    np.testing.assert_array_equal(tfds_source.native_positions(split, 500),
                                  want)
  np.testing.assert_array_equal(
      tfds_source.native_positions('train', 5, disable_shuffling=True),
      np.arange(5))


# ------------------------------------------------------------ tiny dirs

FILTERS = (0, 1, 2, 3, 4)


def _paeth(a, b, c):
  p = a + b - c
  pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
  return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def png_bytes(image: np.ndarray, filters=FILTERS, split_idat=False) -> bytes:
  """An 8-bit grey or RGB PNG of ``image`` whose rows use the filter
  types ``filters`` in turn (PNG spec, section 9)."""
  h, w, c = image.shape
  rows = image.reshape(h, w * c).astype(np.int64)
  prior = np.zeros(w * c, np.int64)
  raw = b''
  for r in range(h):
    x, f = rows[r], filters[r % len(filters)]
    a = np.concatenate([np.zeros(c, np.int64), x[:-c]])
    cc = np.concatenate([np.zeros(c, np.int64), prior[:-c]])
    pred = [0, a, prior, (a + prior) // 2, _paeth(a, prior, cc)][f]
    raw += bytes([f]) + ((x - pred) % 256).astype(np.uint8).tobytes()
    prior = x

  def chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack('>I', len(body)) + kind + body
            + struct.pack('>I', zlib.crc32(kind + body)))
  z = zlib.compress(raw)
  parts = [z[:len(z) // 2], z[len(z) // 2:]] if split_idat else [z]
  return (png.SIGNATURE + chunk(b'IHDR', struct.pack(
      '>IIBBBBB', w, h, 8, {1: 0, 3: 2}[c], 0, 0, 0))
          + b''.join(chunk(b'IDAT', p) for p in parts) + chunk(b'IEND', b''))


def test_png_batch_decoder_every_filter(rng):
  for shape in ((28, 28, 1), (32, 32, 3)):
    images = rng.integers(0, 256, (40,) + shape, np.uint8)
    images[:5] = 0
    images[5:10] = 255
    blobs = [png_bytes(im, FILTERS[i % 5:] + FILTERS[:i % 5], i % 3 == 0)
             for i, im in enumerate(images)]
    out = png.decode_batch(blobs, shape)
    assert out.dtype == np.uint8 and out.tobytes() == images.tobytes()


def test_png_batch_decoder_against_pil(rng):
  pil = pytest.importorskip('PIL.Image')
  images = rng.integers(0, 256, (8, 32, 32, 3), np.uint8)
  images[:, 10:20] = 7  # flat areas: PIL's zlib picks other filters
  blobs = []
  for im in images:
    buf = io.BytesIO()
    pil.fromarray(im).save(buf, format='PNG', optimize=True)
    blobs.append(buf.getvalue())
  assert png.decode_batch(blobs, (32, 32, 3)).tobytes() == images.tobytes()
  # A PNG outside the fast path (16-bit) goes to the fallback.
  buf = io.BytesIO()
  pil.fromarray(images[0, :, :, 0].astype(np.uint16) * 257).save(
      buf, format='PNG')
  grey16 = buf.getvalue()
  with pytest.raises(data.DataError, match='bit depth 16'):
    png.decode_batch([grey16], (32, 32, 1))
  got = png.decode_batch([grey16], (32, 32, 1),
                         fallback=lambda b: np.full((32, 32, 1), 3, np.uint8))
  assert (got == 3).all()


@pytest.mark.parametrize('mutate, message', [
    (lambda b: b'GIF89a' + b[6:], 'not a PNG'),
    (lambda b: b[:40], 'truncated|runs past the end'),
    (lambda b: b[:30] + bytes([b[30] ^ 1]) + b[31:], 'fails its CRC'),
])
def test_png_broken_is_a_data_error(rng, mutate, message):
  blob = png_bytes(rng.integers(0, 256, (28, 28, 1), np.uint8))
  with pytest.raises(data.DataError, match=message):
    png.decode_batch([mutate(blob)], (28, 28, 1), 'x')
  with pytest.raises(data.DataError, match='PNG of 28x28 pixels, expected '
                     '32x32'):
    png.decode_batch([blob], (32, 32, 1))


# The builders' feature layouts (tensorflow-datasets 4.9.10): image shape,
# digits of the ``id`` feature (None: no id), module.
LAYOUTS = {
    'mnist': ((28, 28, 1), None, 'image_classification.mnist'),
    'fashion_mnist': ((28, 28, 1), None, 'image_classification.mnist'),
    'cifar10': ((32, 32, 3), 5, 'image_classification.cifar'),
    'svhn_cropped': ((32, 32, 3), 6,
                     'datasets.svhn_cropped.svhn_cropped_dataset_builder'),
}
VERSIONS = {'mnist': '3.0.1', 'fashion_mnist': '3.0.1', 'cifar10': '3.0.2',
            'svhn_cropped': '3.1.0'}


def _feature_json(shape, with_id: int | None) -> dict:
  feats = {
      'image': {'image': {'dtype': 'uint8', 'shape': {
          'dimensions': [str(d) for d in shape]}},
                'pythonClassName': 'tensorflow_datasets.core.features.'
                                   'image_feature.Image'},
      'label': {'classLabel': {'numClasses': '10'},
                'pythonClassName': 'tensorflow_datasets.core.features.'
                                   'class_label_feature.ClassLabel'}}
  if with_id is not None:
    feats['id'] = {'text': {}, 'pythonClassName': 'tensorflow_datasets.'
                   'core.features.text_feature.Text'}
  return {'featuresDict': {'features': feats}, 'pythonClassName':
          'tensorflow_datasets.core.features.features_dict.FeaturesDict'}


def write_tfds_dir(root, name: str, splits: dict, fmt: str = 'array_record'):
  """A prepared directory as tensorflow-datasets writes it: the examples of
  each split (in their native order) keyed by index, stored in the order of
  ``md5(split + str(index))``, as serialized ``tf.train.Example``s."""
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  shape, with_id, module = LAYOUTS[name]
  path = os.path.join(root, name, VERSIONS[name])
  os.makedirs(path)
  info_splits = []
  for split, (images, labels) in splits.items():
    n = len(labels)
    order = sorted(range(n), key=lambda i, s=split: hashlib.md5(
        f'{s}{i}'.encode()).digest())
    records = []
    for i in order:
      ex = tf_example_pb2.Example()
      fs = ex.features.feature
      fs['image'].bytes_list.value.append(png_bytes(images[i]))
      fs['label'].int64_list.value.append(int(labels[i]))
      if with_id is not None:
        fs['id'].bytes_list.value.append(f'{split}_{i:0{with_id}d}'.encode())
      records.append(ex.SerializeToString())
    file = os.path.join(path, f'{name}-{split}.{fmt}-00000-of-00001')
    if fmt == 'array_record':
      from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
      w = array_record_module.ArrayRecordWriter(file, 'group_size:1')
      for r in records:
        w.write(r)
      w.close()
    else:
      import pyarrow as pa  # pylint: disable=g-import-not-at-top
      import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
      pq.write_table(pa.table({'data': pa.array(records, pa.binary())}), file)
    info_splits.append({
        'filepathTemplate': '{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}',
        'name': split, 'numBytes': str(sum(map(len, records))),
        'shardLengths': [str(n)]})
  with open(os.path.join(path, 'dataset_info.json'), 'w') as f:
    json.dump({'fileFormat': fmt, 'name': name, 'version': VERSIONS[name],
               'moduleName': f'tensorflow_datasets.{module}',
               'splits': info_splits,
               'supervisedKeys': {'tuple': {'items': [
                   {'featureKey': 'image'}, {'featureKey': 'label'}]}}}, f)
  with open(os.path.join(path, 'features.json'), 'w') as f:
    json.dump(_feature_json(shape, with_id), f)
  return path


@pytest.mark.parametrize('fmt', ['array_record', 'parquet'])
@pytest.mark.parametrize('name', sorted(LAYOUTS))
def test_tiny_dirs_every_layout(tmp_path, rng, name, fmt):
  need_tfds('pyarrow' if fmt == 'parquet' else 'array_record')
  shape = LAYOUTS[name][0]
  info = data.get_info(name)
  made = {s: (rng.integers(0, 256, (n,) + shape, np.uint8),
              rng.integers(0, 10, n).astype(np.int32))
          for s, n in (('train', 37), ('test', 11))}
  write_tfds_dir(tmp_path, name, made, fmt)
  for split, (images, labels) in made.items():
    ds = data.load(info.name, split, data_dir=tmp_path, source='tfds',
                   order='native')
    assert ds.source.startswith(f'tfds: {name}:{VERSIONS[name]} {split} '
                                f'({fmt}, native order)')
    assert ds.images.tobytes() == images.tobytes()
    assert ds.labels.tobytes() == labels.tobytes()
    stored = data.load(info.name, split, data_dir=tmp_path, source='tfds')
    perm = tfds_source.native_positions(split, len(labels))
    np.testing.assert_array_equal(stored.labels, labels[perm])
    np.testing.assert_array_equal(stored.images, images[perm])


def test_ids_that_disagree_with_the_hash_order(tmp_path, rng):
  need_tfds()
  ids = [f'train_{i:05d}' for i in range(6)]
  with pytest.raises(data.DataError, match="not tensorflow-datasets' hash "
                     'order'):
    tfds_source.native_positions('train', 6, ids)
  with pytest.raises(data.DataError, match=r'not train_<index> for the '
                     r'indices 0..5'):
    tfds_source.native_positions('train', 6, ids[:5] + ['test_00005'])


# ------------------------------------------------------------ errors


def _tiny_mnist(tmp_path, rng):
  need_tfds()
  made = {'train': (rng.integers(0, 256, (4, 28, 28, 1), np.uint8),
                    np.arange(4, dtype=np.int32))}
  return write_tfds_dir(tmp_path, 'mnist', made)


def test_error_names_the_missing_package(tmp_path, rng, monkeypatch):
  path = _tiny_mnist(tmp_path, rng)
  monkeypatch.setitem(sys.modules, 'array_record', None)
  with pytest.raises(data.DataError, match=(
      r"data source 'tfds': .*mnist.3\.0\.1 is in array_record format \(its "
      r'dataset_info.json\), which tfds.data_source reads without '
      r"TensorFlow: .*pip install 'jaxkink\[tfds\]' \(missing: "
      r'array_record\)')):
    data.load('mnist', data_dir=tmp_path, source='tfds')
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  with pytest.raises(data.DataError, match=r'\(missing: tensorflow-datasets, '
                     r'array_record\)'):
    data.load('mnist', data_dir=tmp_path, source='tfds')
  # A tfrecord directory needs TensorFlow, and says so.
  with open(os.path.join(path, 'dataset_info.json')) as f:
    meta = json.load(f)
  del meta['fileFormat']  # tensorflow-datasets' default: tfrecord
  with open(os.path.join(path, 'dataset_info.json'), 'w') as f:
    json.dump(meta, f)
  monkeypatch.setitem(sys.modules, 'tensorflow', None)
  with pytest.raises(data.DataError, match=(
      r'is in tfrecord format .*reads only through TensorFlow \(tfds.load\)'
      r".*pip install 'jaxkink\[tfds-tf\]'.*prepare it in array_record format"
      r'.*\(missing: tensorflow-datasets, tensorflow\)')):
    data.load('mnist', data_dir=tmp_path, source='tfds')


def test_not_prepared_and_bad_requests(tmp_path, rng):
  with pytest.raises(data.DataError, match=(
      r"no prepared tensorflow-datasets 'cifar10' in .* \(looked for "
      r'.*cifar10.<version>.dataset_info.json\).*nothing is downloaded')):
    data.load('cifar10', data_dir=tmp_path, source='tfds')
  _tiny_mnist(tmp_path, rng)
  with pytest.raises(data.DataError, match=r"no split 'test' prepared \(its "
                     r'splits: train\)'):
    data.load('mnist', 'test', data_dir=tmp_path, source='tfds')
  with pytest.raises(data.DataError, match=r"unknown data order 'idx'; "
                     r'valid: stored, native'):
    data.load('mnist', data_dir=tmp_path, source='tfds', order='idx')


def test_default_directory_is_tfds_own(tmp_path, rng, monkeypatch):
  _tiny_mnist(tmp_path, rng)
  monkeypatch.setenv(tfds_source.TFDS_ENV_VAR, str(tmp_path))
  assert len(data.load('mnist', source='tfds')) == 4
  monkeypatch.setenv(data.ENV_VAR, str(tmp_path / 'mnist'))  # wins
  with pytest.raises(data.DataError, match="no prepared tensorflow-datasets "
                     "'mnist'"):
    data.load('mnist', source='tfds')


def test_tfds_failures_are_data_errors(tmp_path, rng, monkeypatch):
  _tiny_mnist(tmp_path, rng)
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  def data_source(name, **kwargs):
    raise AssertionError(f'Dataset {name}: could not find data in {kwargs}')
  monkeypatch.setattr(tfds, 'data_source', data_source)
  with pytest.raises(data.DataError, match=r'tensorflow-datasets mnist:train '
                     r'\(.*\): tensorflow-datasets could not read it: '
                     r'AssertionError: Dataset mnist:3.0.1'):
    data.load('mnist', data_dir=tmp_path, source='tfds')


# ------------------------------------------------------------ scripts

_VOLUME_DEFAULTS = dict(model_opt=(), legacy_relu_grad=False, chunk=2,
                        train_size=None, screen=True, seed=0, tau=0.0,
                        first_layer_only=False, batch_norm_mode='batch',
                        theta_loop='map')


def test_volume_table1_from_tfds_in_native_order_is_the_native_run():
  """The inputs and settings of Table 1's runs from the array_record dir
  with --data_order=native are the native source's, bit for bit (so the
  engine computes the same records; BUILD_NOTES has a full run of both);
  the source and order are recorded only when given."""
  tfds_dir = need('tfds', 'array_record')
  need('mnist')
  need_tfds()
  from jaxkink.experiments import volume  # pylint: disable=g-import-not-at-top
  from jaxkink.experiments import volume_presets  # pylint: disable=g-import-not-at-top
  runs = [r for r in volume_presets.PRESETS['table1'].runs
          if r.flags['precision'] == 'float32']
  assert len(runs) == 2
  for run in runs:
    cfg = {**_VOLUME_DEFAULTS, **run.flags, 'samples': 2, 'train_size': 4096}
    native = volume.prepare(cfg, need(), 'native')
    tfds = volume.prepare(cfg, tfds_dir, 'tfds', 'native')
    stored = volume.prepare(cfg, tfds_dir, 'tfds')
    assert np.asarray(tfds.x).tobytes() == np.asarray(native.x).tobytes()
    assert np.asarray(tfds.y).tobytes() == np.asarray(native.y).tobytes()
    assert tfds.settings['data'].pop('data_source') == 'tfds'
    assert tfds.settings['data'].pop('data_order') == 'native'
    assert native.settings['data'].pop('data_source') == 'native'
    assert tfds.settings == native.settings
    # tfds's own order: other minibatches, another data digest.
    assert stored.settings['data']['sha256'] != native.settings['data'][
        'sha256']
  auto = volume.prepare({**_VOLUME_DEFAULTS, **runs[0].flags, 'samples': 2,
                         'train_size': 4096}, need())
  assert not {'data_source', 'data_order'} & set(auto.settings['data'])


def test_requested_is_only_what_differs_from_the_defaults():
  assert data.requested() == {}
  assert data.requested('auto', 'stored') == {}
  assert data.requested('tfds', 'native') == {'data_source': 'tfds',
                                              'data_order': 'native'}
  with pytest.raises(data.DataError, match='unknown data order'):
    data.requested('tfds', 'idx')


# ------------------------------------------------------------ tfds's builders


def need_builders() -> None:
  need_tfds()
  if importlib.util.find_spec('tensorflow') is None:
    pytest.skip('TensorFlow is not installed: tensorflow-datasets prepares '
                'image datasets only with it (Image.encode_example, '
                'tf.io.gfile); the tiny directories above are written '
                'without it')
  if importlib.util.find_spec('importlib_resources') is None:
    pytest.skip('importlib_resources is not installed: tensorflow-datasets '
                "imports it (through etils) to run its builders")


def _prepare(builder, download: str, files, fmt: str, patches=()):
  """Runs a real tensorflow-datasets builder on files written here: the
  download manager hands it ``files`` instead of downloading."""
  from unittest import mock  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with contextlib.ExitStack() as stack:
    for target, name, value in patches:
      stack.enter_context(mock.patch.object(target, name, value))
    stack.enter_context(mock.patch.object(tfds.download.DownloadManager,
                                          download, return_value=files))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP))


@pytest.mark.parametrize('name, fmt', [
    ('mnist', 'array_record'), ('mnist', 'tfrecord'),
    ('fashion_mnist', 'array_record'), ('cifar10', 'array_record'),
    ('cifar10', 'tfrecord'), ('svhn_cropped', 'array_record')])
def test_real_builders_on_tiny_native_files(tmp_path, rng, name, fmt):
  """tensorflow-datasets' own builders prepare tiny native files (written by
  tests/test_data_writers.py's writers); in native order jaxkink reads back
  what its native reader reads from the same files. Needs TensorFlow."""
  need_builders()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  native_dir, dl, out = tmp_path / 'native', tmp_path / 'dl', tmp_path / 'tfds'
  builder = tfds.builder(name, data_dir=str(out), file_format=fmt)
  info = data.get_info(name)
  sizes = {'train': 13, 'test': 7, 'extra': 5}
  splits = info.splits
  made = {s: (rng.integers(0, 256, (sizes[s],) + info.image_shape, np.uint8),
              rng.integers(0, 10, sizes[s]).astype(np.int32)) for s in splits}
  if name in ('mnist', 'fashion_mnist'):
    from tensorflow_datasets.image_classification import mnist  # pylint: disable=g-import-not-at-top
    files = {}
    for s, (x, y) in made.items():
      write_mnist(native_dir, s, x[..., 0], y.astype(np.uint8))
      for kind, arr in (('data', x[..., 0]), ('labels', y.astype(np.uint8))):
        files[f'{s}_{kind}'] = write_file(dl / f'{s}_{kind}', idx_bytes(arr))
    _prepare(builder, 'download_and_extract', files, fmt, [
        (mnist, '_TRAIN_EXAMPLES', sizes['train']),
        (mnist, '_TEST_EXAMPLES', sizes['test'])])
  elif name == 'cifar10':
    # tfds reads the binary version; jaxkink the python one. Train: the
    # 13 images over the five batches, in order.
    x, y = made['train']
    cuts = np.array_split(np.arange(13), 5)
    batches = {f'data_batch_{i + 1}': (x[c], y[c]) for i, c in enumerate(cuts)}
    batches['test_batch'] = made['test']
    for b, (bx, by) in batches.items():
      write_file(native_dir / 'cifar-10-batches-py' / b,
                 py2_pickle(cifar_batch(bx, by, b)))
      rec = np.concatenate([by.astype(np.uint8)[:, None], np.ascontiguousarray(
          bx.transpose(0, 3, 1, 2)).reshape(len(by), 3072)], axis=1)
      write_file(dl / 'cifar-10-batches-bin' / f'{b}.bin', rec.tobytes())
    write_file(dl / 'cifar-10-batches-bin' / 'batches.meta.txt',
               '\n'.join(info.class_names).encode())
    _prepare(builder, 'download_and_extract', str(dl), fmt)
  else:
    files = {}
    for s, (x, y) in made.items():
      files[s] = write_file(native_dir / f'{s}_32x32.mat', mat_bytes(
          svhn_arrays(x, y), True, {'y': np.uint8}))
    _prepare(builder, 'download', files, fmt)
  for s in splits:
    want = data.load(info.name, s, data_dir=native_dir, source='native')
    np.testing.assert_array_equal(want.labels, made[s][1])
    got = data.load(info.name, s, data_dir=out, source='tfds',
                    order='native')
    assert got.source.startswith(f'tfds: {name}:')
    assert got.images.tobytes() == want.images.tobytes(), s
    assert got.labels.tobytes() == want.labels.tobytes(), s
    stored = data.load(info.name, s, data_dir=out, source='tfds')
    perm = tfds_source.native_positions(s, sizes[s])
    np.testing.assert_array_equal(stored.labels, want.labels[perm])
