"""CIFAR-10's python version: pickled batches, as files or inside the archive.

``cifar-10-python.tar.gz`` holds ``cifar-10-batches-py/data_batch_1`` ..
``data_batch_5`` (10000 training images each), ``test_batch`` and
``batches.meta``. Each batch is a pickled dict written by Python 2's cPickle:
``data`` a ``(10000, 3072)`` uint8 numpy array (each row the red, green and
blue 32x32 planes in turn), ``labels`` a list of ints in 0..9, plus
``batch_label`` and ``filenames``. Format description:
https://www.cs.toronto.edu/~kriz/cifar.html. From the archive, only members
at exactly those names, at its root, are read (:func:`read_archive_members`).

Pickles are untrusted input: unpickling can call any importable function
(``os.system`` through ``__reduce__``, for instance), and even numpy's own
array unpickling trusts its input (``ndarray.__setstate__`` with an object
dtype and a list shorter than the shape crashes the interpreter; a 60-byte
pickle calling ``numpy.ndarray((10**9,), 'O')`` allocates 8 GB).
:func:`safe_loads` therefore uses a restricted unpickler. Plain containers,
strings, bytes, numbers, booleans and None need no import and are always
built. The only globals it resolves are the ones a pickled numpy array and
Python 3's protocol-2 ``bytes`` need, and none of them is the real object:
each is a stand-in of this module that accepts only the exact arguments
numpy and pickle write and refuses everything else.

* ``numpy.core.multiarray._reconstruct`` (the name in the real files,
  written by numpy 1.x; ``numpy._core.multiarray._reconstruct`` in pickles
  written by numpy 2), only as ``_reconstruct(ndarray, (0,), 'b')``;
* ``numpy.ndarray``, only as that first argument (calling it is refused);
* ``numpy.dtype``, only as ``dtype(spec, align, copy)`` with ``spec`` one of
  the plain numeric specs (``'u1'``, ``'i4'``, ``'f8'``, ... and ``'O8'``),
  and a state that names no fields or subarrays;
* ``_codecs.encode``, only as ``encode(str, 'latin1')`` (or ``'latin-1'``),
  and ``__builtin__.bytes`` / ``builtins.bytes``, only as ``bytes()``: this
  is how ``pickle.dumps(obj, protocol=2)`` writes a ``bytes`` object in
  Python 3 (a batch re-saved with ``encoding='bytes'`` keys and values).
  Such a call can only turn a string that is already in the pickle into the
  same characters as bytes (latin-1 maps code points 0..255 to one byte
  each, and refuses the rest), which is exactly what protocol 3's
  ``BINBYTES`` opcode, always accepted, does; the total they produce is
  capped at the pickle's own size, so repeating one string cannot make a
  small pickle large.

The array stand-ins only record the array's state (shape, dtype, order,
raw data), checked for exact sizes as it is set; after loading, each is
replaced by an array that this module builds with ``np.frombuffer`` (or, for
an object array, from the pickle's list of already-built plain values), so
numpy never sees a state from the pickle. Arrays may sit at the top level,
in dicts and in lists; anywhere else (in a tuple), and any stand-in left as a
value, is refused. Nothing else (no other numpy function, no
``numpy._core.numeric._frombuffer``, which protocol 5 pickles use, no
persistent ids) is resolved: anything else raises :class:`DataError` naming
it, and nothing named in the pickle is imported. ``parse_batch`` then
requires ``data`` to be a uint8 array.

Sizes are bounded too: a batch file may hold at most :data:`MAX_BATCH_BYTES`
and the archive, decompressed, :data:`MAX_ARCHIVE_BYTES` (a gzip file that
decompresses to more is refused as soon as it does, without holding it).
"""

from __future__ import annotations

import io
import math
import os
import pickle
import posixpath
import tarfile
import zlib
from typing import Any, Sequence

import numpy as np

from jaxkink.data import files
from jaxkink.data import info
from jaxkink.data.errors import DataError

TRAIN_BATCHES = tuple(f'data_batch_{i}' for i in range(1, 6))
TEST_BATCHES = ('test_batch',)
ARCHIVE = 'cifar-10-python.tar.gz'
BATCH_DIR = 'cifar-10-batches-py'

