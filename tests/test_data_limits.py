"""Hostile inputs stay bounded: decompression bombs, empty data, stray tar
members, and pickles that try to run code or exhaust memory.

The bomb tests run the loader in a subprocess and read its peak resident
memory (``ru_maxrss``), so they measure what the loader holds, not what the
test process happens to have allocated before.
"""

from __future__ import annotations

import codecs
import io
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import tarfile
import textwrap
import zlib

import numpy as np
import pytest

from jaxkink import data
from jaxkink.data import cifar
from jaxkink.data import files
from jaxkink.data import idx
from test_data_writers import cifar_batch
from test_data_writers import cifar_splits
from test_data_writers import idx_bytes
from test_data_writers import mat_bytes
from test_data_writers import py2_pickle
from test_data_writers import svhn_arrays
from test_data_writers import write_cifar_archive
from test_data_writers import write_file
from test_data_writers import write_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_IMAGES = 'train-images-idx3-ubyte'
TRAIN_LABELS = 'train-labels-idx1-ubyte'
MIB = 1 << 20


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
  monkeypatch.delenv(data.ENV_VAR, raising=False)


# ---------------------------------------------------------------- gzip bombs


def write_gzip_bomb(path, head: bytes, zeros_mib: int) -> str:
  """A valid gzip file of ``head`` then ``zeros_mib`` MiB of zeros.

  Streams: one 1 MiB block of zeros is deflated once, after a full flush
  (which makes the compressed block independent of what came before), and
  written ``zeros_mib`` times; the CRC is computed a MiB at a time. About 1
  MB of gzip per GiB of zeros, in about a second, in little memory.
  """
  deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
  start = deflate.compress(head) + deflate.flush(zlib.Z_FULL_FLUSH)
  chunk = bytes(MIB)
  block = deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
  assert block == deflate.compress(chunk) + deflate.flush(zlib.Z_FULL_FLUSH)
  end = deflate.flush()
  crc = zlib.crc32(head)
  for _ in range(zeros_mib):
    crc = zlib.crc32(chunk, crc)
  size = len(head) + zeros_mib * MIB
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(b'\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff' + start)
    for _ in range(zeros_mib):
      f.write(block)
    f.write(end + struct.pack('<II', crc, size & 0xFFFFFFFF))
  return path


def idx_header(dims, code=0x08) -> bytes:
  return bytes([0, 0, code, len(dims)]) + b''.join(
      struct.pack('>I', d) for d in dims)


def test_gzip_bomb_writer_makes_a_valid_gzip_file(tmp_path):
  import gzip  # pylint: disable=g-import-not-at-top
  head = idx_header((10, 28, 28))
  path = write_gzip_bomb(tmp_path / 'b.gz', head, 3)
  with open(path, 'rb') as f:
    raw = f.read()
  assert len(raw) < 20000
  assert gzip.decompress(raw) == head + bytes(3 * MIB)


