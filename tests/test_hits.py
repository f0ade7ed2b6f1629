"""Kink-hit counters against direct numpy counts."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

import jaxkink


def test_relu_hits_counts_exact_zeros_and_min_distance():
  x = jnp.array([[0.0, -0.0, 1e-3, -2.0], [3.0, -5e-4, 0.0, 7.0]])
  hits = jaxkink.relu_hits(x)
  assert int(hits.count) == 3  # -0.0 compares equal to 0: it is a hit
  assert float(hits.min_distance) == 0.0
  per_row = jaxkink.relu_hits(x, axis=1)
  np.testing.assert_array_equal(per_row.count, [2, 1])
  nonzero = jaxkink.relu_hits(x[x != 0])
  assert int(nonzero.count) == 0
  assert float(nonzero.min_distance) == np.float32(5e-4)


def test_relu6_hits_both_kinks():
  x = jnp.array([0.0, 6.0, 5.75, 3.0, 6.5, -1.0])
  hits = jaxkink.relu6_hits(x)
  assert int(hits.count) == 2
  far = jaxkink.relu6_hits(x[2:])
  assert int(far.count) == 0 and float(far.min_distance) == 0.25


def test_hits_agree_with_numpy_on_random_integers(rng):
  x = rng.integers(-3, 9, size=(40, 17)).astype(np.float32)
  assert int(jaxkink.relu_hits(x).count) == np.sum(x == 0)
  assert int(jaxkink.relu6_hits(x).count) == np.sum((x == 0) | (x == 6))
  batched = jax.vmap(jaxkink.relu_hits)(jnp.asarray(x))
  np.testing.assert_array_equal(batched.count, np.sum(x == 0, axis=1))
  np.testing.assert_array_equal(batched.min_distance,
                                np.min(np.abs(x), axis=1))


def _numpy_pool_ties(x, window, strides):
  """Tied windows and the smallest top-two gap, VALID padding, by loops."""
  n, h, w, c = x.shape
  ties, gaps = 0, []
  for b, ch in itertools.product(range(n), range(c)):
    for i in range(0, h - window[0] + 1, strides[0]):
      for j in range(0, w - window[1] + 1, strides[1]):
        v = np.sort(x[b, i:i + window[0], j:j + window[1], ch].ravel())[::-1]
        ties += v[0] == v[1]
        gaps.append(0.0 if v[0] == v[1] else v[0] - v[1])
  return ties, min(gaps)


def test_pool_hits_against_numpy(rng):
  for window, strides in (((2, 2), (2, 2)), ((3, 3), (1, 1)), ((2, 3), (2, 1))):
    x = rng.integers(0, 6, size=(2, 6, 7, 3)).astype(np.float32)
    hits = jaxkink.pool_hits(x, window, strides)
    ties, gap = _numpy_pool_ties(x, window, strides)
    assert int(hits.count) == ties
    assert float(hits.min_distance) == gap
    smooth = rng.standard_normal((2, 6, 7, 3)).astype(np.float32)
    hits = jaxkink.pool_hits(smooth, window, strides)
    ties, gap = _numpy_pool_ties(smooth, window, strides)
    assert int(hits.count) == ties == 0
    assert float(hits.min_distance) == gap > 0


def test_pool_hits_ignores_padding():
  # Every member equals -1; padded slots (-inf) must neither tie nor count.
  x = jnp.full((1, 1, 3, 1), -1.0)
  hits = jaxkink.pool_hits(x, (1, 2), (1, 2), 'SAME')
  # Windows: [-1, -1] (a tie) and [-1, pad] (a single valid member).
  assert int(hits.count) == 1


def test_no_hit_means_every_kink_value_gives_the_same_gradient(rng):
  x = jnp.asarray(rng.standard_normal((8, 5)), jnp.float32)
  assert int(jaxkink.relu_hits(x).count) == 0
  grad = lambda s: jax.grad(lambda x: (jaxkink.relu(x, s) ** 2).sum())(x)
  np.testing.assert_array_equal(grad(0.0), grad(1.0))