# Directories (relative to the data directory) searched for the batches, and
# for the archive, in order.
BATCH_LAYOUTS = (BATCH_DIR, f'cifar10/{BATCH_DIR}', f'CIFAR10/{BATCH_DIR}',
                 f'cifar-10/{BATCH_DIR}', 'cifar10', 'CIFAR10', 'cifar-10', '')
ARCHIVE_LAYOUTS = ('', 'cifar10', 'CIFAR10', 'cifar-10')

# numpy's real _reconstruct: never handed to a pickle (the tests' writer of
# Python 2 style pickles names it).
try:
  from numpy._core.multiarray import _reconstruct  # numpy >= 2
except ImportError:  # pragma: no cover (numpy 1.x)
  # pylint: disable-next=g-import-not-at-top
  from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

# Bounds on what is read (the real files: 31 MB per batch, 185 MB for the
# whole archive decompressed).
MAX_BATCH_BYTES = 256 << 20
MAX_ARCHIVE_BYTES = 512 << 20

# dtype specs numpy writes for plain numeric (and object) dtypes.
_DTYPE_SPECS = frozenset(
    ['b1', 'i1', 'u1', 'i2', 'u2', 'i4', 'u4', 'i8', 'u8', 'f2', 'f4', 'f8',
     'O4', 'O8'])
_MAX_NDIM = 32
# What an object array may hold.
_SCALARS = (str, bytes, int, float, complex, bool, type(None))


class _Refused(pickle.UnpicklingError):
  pass


class _Budget:
  """The bytes the stand-ins may still create: the pickle's own size."""

  def __init__(self, limit: int):
    self.left = limit

  def take(self, n: int) -> None:
    if n > self.left:
      raise _Refused('more bytes than the pickle itself holds (one string '
                     'encoded over and over)')
    self.left -= n


class _StandIn:
  """What the unpickler hands out for an allowed global, or builds from one.

  No instance dictionary and a ``__setstate__`` of its own, so a pickle's
  BUILD can neither set attributes on it nor reach anything else;
  unhashable, so it can never be a dict key or a set member (arrays are
  resolved in dict values and list items only).
  """

  __slots__ = ()
  __hash__ = None  # type: ignore[assignment]
  what = 'a global'

  def __setstate__(self, state: Any) -> None:
    raise _Refused(f'state set on {self.what}')

  def __call__(self, *args: Any) -> Any:
    raise _Refused(f'a call of {self.what}')


class _NdarrayName(_StandIn):
  __slots__ = ()
  what = 'numpy.ndarray'


_NDARRAY = _NdarrayName()


class _Reconstruct(_StandIn):
  """``_reconstruct(ndarray, (0,), 'b')``: an empty array, state to come."""

  __slots__ = ()
  what = 'numpy _reconstruct'

  def __call__(self, *args: Any) -> _PendingArray:
    if (len(args) != 3 or args[0] is not _NDARRAY
        or type(args[1]) is not tuple or args[1] != (0,)
        or type(args[2]) not in (str, bytes) or args[2] not in ('b', b'b')):
      raise _Refused('numpy _reconstruct with arguments other than '
                     "(numpy.ndarray, (0,), 'b')")
    return _PendingArray()


class _Dtype(_StandIn):
  """``numpy.dtype(spec, align, copy)`` for a plain numeric ``spec``."""

  __slots__ = ()
  what = 'numpy.dtype'

  def __call__(self, *args: Any) -> _PendingDtype:
    if (len(args) != 3 or type(args[0]) is not str
        or args[0] not in _DTYPE_SPECS
        or any(type(a) not in (bool, int) or a not in (0, 1)
               for a in args[1:])):
      raise _Refused(f'numpy.dtype{_short(args)}: only plain numeric dtypes '
                     f'({", ".join(sorted(_DTYPE_SPECS))}) are allowed')
    return _PendingDtype(args[0])


