"""Every malformed or missing input gives a DataError that says what is wrong.

One table: each case builds a bad file (or none) in a fresh directory, loads
it, and expects a ``DataError`` (never an exception from inside numpy,
gzip, tarfile, pickle or scipy) whose message matches.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from jaxkink import data
from jaxkink.data import cifar
from test_data_writers import cifar_batch
from test_data_writers import cifar_splits
from test_data_writers import idx_bytes
from test_data_writers import mat_bytes
from test_data_writers import py2_pickle
from test_data_writers import svhn_arrays
from test_data_writers import write_cifar_archive
from test_data_writers import write_cifar_dir
from test_data_writers import write_file
from test_data_writers import write_mnist

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (3, 28, 28), np.uint8)
LABELS = np.array([1, 2, 3], np.uint8)
TRAIN_IMAGES = 'train-images-idx3-ubyte'
TRAIN_LABELS = 'train-labels-idx1-ubyte'


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
  monkeypatch.delenv(data.ENV_VAR, raising=False)


# ---------------------------------------------------------------- builders
# Each takes the directory and writes the bad data set into it.


def mnist_with(images_file: bytes | None = None,
               labels_file: bytes | None = None, gz: bool = False):
  def build(d):
    write_mnist(d, 'train', IMAGES, LABELS, gz=False)
    if images_file is not None:
      write_file(os.path.join(d, TRAIN_IMAGES), images_file, gz)
    if labels_file is not None:
      write_file(os.path.join(d, TRAIN_LABELS), labels_file, gz)
  return build


def gz_with(mangle):
  def build(d):
    mnist_with()(d)
    raw = bytearray(gzip.compress(idx_bytes(IMAGES), mtime=0))
    os.remove(os.path.join(d, TRAIN_IMAGES))
    write_file(os.path.join(d, TRAIN_IMAGES + '.gz'), bytes(mangle(raw)))
  return build


def flip_crc(raw):
  raw[-8] ^= 0xFF
  return raw


def cifar_with(**batch_overrides):
  """CIFAR dir whose data_batch_1 is a modified valid batch."""
  def build(d):
    batches = cifar_splits(np.random.default_rng(1))
    write_cifar_dir(os.path.join(d, cifar.BATCH_DIR), batches)
    batch = cifar_batch(*batches['data_batch_1'])
    batch.update(batch_overrides)
    for key in [k for k, v in batch_overrides.items() if v is None]:
      del batch[key]
    write_file(os.path.join(d, cifar.BATCH_DIR, 'data_batch_1'),
               py2_pickle(batch))
  return build


def cifar_file(raw: bytes):
  def build(d):
    write_cifar_dir(os.path.join(d, cifar.BATCH_DIR),
                    cifar_splits(np.random.default_rng(1)))
    write_file(os.path.join(d, cifar.BATCH_DIR, 'data_batch_1'), raw)
  return build


class RunsCode:
  """A pickle that calls os.system when loaded by an unrestricted loader."""

  def __reduce__(self):
    return (os.system, ('touch PWNED',))


def archive_with(mangle=None, drop=()):
  def build(d):
    batches = cifar_splits(np.random.default_rng(1))
    members = {n: py2_pickle(cifar_batch(*v)) for n, v in batches.items()
               if n not in drop}
    path = write_cifar_archive(os.path.join(d, cifar.ARCHIVE), members)
    if mangle:
      with open(path, 'rb') as f:
        raw = f.read()
      with open(path, 'wb') as f:
        f.write(mangle(raw))
  return build


def svhn_with(raw: bytes | None = None, **variables):
  def build(d):
    images = RNG.integers(0, 256, (3, 32, 32, 3), np.uint8)
    arrays = svhn_arrays(images, np.array([1, 2, 0]))
    arrays.update(variables)
    for key in [k for k, v in variables.items() if v is None]:
      del arrays[key]
    write_file(os.path.join(d, 'train_32x32.mat'),
               raw if raw is not None else mat_bytes(arrays))
  return build


def mat_v73(d):
  header = b'MATLAB 7.3 MAT-file, Platform: GLNXA64'.ljust(116, b' ')
  write_file(os.path.join(d, 'train_32x32.mat'),
             header + b'\0' * 8 + struct.pack('<H', 0x0200) + b'IM' +
             b'\0' * 512)


GOOD_MAT = mat_bytes(svhn_arrays(np.zeros((3, 32, 32, 3), np.uint8),
                                 np.array([1, 2, 0])))

# (id, builder, dataset, kwargs of load, message regex)
CASES = [
    # -- where the data is
    ('no data dir', None, 'mnist', {'data_dir': '/nonexistent/x'},
     r"data directory '/nonexistent/x' \(from data_dir\) does not exist"),
    ('no file', lambda d: None, 'mnist', {},
     r'MNIST train images: no file found\. Looked for '
     r'train-images-idx3-ubyte\.gz or train-images-idx3-ubyte or .* in '
     r'.*MNIST/raw, .*mnist'),
    ('no label file', lambda d: write_file(
        os.path.join(d, TRAIN_IMAGES), idx_bytes(IMAGES)), 'mnist', {},
     r'MNIST train labels: no file found\. Looked for '
     r'train-labels-idx1-ubyte\.gz'),
    ('no fashion', lambda d: None, 'fashion_mnist', {},
     r'Fashion-MNIST train images: no file found.*FashionMNIST/raw'),
    # -- IDX
    ('empty idx', mnist_with(b''), 'mnist', {},
     r'train-images-idx3-ubyte: not an IDX file: 0 bytes, shorter than the '
     r'4-byte magic number'),
    ('png as idx', mnist_with(b'\x89PNG\r\n\x1a\n' + bytes(64)), 'mnist', {},
     r'not an IDX file: wrong magic number 2303741511 \(0x89504e47\).*2051'),
    ('bad type code', mnist_with(b'\0\0\x07\x03' + bytes(64)), 'mnist', {},
     r'wrong magic number 1795 \(0x00000703\)'),
    ('truncated header', mnist_with(b'\0\0\x08\x03\0\0\0\x03'), 'mnist', {},
     r'truncated IDX header: 3 dimensions need 16 bytes, the file has 8'),
    ('truncated images', mnist_with(idx_bytes(IMAGES)[:-100]), 'mnist', {},
     r'truncated IDX file: the header says uint8 \(3, 28, 28\) \(2352 bytes '
     r'of data\), but only 2252 bytes follow'),
    ('trailing bytes', mnist_with(idx_bytes(IMAGES) + b'xx'), 'mnist', {},
     r'2 unexpected bytes after the data'),
    ('truncated gzip', gz_with(lambda r: r[:len(r) // 2]), 'mnist', {},
     r'train-images-idx3-ubyte\.gz: corrupt or truncated gzip file'),
    ('gzip crc', gz_with(flip_crc), 'mnist', {},
     r'train-images-idx3-ubyte\.gz: corrupt or truncated gzip file \(CRC'),
    ('gzip garbage', gz_with(lambda r: r[:10] + b'\xff' * 20), 'mnist', {},
     r'corrupt or truncated gzip file'),
    ('wrong image size', mnist_with(idx_bytes(np.zeros((3, 32, 32),
                                                       np.uint8))), 'mnist',
     {}, r'expected uint8 images of shape \(N, 28, 28\), found uint8 '
     r'\(3, 32, 32\)'),
    ('float images', mnist_with(idx_bytes(IMAGES.astype('>f4'))), 'mnist', {},
     r'expected uint8 images .* found float32'),
    ('2-d labels', mnist_with(None, idx_bytes(LABELS.reshape(3, 1))), 'mnist',
     {}, r'expected uint8 labels of shape \(N,\), found uint8 \(3, 1\)'),
    ('label count', mnist_with(None, idx_bytes(LABELS[:2])), 'mnist', {},
     r'MNIST train: 3 images \(.*\) but 2 labels \(.*\)'),
    ('label range', mnist_with(None, idx_bytes(np.array([1, 10, 3],
                                                        np.uint8))),
     'mnist', {}, r'train-labels-idx1-ubyte: label 10 at index 1 is outside '
     r'0\.\.9'),
    # -- CIFAR-10
    ('no cifar', lambda d: None, 'cifar10', {},
     r'CIFAR-10 train: no data found\. Looked for data_batch_1, .*, '
     r'data_batch_5 in .*cifar-10-batches-py.*and for '
     r'.*cifar-10-python\.tar\.gz'),
    ('missing batch', lambda d: write_cifar_dir(
        os.path.join(d, cifar.BATCH_DIR),
        {k: v for k, v in cifar_splits(np.random.default_rng(1)).items()
         if k != 'data_batch_4'}), 'cifar10', {},
     r'CIFAR-10 train: .*cifar-10-batches-py has data_batch_1, data_batch_2, '
     r'data_batch_3, data_batch_5 but not data_batch_4'),
    ('code in pickle', cifar_file(pickle.dumps(RunsCode(), protocol=2)),
     'cifar10', {}, r'data_batch_1: refused to unpickle: the pickle asks for '
     r'(posix|os|nt)\.system, but only plain containers'),
    ('builtins eval', cifar_file(
        b"cbuiltins\neval\n(S'1+1'\ntR."), 'cifar10', {},
     r'refused to unpickle: the pickle asks for builtins\.eval'),
    ('other numpy global', cifar_file(pickle.dumps(
        np.frombuffer, protocol=2)), 'cifar10', {},
     r'refused to unpickle: the pickle asks for numpy\.frombuffer'),
    ('protocol 5 array', cifar_file(pickle.dumps(
        {'data': np.zeros((1, 3072), np.uint8), 'labels': [0]}, protocol=5)),
     'cifar10', {}, r'refused to unpickle: the pickle asks for '
     r'numpy\._core\.numeric\._frombuffer'),
    ('codecs encode, other codec', cifar_file(
        b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00"
        b"rot13\x86R."), 'cifar10', {}, r"refused to unpickle: the pickle asks "
     r"for _codecs\.encode\('x', 'rot13'\): only _codecs\.encode\(a str, "
     r"'latin1'\)"),
    ('persistent id', cifar_file(b'\x80\x02X\x01\x00\x00\x00aQ.'), 'cifar10',
     {}, r'refused to unpickle: the pickle asks for persistent id'),
    ('truncated pickle', cifar_file(py2_pickle(cifar_batch(
        np.zeros((3, 32, 32, 3), np.uint8), [1, 2, 3]))[:-300]), 'cifar10',
     {}, r'data_batch_1: not a readable pickle \(truncated or corrupt\)'),
    ('not a pickle', cifar_file(b'<html>404 Not Found</html>'), 'cifar10', {},
     r'data_batch_1: not a readable pickle'),
    ('empty pickle', cifar_file(b''), 'cifar10', {},
     r'data_batch_1: not a readable pickle .*EOFError'),
    ('not a dict', cifar_file(py2_pickle([1, 2, 3])), 'cifar10', {},
     r'data_batch_1: expected a dict \(a CIFAR-10 python batch\), found list'),
    ('no labels', cifar_with(labels=None), 'cifar10', {},
     r"data_batch_1: no 'labels' entry in the batch; it has \['batch_label', "
     r"'data', 'filenames'\]"),
    ('data not array', cifar_with(data=[[1, 2, 3]]), 'cifar10', {},
     r'"data" must be a uint8 array of shape \(N, 3072\), found list'),
    ('data shape', cifar_with(data=np.zeros((3, 1024), np.uint8)), 'cifar10',
     {}, r'"data" must be a uint8 array of shape \(N, 3072\), found uint8 '
     r'array of shape \(3, 1024\)'),
    ('object data', cifar_with(data=np.zeros((3, 3072), object)), 'cifar10',
     {}, r'"data" must be a uint8 array .*found object array'),
    ('labels not ints', cifar_with(labels=['a', 'b', 'c']), 'cifar10', {},
     r'"labels" must be a list of ints, found <U1'),
    ('cifar label count', cifar_with(labels=[1, 2]), 'cifar10', {},
     r'data_batch_1: 3 images but 2 labels'),
    ('cifar label range', cifar_with(labels=[1, -1, 2]), 'cifar10', {},
     r'data_batch_1: label -1 at index 1 is outside 0\.\.9'),
    ('corrupt archive', lambda d: write_file(
        os.path.join(d, cifar.ARCHIVE), b'not an archive ' * 200), 'cifar10',
     {},
     r'cifar-10-python\.tar\.gz: corrupt archive: not a tar file'),
    ('truncated archive', archive_with(lambda r: r[:len(r) // 2]), 'cifar10',
     {}, r'cifar-10-python\.tar\.gz: corrupt or truncated gzip file'),
    ('archive crc', archive_with(lambda r: r[:-8] + bytes(8)), 'cifar10',
     {'split': 'test'}, r'cifar-10-python\.tar\.gz: corrupt or truncated '
     r'gzip file \(CRC check failed'),
    ('truncated tar', archive_with(lambda r: gzip.compress(
        gzip.decompress(r)[:1500], mtime=0)), 'cifar10', {},
     r'cifar-10-python\.tar\.gz: corrupt or truncated archive \(ReadError'),
    ('archive member', archive_with(drop=('test_batch',)), 'cifar10',
     {'split': 'test'}, r'cifar-10-python\.tar\.gz: the archive has no '
     r'test_batch \(expected cifar-10-batches-py/test_batch\)'),
    # -- SVHN
    ('no svhn', lambda d: None, 'svhn', {},
     r'SVHN train: no file found\. Looked for train_32x32\.mat in .*svhn'),
    # Fixed bytes: scipy reads the version from bytes 124-127, and random
    # ones made it 2 (MAT v7.3, the case below) once in 256 runs.
    ('not a mat', svhn_with(b'\x89HDF\r\n' + b'\xa5' * 300), 'svhn', {},
     r'train_32x32\.mat: not a readable MAT v5 file \(truncated or '
     r'corrupt\?\)'),
    ('empty mat', svhn_with(b''), 'svhn', {},
     r'train_32x32\.mat: not a readable MAT v5 file'),
    ('mat v7.3', mat_v73, 'svhn', {}, r'MAT v7\.3 \(HDF5\) files are not '
     r'supported'),
    ('truncated mat', svhn_with(GOOD_MAT[:len(GOOD_MAT) - 40]), 'svhn', {},
     r'train_32x32\.mat: (not a readable MAT v5 file|no variable y)'),
    ('mat header only', svhn_with(GOOD_MAT[:128]), 'svhn', {},
     r'train_32x32\.mat: no variable X or y \(an SVHN file has X and y; this '
     r'one has \[\]; truncated\?\)'),
    ('no y', svhn_with(y=None), 'svhn', {}, r'no variable y'),
    ('X shape', svhn_with(X=np.zeros((28, 28, 1, 3), np.uint8)), 'svhn', {},
     r'X must be uint8 of shape \(32, 32, 3, N\), found uint8 '
     r'\(28, 28, 1, 3\)'),
    ('X float', svhn_with(X=np.zeros((32, 32, 3, 3))), 'svhn', {},
     r'X must be uint8 of shape .* found float64'),
    ('y count', svhn_with(y=np.ones((2, 1))), 'svhn', {},
     r'3 images \(X\) but y has shape \(2, 1\)'),
    ('y 2-d', svhn_with(y=np.ones((3, 3))), 'svhn', {},
     r'3 images \(X\) but y has shape \(3, 3\)'),
    ('y fraction', svhn_with(y=np.array([[1.], [2.5], [3.]])), 'svhn', {},
     r'y must hold integer labels, found float64'),
    ('y zero', svhn_with(y=np.array([[1.], [0.], [3.]])), 'svhn', {},
     r'label 0 at index 1 is outside 1\.\.10 \(SVHN labels are 1\.\.10, with '
     r'10 for the digit 0\)'),
    ('y eleven', svhn_with(y=np.array([[11.], [1.], [3.]])), 'svhn', {},
     r'label 11 at index 0 is outside 1\.\.10'),
    # -- arguments
    ('unknown dataset', lambda d: None, 'imagenette', {},
     r"unknown dataset 'imagenette'; known: mnist, fashion_mnist, cifar10, "
     r'svhn'),
    ('unknown split', lambda d: None, 'mnist', {'split': 'extra'},
     r"mnist has no split 'extra'; its splits: train, test"),
    ('unknown source', lambda d: None, 'mnist', {'source': 'hdf5'},
     r"unknown data source 'hdf5'; valid: auto, native, tfds, sample"),
    ('sample for cifar', lambda d: None, 'cifar10', {'source': 'sample'},
     r'the bundled sample covers MNIST only, not cifar10'),
]


@pytest.mark.parametrize('builder, name, kwargs, message',
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, builder, name, kwargs, message):
  kwargs = dict(kwargs)
  if builder is not None:
    builder(str(tmp_path))
    kwargs.setdefault('data_dir', tmp_path)
  with pytest.raises(data.DataError, match=message) as e:
    data.load(name, **kwargs)
  # pylint: disable-next=unidiomatic-typecheck
  assert type(e.value) is data.DataError
  assert isinstance(e.value, ValueError)


SAMPLE = os.path.join('cifar10-first4000', 'cifar10_first4000.npz')


def _sample_npz(**arrays):
  def build(d):
    os.makedirs(os.path.join(d, os.path.dirname(SAMPLE)))
    np.savez(os.path.join(d, SAMPLE), **arrays)
  return build


SAMPLE_X = RNG.integers(0, 256, (3, 32, 32, 3), np.uint8)
SAMPLE_CASES = [
    ('no sample', lambda d: None, r'cifar10_sample needs '
     r'cifar10-first4000/cifar10_first4000\.npz in the data directory: '
     r'.* does not exist'),
    ('not an npz', lambda d: write_file(os.path.join(d, SAMPLE),
                                        b'not a zip ' * 50),
     r'cifar10_first4000\.npz\' is not the CIFAR-10 sample \(an \.npz '
     r'with arrays x and y\)'),
    ('no y', _sample_npz(x=SAMPLE_X), r'is not the CIFAR-10 sample .*y is '
     r'not a file in the archive'),
    ('labels out of range', _sample_npz(x=SAMPLE_X, y=np.array([0, 10, 1])),
     r'labels y int64 \(3,\) are not integers in 0 \.\. 9'),
    ('float labels', _sample_npz(x=SAMPLE_X, y=np.zeros(3)),
     r'labels y float64 \(3,\) are not integers'),
    ('image shape', _sample_npz(x=SAMPLE_X[:, :28], y=np.zeros(3, np.uint8)),
     r'cifar10 train: inconsistent dataset: images uint8 \(3, 28, 32, 3\)'),
]


@pytest.mark.parametrize('builder, message', [c[1:] for c in SAMPLE_CASES],
                         ids=[c[0] for c in SAMPLE_CASES])
def test_bad_cifar10_sample(tmp_path, builder, message):
  builder(str(tmp_path))
  with pytest.raises(data.DataError, match=message):
    data.read_cifar10_sample(tmp_path)


def test_cifar10_sample_needs_a_data_directory():
  with pytest.raises(data.DataError, match=r'cifar10_sample needs .* none '
                     r'is set \(--data_dir or \$JAXKINK_DATA_DIR\)'):
    data.read_cifar10_sample()


def test_a_good_cifar10_sample_is_read(tmp_path):
  _sample_npz(x=SAMPLE_X, y=np.array([3, 0, 9], np.uint8))(str(tmp_path))
  ds = data.read_cifar10_sample(tmp_path)
  np.testing.assert_array_equal(ds.images, SAMPLE_X)
  np.testing.assert_array_equal(ds.labels, [3, 0, 9])
  assert ds.labels.dtype == np.int32 and ds.name == 'cifar10'
  assert ds.source == (f'sample: {tmp_path}/cifar10-first4000/'
                       'cifar10_first4000.npz (the first 3 images of '
                       'CIFAR-10 data_batch_1)')


def test_env_data_dir_missing(monkeypatch):
  monkeypatch.setenv(data.ENV_VAR, '/nonexistent/y')
  with pytest.raises(data.DataError, match=r"'/nonexistent/y' \(from "
                     r'\$JAXKINK_DATA_DIR\) does not exist'):
    data.load('mnist')


@pytest.mark.parametrize('name', ['cifar10', 'svhn', 'fashion_mnist'])
def test_no_data_dir_configured(name):
  with pytest.raises(data.DataError, match=r'no data directory configured '
                     rf'for {name}: pass --data_dir .* or set '
                     r'\$JAXKINK_DATA_DIR; the bundled sample covers MNIST'):
    data.load(name)
  with pytest.raises(data.DataError, match='source native: no data directory'):
    data.load(name, source='native')


def test_code_in_pickle_does_not_run(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  raw = pickle.dumps(RunsCode(), protocol=2)
  assert b'system' in raw
  with pytest.raises(data.DataError, match='refused to unpickle'):
    data.safe_loads(raw, 'evil')
  assert not os.path.exists(tmp_path / 'PWNED')


def test_nested_code_in_a_valid_looking_batch_is_refused(tmp_path):
  batch = cifar_batch(np.zeros((1, 32, 32, 3), np.uint8), [0])
  batch['filenames'] = [RunsCode()]
  with pytest.raises(data.DataError, match='refused to unpickle'):
    cifar.parse_batch(pickle.dumps(batch, protocol=4), 'batch')


def test_restricted_unpickler_still_reads_plain_values():
  value = {'a': [1, 2.5, None, True], b'b': (b'xy', 'z', b''), 'c': {1: -3},
           'e': '\u20ac', b'\xff\x00': [b'\x80' * 300]}
  value['self'] = [value]  # cycles are kept
  for protocol in range(0, pickle.HIGHEST_PROTOCOL + 1):
    # Below protocol 3, bytes are _codecs.encode(str, 'latin1') calls (and
    # b'' is bytes()), which the unpickler allows in exactly that form.
    out = data.safe_loads(pickle.dumps(value, protocol))
    assert out['self'][0] is out
    assert {k: v for k, v in out.items() if k != 'self'} == {
        k: v for k, v in value.items() if k != 'self'}


@pytest.mark.parametrize('kwargs, message', [
    ({'batch_size': 0}, r'batch_size must be a positive int, got 0'),
    ({'batch_size': 2.5}, r'batch_size must be a positive int, got 2\.5'),
    ({'batch_size': 2, 'remainder': 'keep'},
     r"remainder must be one of \('drop', 'pad'\), got 'keep'"),
])
def test_bad_batching_arguments(kwargs, message):
  with pytest.raises(data.DataError, match=message):
    next(data.batches(np.zeros((4, 2)), np.zeros(4), **kwargs))


def test_batching_length_mismatch():
  with pytest.raises(data.DataError, match='4 images but 3 labels'):
    next(data.batches(np.zeros((4, 2)), np.zeros(3), 2))


def test_tfds_not_installed(monkeypatch, tmp_path):
  import json, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  path = tmp_path / 'mnist' / '3.0.1'
  path.mkdir(parents=True)
  (path / 'dataset_info.json').write_text(json.dumps({
      'fileFormat': 'array_record',
      'splits': [{'name': 'train', 'shardLengths': ['1']}]}))
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  with pytest.raises(data.DataError, match=r"data source 'tfds': .* is in "
                     r"array_record format .*needs tensorflow-datasets .*pip "
                     r"install 'jaxkink\[tfds\]' \(missing: "
                     r'tensorflow-datasets'):
    data.load('mnist', data_dir=tmp_path, source='tfds')