def run_measured(code: str, directory) -> dict:
  """Runs ``code`` in a fresh interpreter; returns the JSON it prints last.

  ``code`` sees ``rss()`` (peak resident memory so far, in MB, from
  ``ru_maxrss``) and ``out`` (a dict printed as JSON at the end, with
  ``rss_imported`` and ``rss_peak`` filled in).

  The interpreter is started by a shell that forks it, rather than by this
  process directly: Linux carries a process's peak memory across ``exec``,
  so a child exec'd straight from pytest (vfork or fork) reports pytest's
  own peak as its ``ru_maxrss`` (377 MB against 212 MB when measured).
  """
  script = os.path.join(directory, 'measure.py')
  with open(script, 'w') as f:
    f.write(textwrap.dedent('''
        import json, resource
        def rss():
          return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        import jaxkink.data
        out = {'rss_imported': rss()}
    ''') + textwrap.dedent(code) + textwrap.dedent('''
        out['rss_peak'] = rss()
        print(json.dumps(out))
    '''))
  result = subprocess.run(
      ['/bin/sh', '-c', '"$0" "$1"; exit $?', sys.executable, script],
      capture_output=True, text=True, check=False, timeout=300,
      env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu'))
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope='module')
def in_a_fresh_process(tmp_path_factory):
  """Loads each hostile input in one fresh interpreter (importing jax once
  costs more than all the loads), recording the errors and peak memory."""
  d = tmp_path_factory.mktemp('bombs')
  # 1 MB on disk: a header announcing 10 images of 28x28 (7840 bytes), then
  # 1 GiB of zeros. Gunzipping it whole, as the loader once did, peaks at
  # 2.3 GB of resident memory.
  write_gzip_bomb(d / f'{TRAIN_IMAGES}.gz', idx_header((10, 28, 28)), 1024)
  write_file(d / TRAIN_LABELS, idx_bytes(np.zeros(10, np.uint8)))
  assert os.path.getsize(d / f'{TRAIN_IMAGES}.gz') < 2 * MIB
  plain_bomb = write_gzip_bomb(d / 'data_batch_1', b'', 256)
  # What numpy's own unpickling would do with these: crash (an object array
  # state with a short list) or allocate 8 GB (an object array of 10**9).
  pickles = [c[1] for c in EVIL if c[0] in (
      'object array short list', 'ndarray called', 'reconstruct big')]
  out = run_measured(f'''
      from jaxkink.data import files
      def error(fn, *args, **kwargs):
        try:
          fn(*args, **kwargs)
        except jaxkink.data.DataError as e:
          return str(e)
      out['idx'] = error(jaxkink.data.load, 'mnist', 'train',
                         data_dir={str(d)!r})
      out['rss_idx'] = rss()
      out['read_bytes'] = error(files.read_bytes, {plain_bomb!r},
                                max_bytes=8 << 20)
      out['pickles'] = [error(jaxkink.data.safe_loads, raw, 'evil')
                        for raw in {pickles!r}]
  ''', d)
  out['dir'], out['plain_bomb'] = str(d), plain_bomb
  return out


def test_idx_gzip_bomb_is_refused_in_bounded_memory(in_a_fresh_process):
  out = in_a_fresh_process
  assert out['idx'] is not None
  assert f'{out["dir"]}/{TRAIN_IMAGES}.gz: ' in out['idx']
  assert 'unexpected bytes after the data: the header says uint8 (10, 28, ' \
      '28) (7840 bytes of data)' in out['idx']
  assert out['rss_idx'] < 300, out
  assert out['rss_idx'] - out['rss_imported'] < 64, out


def test_read_bytes_gzip_bomb_is_refused_in_bounded_memory(in_a_fresh_process):
  out = in_a_fresh_process
  assert out['read_bytes'] == (
      f'{out["plain_bomb"]}: too large: decompresses to more than 8388608 '
      'bytes (stopped reading there), over the limit of 8388608 bytes for '
      "this kind of file (files far larger than the dataset's own, such as a "
      'small gzip file that decompresses to gigabytes, are refused)')
  assert out['rss_peak'] - out['rss_imported'] < 64, out


def test_hostile_pickles_do_not_crash_or_grow(in_a_fresh_process):
  out = in_a_fresh_process
  assert len(out['pickles']) == 3
  assert all(e and 'refused to unpickle' in e for e in out['pickles']), out
  assert out['rss_peak'] - out['rss_imported'] < 64, out


def test_read_bytes_limits(tmp_path):
  plain = write_file(tmp_path / 'plain', b'x' * 1000)
  packed = write_file(tmp_path / 'packed', b'x' * 1000, gz=True)
  for path in (plain, packed):
    assert files.read_bytes(path, max_bytes=1000) == b'x' * 1000
    with pytest.raises(data.DataError, match=rf'{path}: too large: '):
      files.read_bytes(path, max_bytes=999)
  with pytest.raises(data.DataError, match=r'plain: too large: 1000 bytes, '
                     r'over the limit of 999 bytes'):
    files.read_bytes(plain, max_bytes=999)


@pytest.mark.parametrize('gz', [True, False])
def test_idx_header_announcing_more_than_the_payload(tmp_path, gz):
  images = np.ones((3, 28, 28), np.uint8)
  raw = idx_header((5, 28, 28)) + images.tobytes()
  path = write_file(tmp_path / 'a.idx', raw, gz)
  with pytest.raises(data.DataError, match=rf'{path}: truncated IDX file: '
                     r'the header says uint8 \(5, 28, 28\) \(3920 bytes of '
                     r'data\), but only 2352 bytes follow'):
    idx.read_idx(path)


