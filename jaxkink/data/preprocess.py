"""Preprocessing as the reference code does it, in JAX.

The reference PyTorch pipelines are ``RandomCrop(32, padding=4)``,
``RandomHorizontalFlip()`` (CIFAR-10 training only), then ``ToTensor()``
(uint8 to float32 in [0, 1], dividing by 255) and ``Normalize(mean, std)``
(subtract, then divide). Here the same steps work on NHWC batches:
:func:`random_crop_flip` on the uint8 images (zero padding, as
``RandomCrop`` pads the image with black before ``ToTensor``), then
:func:`preprocess`, which scales, normalises with the dataset's constants
(:mod:`jaxkink.data.info` cites where each comes from) bit for bit as the
reference code does, and optionally flattens for an MLP. Everything is
jittable; randomness comes only from the explicit key.
"""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from jaxkink.data import info as info_lib
from jaxkink.typing import AnyArray, DTypeLike


def pixel_table(dataset: str | info_lib.DatasetInfo, *,
                normalize: bool = True,
                dtype: DTypeLike = np.float32) -> np.ndarray:
  """The value each uint8 pixel becomes, per channel: ``(256, C)``.

  Computed in numpy float32 exactly as the reference code computes it
  (``ToTensor``: ``v / 255``; ``Normalize``: ``(x - mean) / std``, each one
  correctly rounded float32 operation), then cast to ``dtype``. Looking the
  values up, rather than computing them in XLA, keeps them bit-identical to
  the reference: under ``jit`` XLA rewrites a division by a constant into a
  multiplication by its reciprocal, which differs in the last bit for about
  half of the pixel values.

  Args:
    dataset: the dataset's name or :class:`DatasetInfo`.
    normalize: apply the dataset's mean and std (else [0, 1] only).
    dtype: the table's dtype.
  """
  info = (dataset if isinstance(dataset, info_lib.DatasetInfo)
          else info_lib.get_info(dataset))
  channels = info.image_shape[2]
  x: np.ndarray = np.arange(256, dtype=np.float32) / np.float32(255)
  x = np.repeat(x[:, None], channels, axis=1)
  if normalize:
    x = ((x - np.asarray(info.mean, np.float32))
         / np.asarray(info.std, np.float32))
  return x.astype(dtype)


def preprocess(images: AnyArray, dataset: str | info_lib.DatasetInfo, *,
               normalize: bool = True, flatten: bool = False,
               dtype: DTypeLike = jnp.float32) -> jax.Array:
  """Scales, normalises and optionally flattens a batch of uint8 images.

  The result is bit-identical to the reference code's float32 pipeline
  (``ToTensor()`` then ``Normalize(mean, std)``), also under ``jit``: see
  :func:`pixel_table`.

  Args:
    images: ``(N, H, W, C)`` uint8 (NHWC, for convnets).
    dataset: the dataset's name or :class:`DatasetInfo`, for its constants.
    normalize: subtract the dataset's mean and divide by its std (the
      reference training code); False leaves [0, 1] (the reference
      volume-estimation notebooks).
    flatten: reshape to ``(N, H * W * C)`` for an MLP. The order is HWC;
      for MNIST (one channel) it equals PyTorch's ``nn.Flatten`` order.
    dtype: the result's dtype: the float32 values, cast (as ``.half()`` or
      ``.double()`` of the reference tensor would be).

  Returns:
    ``(N, H, W, C)``, or ``(N, H * W * C)`` with ``flatten``, of ``dtype``.

  Raises:
    TypeError: if ``images`` is not uint8.
  """
  if images.dtype != np.uint8:
    raise TypeError(f'preprocess takes uint8 images, got {images.dtype}')
  table = jnp.asarray(pixel_table(dataset, normalize=normalize,
                                  dtype=jnp.dtype(dtype)))
  x = table[jnp.asarray(images, jnp.int32), jnp.arange(table.shape[1])]
  if flatten:
    x = x.reshape(x.shape[0], -1)
  return x


def random_crop_flip(key: jax.Array, images: AnyArray, *, padding: int = 4,
                     flip: bool = True) -> jax.Array:
  """CIFAR training augmentation: random crop after zero padding, and flip.

  Per image, as ``RandomCrop(H, padding=padding)`` followed by
  ``RandomHorizontalFlip()``: pad by ``padding`` zeros on each side, take
  the ``H x W`` window at an offset drawn uniformly from
  ``0 .. 2 * padding`` in each direction, and mirror left-right with
  probability 1/2.

  Args:
    key: a PRNG key (``jax.random.key``); derive one per step, e.g.
      ``jax.random.fold_in(key, step)``.
    images: ``(N, H, W, C)``, any dtype (normally the uint8 batch, before
      :func:`preprocess`).
    padding: zero padding on each side.
    flip: also apply the random horizontal flip.

  Returns:
    The augmented batch, same shape and dtype.
  """
  n, h, w, c = images.shape
  crop_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * padding + 1)
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding),
                            (0, 0)))
  out = jax.vmap(lambda im, o: lax.dynamic_slice(im, (o[0], o[1], 0),
                                                 (h, w, c)))(padded, offsets)
  if flip:
    mirror = jax.random.bernoulli(flip_key, 0.5, (n,))
    out = jnp.where(mirror[:, None, None, None], out[:, :, ::-1, :], out)
  return out