class _Encode(_StandIn):
  """``_codecs.encode(str, 'latin1')``: Python 3's protocol-2 ``bytes``.

  Safe to allow: it only turns characters the pickle already holds into
  bytes, one per character (latin-1 maps code points 0..255 to one byte
  each; any other code point is refused), as protocol 3's ``BINBYTES`` does
  directly; the bytes it makes count against the load's :class:`_Budget`.
  """

  __slots__ = ('_budget',)
  what = '_codecs.encode'

  def __init__(self, budget: _Budget):
    self._budget = budget

  def __call__(self, *args: Any) -> bytes:
    if (len(args) != 2 or type(args[0]) is not str
        or type(args[1]) is not str or args[1] not in ('latin1', 'latin-1')):
      raise _Refused(f'_codecs.encode{_short(args)}: only '
                     "_codecs.encode(a str, 'latin1'), as Python 3 writes "
                     'bytes in protocol 2, is allowed')
    self._budget.take(len(args[0]))
    try:
      return args[0].encode('latin1')
    except UnicodeEncodeError:
      raise _Refused('_codecs.encode of a str that is not latin-1') from None


class _EmptyBytes(_StandIn):
  """``bytes()``: how Python 3's protocol 2 writes ``b''``."""

  __slots__ = ()
  what = 'builtins.bytes'

  def __call__(self, *args: Any) -> bytes:
    if args:
      raise _Refused(f'builtins.bytes{_short(args)}: only bytes() with no '
                     'arguments is allowed')
    return b''


class _PendingDtype(_StandIn):
  """A dtype the pickle asked for; :meth:`build` makes it."""

  __slots__ = ('_spec', '_byteorder')
  what = 'a numpy dtype'

  def __init__(self, spec: str):
    self._spec = spec
    self._byteorder: str | None = None

  def __setstate__(self, state: Any) -> None:
    # (3, byteorder, subarray, names, fields, elsize, alignment, flags), as
    # numpy writes it for a plain dtype; the flags follow from the spec.
    if (self._byteorder is not None or type(state) is not tuple
        or len(state) != 8 or type(state[0]) is not int or state[0] != 3
        or type(state[1]) is not str or state[1] not in ('|', '<', '>', '=')
        or any(v is not None for v in state[2:5])
        or any(type(v) is not int or v != -1 for v in state[5:7])
        or type(state[7]) is not int):
      raise _Refused(f'a numpy dtype with state {_short(state)} (only plain '
                     'numeric dtypes, without fields or subarrays, are '
                     'allowed)')
    self._byteorder = state[1]

  def build(self) -> np.dtype:
    dtype = np.dtype(self._spec)
    if self._byteorder in ('<', '>') and dtype.itemsize > 1:
      dtype = dtype.newbyteorder('<' if self._byteorder == '<' else '>')
    return dtype


class _PendingArray(_StandIn):
  """An array the pickle asked for: its checked state, built after loading."""

  __slots__ = ('_state', '_built')
  what = 'a numpy array'

  def __init__(self):
    self._state = self._built = None

  def __setstate__(self, state: Any) -> None:
    # (1, shape, dtype, is_fortran, raw data), as ndarray.__reduce__ writes.
    if self._state is not None:
      raise _Refused('a numpy array whose state is set twice')
    if (type(state) is not tuple or len(state) != 5
        or type(state[0]) is not int or state[0] != 1
        or type(state[1]) is not tuple or len(state[1]) > _MAX_NDIM
        or any(type(d) is not int or d < 0 for d in state[1])
        or type(state[2]) is not _PendingDtype
        or type(state[3]) not in (bool, int) or state[3] not in (0, 1)):
      raise _Refused(f'a numpy array with state {_short(state)}')
    shape, dtype, raw = state[1], state[2].build(), state[4]
    count = math.prod(shape)
    if dtype.hasobject:
      if type(raw) is not list or len(raw) != count:
        raise _Refused(f'an object array of shape {shape} whose items are '
                       f'not a list of {count}')
      if any(type(v) not in _SCALARS for v in raw):
        raise _Refused('an object array holding something other than '
                       'strings, bytes, numbers, booleans and None')
    elif type(raw) not in (bytes, str) or len(raw) != count * dtype.itemsize:
      size = len(raw) if type(raw) in (bytes, str) else type(raw).__name__
      raise _Refused(f'a {dtype} array of shape {shape} with {size} bytes of '
                     f'data, not {count * dtype.itemsize}')
    self._state = (shape, dtype, 'F' if state[3] else 'C', raw)

  def build(self, budget: _Budget) -> np.ndarray:
    if self._built is None:
      if self._state is None:
        raise _Refused('a numpy array without its state')
      shape, dtype, order, raw = self._state
      if dtype.hasobject:
        array = np.empty(len(raw), dtype)
        for i, value in enumerate(raw):
          array[i] = value
      else:
        if type(raw) is str:  # Python 2's str, decoded as latin-1
          budget.take(len(raw))
          try:
            raw = raw.encode('latin1')
          except UnicodeEncodeError:
            raise _Refused('array data that is not latin-1') from None
        array = np.frombuffer(raw, dtype)
      self._built = array.reshape(shape, order=order)
    return self._built