@pytest.mark.parametrize('gz', [True, False])
def test_idx_header_announcing_terabytes(tmp_path, gz):
  # 4 billion images of 28x28 announced, 100 bytes present: refused at
  # once, without allocating or reading what the header announces.
  raw = idx_header((0xFFFFFFFF, 28, 28)) + bytes(100)
  path = write_file(tmp_path / 'a.idx', raw, gz)
  message = (r'over the limit of 1073741824 bytes for an IDX file' if gz
             else r'truncated IDX file: .* but only 100 bytes follow')
  with pytest.raises(data.DataError, match=rf'{path}: .*{message}'):
    idx.read_idx(path)


def test_idx_gzip_trailing_bytes_are_counted(tmp_path):
  images = np.ones((3, 28, 28), np.uint8)
  for extra, message in [(5, r'5 unexpected bytes after the data'),
                         (idx.TRAILING_PROBE + 1, rf'more than '
                          rf'{idx.TRAILING_PROBE} unexpected bytes after the '
                          r'data: the header says uint8 \(3, 28, 28\)')]:
    path = write_file(tmp_path / 'a.idx.gz', idx_bytes(images) + bytes(extra),
                      gz=True)
    with pytest.raises(data.DataError, match=rf'{path}: {message}'):
      idx.read_idx(path)


def test_idx_max_bytes(tmp_path):
  images = np.ones((3, 28, 28), np.uint8)
  for gz in (True, False):
    path = write_file(tmp_path / f'{gz}.idx', idx_bytes(images), gz)
    np.testing.assert_array_equal(idx.read_idx(path, max_bytes=2352), images)
    with pytest.raises(data.DataError, match=r'the header says uint8 \(3, 28, '
                       r'28\) \(2352 bytes of data\), over the limit of 2351'):
      idx.read_idx(path, max_bytes=2351)


def test_idx_reads_multi_byte_dtypes_from_gzip_in_chunks(tmp_path,
                                                         monkeypatch):
  # Chunks smaller than an element: the buffer is filled byte-exactly.
  monkeypatch.setattr(files, 'CHUNK_BYTES', 3)
  array = np.arange(-50, 50, dtype='>i4').reshape(4, 25)
  path = write_file(tmp_path / 'a.idx', idx_bytes(array), gz=True)
  out = idx.read_idx(path)
  assert out.dtype == np.dtype('i4') and out.dtype.isnative
  np.testing.assert_array_equal(out, array)


def test_cifar_limits_are_applied(tmp_path, monkeypatch):
  batches = cifar_splits(np.random.default_rng(1))
  members = {n: py2_pickle(cifar_batch(*v)) for n, v in batches.items()}
  archive = write_cifar_archive(tmp_path / 'a' / cifar.ARCHIVE, members)
  size = max(len(m) for m in members.values())
  monkeypatch.setattr(cifar, 'MAX_ARCHIVE_BYTES', 4096)
  with pytest.raises(data.DataError, match=rf'{archive}: too large: '
                     r'decompresses to more than 4096 bytes'):
    data.load('cifar10', 'test', data_dir=tmp_path / 'a')
  monkeypatch.setattr(cifar, 'MAX_ARCHIVE_BYTES', 1 << 30)
  monkeypatch.setattr(cifar, 'MAX_BATCH_BYTES', size - 1)
  with pytest.raises(data.DataError, match=r'refused to read '
                     r'cifar-10-batches-py/test_batch from the archive: it is '
                     rf'{len(members["test_batch"])} bytes, over the limit'):
    data.load('cifar10', 'test', data_dir=tmp_path / 'a')
  path = write_file(tmp_path / 'd' / cifar.BATCH_DIR / 'test_batch',
                    members['test_batch'])
  with pytest.raises(data.DataError, match=rf'{path}: too large: '):
    data.load('cifar10', 'test', data_dir=tmp_path / 'd')


# ---------------------------------------------------------------- empty data


