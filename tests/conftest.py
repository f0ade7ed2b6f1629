"""Shared test helpers."""

from __future__ import annotations

import numpy as np
import pytest


def bits(a) -> np.ndarray:
  """The raw bits of a float array, so -0.0 and +0.0 (and NaNs) differ."""
  a = np.asarray(a)
  return a.view(np.dtype(f'u{a.dtype.itemsize}'))


def assert_bits_equal(a, b) -> None:
  a, b = np.asarray(a), np.asarray(b)
  assert a.dtype == b.dtype, (a.dtype, b.dtype)
  assert a.shape == b.shape, (a.shape, b.shape)
  diff = np.flatnonzero(bits(a) != bits(b))
  assert diff.size == 0, (
      f'{diff.size} of {a.size} elements differ in their bits, first at flat '
      f'index {diff[:5]}: {a.ravel()[diff[:5]]} vs {b.ravel()[diff[:5]]}')


@pytest.fixture
def rng() -> np.random.Generator:
  return np.random.default_rng(20211206)