def _short(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 80 else text[:77] + '...'


def _resolve(root: Any, budget: _Budget) -> Any:
  """Replaces the stand-ins in ``root`` by the arrays and dtypes they stand
  for, in place (in dict values and list items) and at the top level."""

  def build(value):
    if isinstance(value, (_PendingArray, _PendingDtype)):
      return (value.build(budget) if isinstance(value, _PendingArray)
              else value.build())
    raise _Refused(f'{value.what} left as a value')

  if isinstance(root, _StandIn):
    return build(root)
  stack, seen = [root], set()
  while stack:
    obj = stack.pop()
    if id(obj) in seen:
      continue
    seen.add(id(obj))
    if type(obj) is dict:
      children = list(obj.items())
    elif type(obj) is list:
      children = list(enumerate(obj))
    elif type(obj) is tuple:
      for value in obj:
        if isinstance(value, _StandIn):
          raise _Refused(f'{value.what} inside a tuple')
        stack.append(value)
      continue
    else:
      continue
    for key, value in children:
      if isinstance(value, _StandIn):
        obj[key] = build(value)
      elif type(value) in (dict, list, tuple):
        stack.append(value)
  return root


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only the stand-ins of the module docstring."""

  def __init__(self, file: io.BytesIO, budget: _Budget):
    super().__init__(file, encoding='latin1')
    self._globals = {
        ('numpy.core.multiarray', '_reconstruct'): _Reconstruct(),
        ('numpy._core.multiarray', '_reconstruct'): _Reconstruct(),
        ('numpy', 'ndarray'): _NDARRAY,
        ('numpy', 'dtype'): _Dtype(),
        ('_codecs', 'encode'): _Encode(budget),
        ('__builtin__', 'bytes'): _EmptyBytes(),
        ('builtins', 'bytes'): _EmptyBytes(),
    }

  def find_class(self, module: str, name: str) -> Any:
    try:
      return self._globals[(module, name)]
    except KeyError:
      raise _Refused(f'{module}.{name}') from None

  def persistent_load(self, pid: Any) -> Any:
    raise _Refused(f'persistent id {_short(pid)}')


def safe_loads(raw: bytes, name: str = '<bytes>') -> Any:
  """Unpickles untrusted bytes with the restricted unpickler (module doc).

  Strings written by Python 2 are decoded as latin-1, as numpy's own
  Python 2 compatibility expects. Arrays of plain dtypes are read-only views
  of the pickle's bytes.

  Raises:
    DataError: if the pickle needs anything but plain values and numpy
      arrays (and the protocol-2 spelling of bytes), or is truncated or
      corrupt.
  """
  budget = _Budget(len(raw))
  try:
    return _resolve(_RestrictedUnpickler(io.BytesIO(raw), budget).load(),
                    budget)
  except _Refused as e:
    raise DataError(
        f'{name}: refused to unpickle: the pickle asks for {e}, but only '
        'plain containers, strings, bytes, numbers and numpy arrays are '
        'allowed in a CIFAR-10 batch (a pickle can run arbitrary code, so '
        'untrusted ones are restricted)') from None
  except Exception as e:  # pylint: disable=broad-except
    # Untrusted input: any failure inside the unpickler (EOFError when
    # truncated, UnpicklingError, ValueError or TypeError when corrupt) is
    # reported the same way.
    raise DataError(f'{name}: not a readable pickle (truncated or corrupt): '
                    f'{type(e).__name__}: {e}') from e


def parse_batch(raw: bytes, name: str = '<bytes>',
                num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
  """Parses one pickled CIFAR-10 batch.

  Args:
    raw: the batch file's bytes.
    name: its name, for error messages.
    num_classes: labels must lie in ``0 .. num_classes - 1``.

  Returns:
    ``(images, labels)``: ``(N, 32, 32, 3)`` uint8 (NHWC) and ``(N,)`` int32.

  Raises:
    DataError: for a refused or unreadable pickle, missing entries, a wrong
      shape or dtype, no images, a label-count mismatch or an out-of-range
      label.
  """
  batch = safe_loads(raw, name)
  if not isinstance(batch, dict):
    raise DataError(f'{name}: expected a dict (a CIFAR-10 python batch), '
                    f'found {type(batch).__name__}')
  batch = {k.decode('latin1') if isinstance(k, bytes) else k: v
           for k, v in batch.items()}
  missing = [k for k in ('data', 'labels') if k not in batch]
  if missing:
    raise DataError(f'{name}: no {" or ".join(map(repr, missing))} entry in '
                    f'the batch; it has {sorted(map(str, batch))}')
  data = batch['data']
  if (not isinstance(data, np.ndarray) or data.dtype != np.uint8
      or data.ndim != 2 or data.shape[1] != 3 * 32 * 32):
    desc = (f'{data.dtype} array of shape {data.shape}'
            if isinstance(data, np.ndarray) else type(data).__name__)
    raise DataError(f'{name}: "data" must be a uint8 array of shape (N, 3072),'
                    f' found {desc}')
  if not len(data):
    raise DataError(f'{name}: empty batch: "data" holds 0 images (shape '
                    f'{data.shape}); a CIFAR-10 batch has 10000')
  try:
    labels = np.asarray(batch['labels'])
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(f'{name}: "labels" is not a list of ints: {e}') from e
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f'{name}: "labels" must be a list of ints, found '
                    f'{labels.dtype} of shape {labels.shape}')
  if len(labels) != len(data):
    raise DataError(f'{name}: {len(data)} images but {len(labels)} labels')
  info.check_labels(labels, num_classes, name)
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


def _kind(member: tarfile.TarInfo) -> str | None:
  """Why a tar member cannot be read as a batch, or None if it can."""
  if member.issym():
    return f'a symbolic link (to {member.linkname})'
  if member.islnk():
    return f'a hard link (to {member.linkname})'
  if not member.isreg():
    return 'not a regular file'
  if member.issparse():
    return 'a sparse file'
  if member.size > MAX_BATCH_BYTES:
    return (f'{member.size} bytes, over the limit of {MAX_BATCH_BYTES} for '
            'a batch')
  return None


def read_archive_members(path: str, wanted: Sequence[str]) -> dict[str, bytes]:
  """The bytes of ``cifar-10-batches-py/<name>`` for each name in ``wanted``.

  Only the layout of the real archive is read: the member named exactly
  ``cifar-10-batches-py/<name>``, at the archive's root (``./`` in front, as
  some tar tools write it, is allowed). Members anywhere else
  (``foo/data_batch_1``, ``x/cifar-10-batches-py/data_batch_1``, absolute
  names, ``..``) are never read; if a wanted batch is only found there, the
  error says where. A member at the right name that is a symbolic or hard
  link, is not a regular file, is sparse, is larger than
  :data:`MAX_BATCH_BYTES` or appears twice is refused. The archive
  (gzip-compressed or not) is decompressed whole in memory first, at most
  :data:`MAX_ARCHIVE_BYTES`, so that gzip's CRC and length check the entire
  file, and then read as a tar; nothing is extracted to disk.

  Returns:
    ``{name: bytes}`` for each name in ``wanted``.

  Raises:
    DataError: for a corrupt, truncated or too large archive, a refused
      member, or a missing one.
  """
  raw = files.read_bytes(path, MAX_ARCHIVE_BYTES)
  targets = {f'{BATCH_DIR}/{w}': w for w in wanted}
  found: dict[str, bytes] = {}
  elsewhere: dict[str, list[str]] = {}
  try:
    archive = tarfile.open(fileobj=io.BytesIO(raw), mode='r:*')
  except tarfile.ReadError as e:
    raise DataError(f'{path}: corrupt archive: not a tar file (plain or '
                    'compressed with gzip, bzip2 or xz)') from e
  try:
    with archive:
      for member in archive:
        name = member.name
        while name.startswith('./'):
          name = name[2:]
        want = targets.get(name)
        if want is None:
          base = posixpath.basename(member.name.rstrip('/'))
          if base in wanted:
            elsewhere.setdefault(base, []).append(member.name)
          continue
        if want in found:
          raise DataError(f'{path}: the archive holds {member.name} twice; '
                          'refused, since which copy is meant is ambiguous')
        why = _kind(member)
        if why is not None:
          raise DataError(f'{path}: refused to read {member.name} from the '
                          f'archive: it is {why}; a CIFAR-10 batch is a '
                          'regular file')
        stream = archive.extractfile(member)
        assert stream is not None  # a regular file (_kind above)
        found[want] = stream.read()
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    raise DataError(f'{path}: corrupt or truncated archive '
                    f'({type(e).__name__}: {e})') from e
  missing = [w for w in wanted if w not in found]
  if missing:
    where = elsewhere.get(missing[0])
    hint = (f'; it has {missing[0]} only as {", ".join(where)}, which is not '
            f'read: only {BATCH_DIR}/<name> at the archive\'s root is'
            if where else '')
    raise DataError(f'{path}: the archive has no {", ".join(missing)} '
                    f'(expected {BATCH_DIR}/{missing[0]}){hint}')
  return found


def read_cifar10(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray,
                                                     str]:
  """Reads a CIFAR-10 split from its batch files, or else from the archive.

  The batches are looked for in ``cifar-10-batches-py/`` (also under
  ``cifar10/``, ``CIFAR10/``, ``cifar-10/``) and directly in those
  directories and in ``data_dir``; then ``cifar-10-python.tar.gz`` in
  ``data_dir``, ``cifar10/``, ``CIFAR10/``, ``cifar-10/``.

  Args:
    data_dir: the data directory.
    split: ``'train'`` (the five data batches, in order) or ``'test'``.

  Returns:
    ``(images, labels, where)``: NHWC uint8, int32, and the directory or
    archive read.

  Raises:
    DataError: if nothing is found (naming every place searched), or for a
      bad batch or archive.
  """
  names = TRAIN_BATCHES if split == 'train' else TEST_BATCHES
  dirs = [os.path.join(data_dir, d) if d else data_dir for d in BATCH_LAYOUTS]
  for d in dirs:
    present = [n for n in names if os.path.isfile(os.path.join(d, n))]
    if len(present) == len(names):
      parts = [parse_batch(files.read_bytes(os.path.join(d, n),
                                            MAX_BATCH_BYTES),
                           os.path.join(d, n)) for n in names]
      return (*_concat(parts), d)
    if present:
      missing = [n for n in names if n not in present]
      raise DataError(f'CIFAR-10 {split}: {d} has {", ".join(present)} but '
                      f'not {", ".join(missing)}')
  archives = [os.path.join(data_dir, d, ARCHIVE) if d else
              os.path.join(data_dir, ARCHIVE) for d in ARCHIVE_LAYOUTS]
  for path in archives:
    if os.path.isfile(path):
      raw = read_archive_members(path, names)
      parts = [parse_batch(raw[n], f'{path}:{BATCH_DIR}/{n}') for n in names]
      return (*_concat(parts), path)
  raise DataError(
      f'CIFAR-10 {split}: no data found. Looked for {", ".join(names)} in '
      f'{", ".join(dirs)}, and for {", ".join(archives)}. Point --data_dir '
      f'(or ${files.ENV_VAR}) at the directory that holds {BATCH_DIR}/ or '
      f'{ARCHIVE}.')


def _concat(parts):
  if len(parts) == 1:
    return parts[0]
  return (np.concatenate([p[0] for p in parts]),
          np.concatenate([p[1] for p in parts]))