def test_empty_idx_images_are_refused(tmp_path):
  write_mnist(tmp_path, 'train', np.zeros((0, 28, 28), np.uint8),
              np.zeros(0, np.uint8))
  with pytest.raises(data.DataError, match=rf'{tmp_path}/{TRAIN_IMAGES}\.gz: '
                     r'no images: the header says uint8 \(0, 28, 28\)'):
    data.load('mnist', 'train', data_dir=tmp_path)


def test_empty_idx_labels_are_refused(tmp_path):
  write_mnist(tmp_path, 'train', np.zeros((2, 28, 28), np.uint8),
              np.zeros(0, np.uint8))
  with pytest.raises(data.DataError, match=rf'{TRAIN_LABELS}\.gz: no labels: '
                     r'the header says uint8 \(0,\)'):
    data.load('mnist', 'train', data_dir=tmp_path)


def test_empty_cifar_batch_is_refused():
  raw = py2_pickle(cifar_batch(np.zeros((0, 32, 32, 3), np.uint8), []))
  with pytest.raises(data.DataError, match=r'b1: empty batch: "data" holds 0 '
                     r'images \(shape \(0, 3072\)\)'):
    cifar.parse_batch(raw, 'b1')


def test_empty_svhn_is_refused(tmp_path):
  arrays = svhn_arrays(np.zeros((0, 32, 32, 3), np.uint8),
                       np.zeros(0, np.int64))
  write_file(tmp_path / 'train_32x32.mat', mat_bytes(arrays))
  with pytest.raises(data.DataError, match=r'train_32x32\.mat: no images: X '
                     r'has shape \(32, 32, 3, 0\)'):
    data.load('svhn', 'train', data_dir=tmp_path)


def test_empty_dataset_is_refused():
  with pytest.raises(data.DataError, match=r'mnist train: empty dataset: 0 '
                     r'examples \(from x\)'):
    data.Dataset('mnist', 'train', np.zeros((0, 28, 28, 1), np.uint8),
                 np.zeros(0, np.int32), 'x')


# ---------------------------------------------------------------- tar members


def write_tar(path, members) -> str:
  """A .tar.gz of ``(name, bytes | ('sym' | 'lnk', target))`` members."""
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tarfile.open(path, 'w:gz') as archive:
    for name, content in members:
      info = tarfile.TarInfo(name)
      if isinstance(content, tuple):
        info.type = tarfile.SYMTYPE if content[0] == 'sym' else tarfile.LNKTYPE
        info.linkname = content[1]
        archive.addfile(info)
      else:
        info.size = len(content)
        archive.addfile(info, io.BytesIO(content))
  return path


TEST_BATCH = cifar_batch(np.full((2, 32, 32, 3), 7, np.uint8), [3, 4])


@pytest.mark.parametrize('name', [
    'unrelated/cifar-10-batches-py/test_batch', 'foo/test_batch',
    'test_batch', '/cifar-10-batches-py/test_batch',
    '../cifar-10-batches-py/test_batch', 'cifar-10-batches-py/x/test_batch'])
def test_tar_members_elsewhere_are_not_read(tmp_path, name):
  path = write_tar(tmp_path / cifar.ARCHIVE, [(name, py2_pickle(TEST_BATCH))])
  with pytest.raises(data.DataError, match=(
      rf'{path}: the archive has no test_batch \(expected '
      rf'cifar-10-batches-py/test_batch\); it has test_batch only as '
      rf'{name}, which is not read: only cifar-10-batches-py/<name> at the '
      r"archive's root is")):
    data.load('cifar10', 'test', data_dir=tmp_path)


@pytest.mark.parametrize('prefix', ['', './'])
def test_tar_member_at_the_root_is_read(tmp_path, prefix):
  write_tar(tmp_path / cifar.ARCHIVE, [
      ('../evil', b'x'), ('/etc/evil', b'y'), ('link', ('sym', '/etc/passwd')),
      ('foo/test_batch', py2_pickle(cifar_batch(
          np.zeros((1, 32, 32, 3), np.uint8), [0]))),
      (f'{prefix}cifar-10-batches-py/test_batch', py2_pickle(TEST_BATCH))])
  ds = data.load('cifar10', 'test', data_dir=tmp_path)
  np.testing.assert_array_equal(ds.labels, [3, 4])
  assert (ds.images == 7).all()


