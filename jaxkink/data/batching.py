"""Minibatches: deterministic shuffling, fixed sizes, straight onto devices.

The whole of MNIST, CIFAR-10 or SVHN fits in host memory, so batching is a
permutation and a gather per step, then ``jax.device_put`` (asynchronous, so
the next gather overlaps the device's work). Every batch has the same shape,
so a jitted step compiles once: the last partial batch is dropped, or padded
and marked in ``mask``.
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple

import jax
import numpy as np

from jaxkink.data.errors import DataError

REMAINDERS = ('drop', 'pad')


class Batch(NamedTuple):
  """One minibatch (a pytree: ``jax.device_put`` and ``jit`` take it whole).

  Attributes:
    image: ``(B, H, W, C)`` uint8 images (padding rows are zeros).
    label: ``(B,)`` int32 labels (padding rows are 0).
    mask: ``(B,)`` bool, False on padding rows; weight per-example losses
      and metrics with it.
  """
  image: Any
  label: Any
  mask: Any


def num_batches(num_examples: int, batch_size: int,
                remainder: str = 'drop') -> int:
  """How many batches :func:`batches` yields."""
  _check(batch_size, remainder)
  if remainder == 'drop':
    return num_examples // batch_size
  return -(-num_examples // batch_size)


def epoch_order(num_examples: int, key: jax.Array | int | None,
                epoch: int = 0) -> np.ndarray:
  """The order examples are visited in during ``epoch``.

  ``key=None`` keeps the file order (evaluation). Otherwise the order is
  ``jax.random.permutation(jax.random.fold_in(key, epoch), n)``, computed on
  the CPU: the same on every machine and backend, a different permutation
  each epoch, and any epoch reproducible without replaying the earlier ones.

  Args:
    num_examples: the dataset size.
    key: a PRNG key (``jax.random.key(seed)``), an int seed, or None.
    epoch: the epoch number.
  """
  if key is None:
    return np.arange(num_examples)
  try:
    device = jax.local_devices(backend='cpu')[0]
  except RuntimeError:  # JAX_PLATFORMS excludes the CPU: same numbers anyway
    device = None
  with jax.default_device(device):
    if isinstance(key, (int, np.integer)):
      key = jax.random.key(int(key))
    order = jax.random.permutation(jax.random.fold_in(key, epoch),
                                   num_examples)
    return np.asarray(order)


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int, *,
            key: jax.Array | int | None = None, epoch: int = 0,
            remainder: str = 'drop',
            sharding: Any = None) -> Iterator[Batch]:
  """Yields one epoch of fixed-size minibatches as device arrays.

  Args:
    images: ``(N, ...)`` array (host memory, e.g. ``Dataset.images``).
    labels: ``(N,)`` array.
    batch_size: examples per batch.
    key: shuffle with this PRNG key or int seed (see :func:`epoch_order`);
      None keeps the file order.
    epoch: the epoch number (selects the permutation).
    remainder: ``'drop'`` the last partial batch, or ``'pad'`` it to
      ``batch_size`` with zero rows whose ``mask`` is False.
    sharding: where to put each batch: None (the default device), a
      ``jax.sharding.Sharding`` for every field (e.g.
      ``NamedSharding(mesh, P('batch'))`` to split the batch dimension across
      devices), or a :class:`Batch` of shardings.

  Yields:
    :class:`Batch` of device arrays, ``batch_size`` rows each.

  Raises:
    DataError: for a bad ``batch_size`` or ``remainder``, or if ``images``
      and ``labels`` differ in length.
  """
  _check(batch_size, remainder)
  images, labels = np.asarray(images), np.asarray(labels)
  n = len(images)
  if len(labels) != n:
    raise DataError(f'{n} images but {len(labels)} labels')
  order = epoch_order(n, key, epoch)
  for start in range(0, num_batches(n, batch_size, remainder) * batch_size,
                     batch_size):
    index = order[start:start + batch_size]
    image, label = images[index], labels[index]
    mask = np.ones(batch_size, bool)
    if len(index) < batch_size:
      pad = batch_size - len(index)
      image = np.concatenate([image, np.zeros((pad,) + image.shape[1:],
                                              image.dtype)])
      label = np.concatenate([label, np.zeros((pad,), label.dtype)])
      mask[len(index):] = False
    yield jax.device_put(Batch(image, label, mask), sharding)


def _check(batch_size: int, remainder: str) -> None:
  if remainder not in REMAINDERS:
    raise DataError(f'remainder must be one of {REMAINDERS}, got '
                    f'{remainder!r}')
  if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise DataError(f'batch_size must be a positive int, got {batch_size!r}')