@pytest.mark.parametrize('kind, message', [
    ('sym', r'a symbolic link \(to /etc/passwd\)'),
    ('lnk', r'a hard link \(to /etc/passwd\)')])
def test_tar_links_are_refused(tmp_path, kind, message):
  path = write_tar(tmp_path / cifar.ARCHIVE, [
      ('cifar-10-batches-py/test_batch', (kind, '/etc/passwd'))])
  with pytest.raises(data.DataError, match=rf'{path}: refused to read '
                     r'cifar-10-batches-py/test_batch from the archive: it is '
                     rf'{message}; a CIFAR-10 batch is a regular file'):
    data.load('cifar10', 'test', data_dir=tmp_path)


def test_tar_directory_and_duplicate_are_refused(tmp_path):
  path = write_tar(tmp_path / 'a' / cifar.ARCHIVE, [
      ('cifar-10-batches-py/test_batch', py2_pickle(TEST_BATCH)),
      ('./cifar-10-batches-py/test_batch', py2_pickle(TEST_BATCH))])
  with pytest.raises(data.DataError, match=rf'{path}: the archive holds '
                     r'\./cifar-10-batches-py/test_batch twice; refused'):
    data.load('cifar10', 'test', data_dir=tmp_path / 'a')
  path = os.fspath(tmp_path / 'b' / cifar.ARCHIVE)
  os.makedirs(os.path.dirname(path))
  with tarfile.open(path, 'w:gz') as archive:
    info = tarfile.TarInfo('cifar-10-batches-py/test_batch')
    info.type = tarfile.DIRTYPE
    archive.addfile(info)
  with pytest.raises(data.DataError, match=r'it is not a regular file'):
    data.load('cifar10', 'test', data_dir=tmp_path / 'b')


# ---------------------------------------------------------------- pickles


def bytes_batch(images, labels) -> dict:
  """A batch as Python 3 re-saves it after ``pickle.load(encoding='bytes')``:
  bytes keys, bytes strings."""
  batch = cifar_batch(images, labels)
  return {b'batch_label': batch['batch_label'].encode(),
          b'labels': batch['labels'], b'data': batch['data'],
          b'filenames': [f.encode() for f in batch['filenames']],
          b'empty': b''}


@pytest.mark.parametrize('protocol', [0, 1, 2, 3, 4])
def test_python3_pickles_of_every_protocol_load_alike(rng, protocol):
  images = rng.integers(0, 256, (3, 32, 32, 3), np.uint8)
  batch = bytes_batch(images, [1, 0, 9])
  raw = pickle.dumps(batch, protocol=protocol)
  globals_ = {arg for op, arg, _ in pickletools.genops(raw)
              if op.name in ('GLOBAL', 'STACK_GLOBAL')}
  if protocol < 3:  # bytes are _codecs.encode(str, 'latin1') calls
    assert '_codecs encode' in globals_
    assert '__builtin__ bytes' in globals_  # b'' is bytes()
  reference = cifar.parse_batch(py2_pickle(cifar_batch(images, [1, 0, 9])))
  out = cifar.parse_batch(raw)
  for a, b in zip(out, reference):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(out[0], images)
  loaded = data.safe_loads(raw)
  assert {k: v for k, v in loaded.items() if k != b'data'} == {
      k: v for k, v in batch.items() if k != b'data'}
  np.testing.assert_array_equal(loaded[b'data'], batch[b'data'])


@pytest.mark.parametrize('array', [
    np.arange(12, dtype='<i4').reshape(3, 4),
    np.arange(12, dtype='>f8').reshape(3, 4),
    np.asfortranarray(np.arange(12, dtype=np.uint16).reshape(3, 4)),
    np.array([True, False]), np.zeros((2, 0, 3), np.uint8),
    np.array([1, 'a', None, b'b', 2.5], object)])
@pytest.mark.parametrize('protocol', [0, 2, 4])
def test_restricted_unpickler_rebuilds_plain_arrays(array, protocol):
  value = {'a': array, 'l': [array, 1]}
  out = data.safe_loads(pickle.dumps(value, protocol=protocol))
  for got in (out['a'], out['l'][0]):
    assert type(got) is np.ndarray
    assert got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)
  assert out['a'] is out['l'][0]  # one object, as in the pickle


class Reduce:
  """Pickles as ``fn(*args)``, plus ``state`` for BUILD if given."""

  def __init__(self, fn, args, state=None):
    self.fn, self.args, self.state = fn, args, state

  def __reduce__(self):
    if self.state is None:
      return self.fn, self.args
    return self.fn, self.args, self.state


class RunsCode:

  def __reduce__(self):
    return os.system, ('touch PWNED',)


def op(*parts: bytes | str) -> bytes:
  """A protocol-2 pickle from opcodes; str parts become BINUNICODE."""
  out = [b'\x80\x02']
  for part in parts:
    if isinstance(part, str):
      raw = part.encode()
      out.append(b'X' + struct.pack('<I', len(raw)) + raw)
    else:
      out.append(part)
  return b''.join(out + [b'.'])


def GLOBAL(module: str, name: str) -> bytes:  # pylint: disable=invalid-name
  return f'c{module}\n{name}\n'.encode()


ENCODE = GLOBAL('_codecs', 'encode')
RECONSTRUCT = GLOBAL('numpy._core.multiarray', '_reconstruct')
NDARRAY = GLOBAL('numpy', 'ndarray')
DTYPE = GLOBAL('numpy', 'dtype')
_reconstruct = cifar._reconstruct  # pylint: disable=protected-access  (numpy's)

BIG = 'x' * MIB

EVIL = [
    # (id, pickle bytes, message)
    ('os.system p0', pickle.dumps(RunsCode(), protocol=0),
     r'(posix|os|nt)\.system'),
    ('os.system p2', pickle.dumps(RunsCode(), protocol=2),
     r'(posix|os|nt)\.system'),
    ('os.system p4', pickle.dumps(RunsCode(), protocol=4),
     r'(posix|os|nt)\.system'),
    ('builtins.eval', b"cbuiltins\neval\n(S'1+1'\ntR.", r'builtins\.eval'),
    ('__builtin__.eval', op(GLOBAL('__builtin__', 'eval'), '1+1', b'\x85R'),
     r'__builtin__\.eval'),
    ('builtins.getattr', op(GLOBAL('builtins', 'getattr')),
     r'builtins\.getattr'),
    ('codecs.encode', op(GLOBAL('codecs', 'encode')), r'codecs\.encode'),
    ('_codecs.decode', op(GLOBAL('_codecs', 'decode')), r'_codecs\.decode'),
    ('encode int', pickle.dumps(Reduce(codecs.encode, (1, 'latin1')), 2),
     r"_codecs\.encode\(1, 'latin1'\): only _codecs\.encode\(a str"),
    ('encode bytes', pickle.dumps(Reduce(codecs.encode, (b'x', 'latin1')), 3),
     r"_codecs\.encode\(b'x', 'latin1'\)"),
    ('encode other codec', pickle.dumps(Reduce(codecs.encode, ('x', 'utf-16')),
                                        2), r"_codecs\.encode\('x', 'utf-16'"),
    ('encode bytes codec', pickle.dumps(Reduce(codecs.encode, ('x',
                                                               b'latin1')), 3),
     r"_codecs\.encode\('x', b'latin1'\)"),
    ('encode three args', pickle.dumps(Reduce(codecs.encode, ('x', 'latin1',
                                                              'strict')), 2),
     r"_codecs\.encode\('x', 'latin1', 'strict'\)"),
    ('encode one arg', pickle.dumps(Reduce(codecs.encode, ('x',)), 2),
     r"_codecs\.encode\('x',\)"),
    ('encode non latin-1', pickle.dumps(Reduce(codecs.encode, ('\u0100',
                                                               'latin1')), 2),
     r'_codecs\.encode of a str that is not latin-1'),
    ('encode amplified', pickle.dumps([Reduce(codecs.encode, (BIG, 'latin1'))
                                       for _ in range(50)], 2),
     r'more bytes than the pickle itself holds'),
    ('bytes(n)', pickle.dumps(Reduce(bytes, (10**10,)), 2),
     r'builtins\.bytes\(10000000000,\): only bytes\(\) with no arguments'),
    ('state on encode', op(ENCODE, b'}', 'a', b'K\x01sb'),
     r'state set on _codecs\.encode'),
    ('state on dtype', op(DTYPE, b'}', 'a', b'K\x01sb'),
     r'state set on numpy\.dtype'),
    ('persistent id', b'\x80\x02X\x01\x00\x00\x00aQ.', r'persistent id'),
    ('persistent id p0', b'Pfoo\n.', r"persistent id 'foo'"),
    ('numpy.frombuffer', pickle.dumps(np.frombuffer, protocol=2),
     r'numpy\.frombuffer'),
    ('ndarray called', pickle.dumps(Reduce(np.ndarray, ((10**9,), 'O')), 2),
     r'a call of numpy\.ndarray'),
    ('reconstruct big', pickle.dumps(Reduce(_reconstruct, (
        np.ndarray, (10**9,), 'O')), 2), r'numpy _reconstruct with arguments '
     r"other than \(numpy\.ndarray, \(0,\), 'b'\)"),
    ('reconstruct subclass', pickle.dumps(np.ma.masked_array([1]), 2),
     r'numpy\.ma\.core'),
    ('object array short list', pickle.dumps(Reduce(_reconstruct, (
        np.ndarray, (0,), b'b'), (1, (10**6,), np.dtype('O'), False, [1])), 4),
     r'an object array of shape \(1000000,\) whose items are not a list of '
     r'1000000'),
    ('object array of arrays', pickle.dumps(np.array(
        [None, np.zeros(2)], object)[1:], 4), r'an object array holding '
     r'something other than'),
    ('array data short', pickle.dumps(Reduce(_reconstruct, (
        np.ndarray, (0,), b'b'), (1, (10**10,), np.dtype('u1'), False, b'x')),
                                      4),
     r'a uint8 array of shape \(10000000000,\) with 1 bytes of data, not '
     r'10000000000'),
    ('array state None', op(RECONSTRUCT, NDARRAY, b'K\x00\x85', 'b',
                            b'\x87R', b'Nb'), r'a numpy array with state None'),
    ('array state twice', op(RECONSTRUCT, NDARRAY, b'K\x00\x85', 'b',
                             b'\x87R(K\x01K\x00\x85', DTYPE, 'u1',
                             b'\x89\x88\x87R\x89C\x00tq\x00bh\x00b'),
     r'a numpy array whose state is set twice'),
    ('structured dtype', pickle.dumps(np.dtype([('a', 'u1')]), 2),
     r"numpy\.dtype\('V1', False, True\): only plain numeric dtypes"),
    ('dtype state with fields', op(DTYPE, 'u1', b'\x89\x88\x87R(K\x03', '|',
                                   b'N', b'}', b'NJ\xff\xff\xff\xffJ\xff\xff'
                                   b'\xff\xffK\x00tb'),
     r'a numpy dtype with state'),
    ('string dtype', pickle.dumps(np.array([b'ab']), 2),
     r"numpy\.dtype\('S2', False, True\)"),
    ('array in a tuple', pickle.dumps((np.zeros(2, np.uint8),), 2),
     r'a numpy array inside a tuple'),
    ('bare ndarray', op(NDARRAY), r'numpy\.ndarray left as a value'),
    ('bare encode in a list', op(b']', ENCODE, b'a'),
     r'_codecs\.encode left as a value'),
]


@pytest.mark.parametrize('raw, message', [c[1:] for c in EVIL],
                         ids=[c[0] for c in EVIL])
def test_hostile_pickles_are_refused(tmp_path, monkeypatch, raw, message):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(data.DataError, match=r'evil: refused to unpickle: the '
                     rf'pickle asks for {message}') as e:
    data.safe_loads(raw, 'evil')
  # pylint: disable-next=unidiomatic-typecheck
  assert type(e.value) is data.DataError
  assert not os.listdir(tmp_path)  # nothing ran


def test_stand_in_as_dict_key_is_unreadable():
  with pytest.raises(data.DataError, match=r'evil: not a readable pickle .*'
                     r'unhashable'):
    data.safe_loads(op(b'}', DTYPE, b'K\x01s'), 'evil')
