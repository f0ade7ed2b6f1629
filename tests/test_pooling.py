"""Exact semantics of max_pool: forward, native / minimal / hybrid backward."""

from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

import jaxkink
from conftest import assert_bits_equal

# (window, strides, padding): non-overlapping, overlapping (ResNet's 3x3/2
# pad 1), stride 1, SAME, uneven windows and strides.
CONFIGS = [
    ((2, 2), (2, 2), 'VALID'),
    ((3, 3), (2, 2), ((1, 1), (1, 1))),
    ((3, 3), (1, 1), 'SAME'),
    ((2, 3), (1, 2), 'SAME'),
    ((3, 2), (2, 1), ((0, 2), (1, 0))),
]


def pool(x, config, beta=0.0, **kw):
  window, strides, padding = config
  return jaxkink.max_pool(x, window, strides, padding, beta, **kw)


def pool_vjp(x, config, beta, g, **kw):
  return jax.vjp(lambda x: pool(x, config, beta, **kw), x)[1](g)[0]


def _pads(shape, window, strides, padding):
  if not isinstance(padding, str):
    return [tuple(p) for p in padding]
  return lax.padtype_to_pads(shape, window, strides, padding)


def numpy_pool_grad(x, window, strides, padding, g, beta):
  """Independent reference: a loop over every window, in float32 numpy.

  The documented rule: a window whose maximum is attained once sends its
  cotangent g to it; a tied window with maxima A (row-major order) sends
  g to the first (beta = 0), g / |A| to each (beta = 1), or otherwise
  g * ((1 - beta) + beta / |A|) to the first and g * (beta / |A|) to the
  others. Contributions are added window by window in row-major order.
  """
  f32 = np.float32
  x = np.asarray(x, f32)
  g = np.asarray(g, f32)
  beta = f32(beta)
  n, h, w, c = x.shape
  (plo_h, _), (plo_w, _) = _pads((h, w), window, strides, padding)
  dx = np.zeros_like(x)
  _, oh, ow, _ = g.shape
  for b, i, j, ch in itertools.product(range(n), range(oh), range(ow),
                                       range(c)):
    members = []  # (row, col) of valid members, row-major window order
    for di, dj in itertools.product(range(window[0]), range(window[1])):
      r = i * strides[0] + di - plo_h
      q = j * strides[1] + dj - plo_w
      if 0 <= r < h and 0 <= q < w:
        members.append((r, q))
    vals = [x[b, r, q, ch] for r, q in members]
    top = max(vals)
    arg = [m for m, v in zip(members, vals) if v == top]
    gw = g[b, i, j, ch]
    k = f32(len(arg))
    if len(arg) == 1 or beta == 0:
      share = [gw] + [f32(0)] * (len(arg) - 1)
    elif beta == 1:
      share = [gw / k] * len(arg)
    else:
      rest = beta / k
      share = [gw * ((f32(1) - beta) + rest)] + [gw * rest] * (len(arg) - 1)
    for (r, q), v in zip(arg, share):
      dx[b, r, q, ch] += v
  return dx


def ties_input(rng, shape=(2, 7, 8, 3)):
  return jnp.asarray(rng.integers(0, 3, size=shape), jnp.float32)


def dyadic_cotangent(rng, shape):
  return jnp.asarray(4 * rng.integers(-4, 5, size=shape), jnp.float32)


# ------------------------------------------------------------------ forward


@pytest.mark.parametrize('config', CONFIGS)
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.float16, jnp.bfloat16])
def test_forward_is_reduce_window_max(config, dtype, rng):
  window, strides, padding = config
  x = jnp.asarray(rng.standard_normal((2, 7, 8, 3)), dtype)
  want = lax.reduce_window(x, jnp.array(-jnp.inf, dtype), lax.max,
                           (1, *window, 1), (1, *strides, 1),
                           padding if isinstance(padding, str)
                           else ((0, 0), *padding, (0, 0)))
  for beta in (0.0, 1.0, 3.0):
    assert_bits_equal(pool(x, config, beta), want)
  assert_bits_equal(pool(x, config), nn.max_pool(x, window, strides, padding))


# ------------------------------------------------------- native backward


@pytest.mark.parametrize('config', CONFIGS)
def test_native_backward_equals_flax(config, rng):
  window, strides, padding = config
  for x in (jnp.asarray(rng.standard_normal((2, 7, 8, 3)), jnp.float32),
            ties_input(rng)):
    y = pool(x, config)
    g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
    flax_grad = jax.vjp(lambda x: nn.max_pool(x, window, strides, padding),
                        x)[1](g)[0]
    assert_bits_equal(pool_vjp(x, config, 0.0, g), flax_grad)


@pytest.mark.parametrize('config', CONFIGS)
@pytest.mark.parametrize('beta', [0.0, 1.0, 0.3, 2.0, -1.0, 1e3])
def test_backward_equals_numpy_reference_on_ties(config, beta, rng):
  x = ties_input(rng)
  g = jnp.asarray(rng.standard_normal(pool(x, config).shape), jnp.float32)
  want = numpy_pool_grad(x, *config, g, beta)
  assert_bits_equal(pool_vjp(x, config, beta, g), want)
  assert_bits_equal(jax.jit(lambda g: pool_vjp(x, config, beta, g))(g), want)


# ------------------------------------------------------- hybrid backward


@pytest.mark.parametrize('config', CONFIGS[:1])
@pytest.mark.parametrize('beta', [0.5, 2.0, -1.0, 10.0])
def test_hybrid_is_affine_in_beta_exactly(config, beta, rng):
  # Dyadic beta and cotangents, windows whose ties number 1, 2 or 4: every
  # weight, product and sum is exact, so the rule is exactly affine in beta.
  patterns = np.array([[0, 1, 2, 3], [3, 3, 1, 0], [2, 2, 2, 2], [1, 5, 5, 0],
                       [4, 4, 4, 4], [0, 0, 0, 0]], np.float32)
  windows = patterns[rng.integers(0, len(patterns), size=(2, 3, 4, 3))]
  windows = rng.permuted(windows, axis=-1).reshape(2, 3, 4, 3, 2, 2)
  x = jnp.asarray(windows.transpose(0, 1, 4, 2, 5, 3).reshape(2, 6, 8, 3))
  g = dyadic_cotangent(rng, pool(x, config).shape)
  native = np.asarray(pool_vjp(x, config, 0.0, g), np.float64)
  minimal = np.asarray(pool_vjp(x, config, 1.0, g), np.float64)
  got = pool_vjp(x, config, beta, g)
  np.testing.assert_array_equal(np.asarray(got, np.float64),
                                (1 - beta) * native + beta * minimal)


@pytest.mark.parametrize('beta', [0.3, 0.9, 1e3])
def test_hybrid_general_beta(beta, rng):
  config = CONFIGS[1]
  x = ties_input(rng)
  g = jnp.asarray(rng.standard_normal(pool(x, config).shape), jnp.float32)
  native = pool_vjp(x, config, 0.0, g)
  minimal = pool_vjp(x, config, 1.0, g)
  np.testing.assert_allclose(pool_vjp(x, config, beta, g),
                             (1 - beta) * native + beta * minimal,
                             rtol=1e-5, atol=1e-4 * max(1.0, beta))


@pytest.mark.parametrize('config', CONFIGS)
def test_without_ties_every_beta_gives_the_same_bits(config, rng):
  x = jnp.asarray(rng.standard_normal((2, 7, 8, 3)), jnp.float32)
  window, strides, padding = config
  assert int(jaxkink.pool_hits(x, window, strides, padding).count) == 0
  g = jnp.asarray(rng.standard_normal(pool(x, config).shape), jnp.float32)
  reference = pool_vjp(x, config, 0.0, g)
  for beta in (1.0, 0.3, 2.0, -1.0, 1e4):
    assert_bits_equal(pool_vjp(x, config, beta, g), reference)


def test_padding_never_wins_a_window():
  # All inputs are -5, well below 0, and SAME padding surrounds them: with
  # zero padding the padded slots would win; with -inf they never do.
  x = jnp.full((1, 3, 3, 1), -5.0)
  g = jnp.ones((1, 3, 3, 1))
  for beta in (0.0, 1.0):
    dx = pool_vjp(x, ((3, 3), (1, 1), 'SAME'), beta, g)
    assert float(dx.sum()) == 9.0  # all of the cotangent reaches the input


# ------------------------------------------------ the paper's worked example


def test_tmlr_appendix_a5_worked_example():
  """Boustany (TMLR), Appendix A.5: native vs minimal backprop of W.

  l(W) = MaxPool_2x2(X * W) with W = k * ones(3, 3) and a 4x4 input X. The
  paper's text lost the matrix X; this one is reconstructed from its stated
  results: the 2x2 convolution output is (k, k; 0, 0), so the pooling
  window ties between its two top entries, and the paper gives
  backprop[P](W) = e_00 (native) and backprop[Q](W) = (e_00 + e_02) / 2
  (minimal).
  """
  x = jnp.array([[1.0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
  k = 0.75

  def loss(w, beta):
    z = lax.conv_general_dilated(x[None, :, :, None], w[:, :, None, None],
                                 (1, 1), 'VALID',
                                 dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jaxkink.max_pool(z, (2, 2), beta=beta)[0, 0, 0, 0]

  w = k * jnp.ones((3, 3))
  assert loss(w, 0.0) == k
  np.testing.assert_array_equal(jax.grad(loss)(w, 0.0),
                                [[1, 0, 0], [0, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(jax.grad(loss)(w, 1.0),
                                [[0.5, 0, 0.5], [0, 0, 0], [0, 0, 0]])


# --------------------------------------------------- runtime beta, modes


def test_vmap_over_beta_one_compile_equals_separate_calls(rng):
  # Programs of other shapes, compared bit for bit all the same: the
  # backward is elementwise (selects, one division and one product per
  # contribution, each correctly rounded) plus the window sums, added in an
  # order the program fixes, with selects and pads between each product and
  # the add it feeds (no FMA contraction: the numpy reference above rounds
  # every operation separately). No kernel is picked by shape.
  x = ties_input(rng)
  config = CONFIGS[1]
  g = jnp.asarray(rng.standard_normal(pool(x, config).shape), jnp.float32)
  traces = []

  def grad(beta):
    traces.append(1)
    return pool_vjp(x, config, beta, g)

  betas = jnp.array([0.0, 1.0, 10.0, 100.0, 1e3])
  batched = jax.jit(jax.vmap(grad))(betas)
  single = jax.jit(grad)
  for i, beta in enumerate(betas):
    assert_bits_equal(batched[i], single(beta))
  assert len(traces) == 2  # one trace for the vmapped program, one single


def test_vmap_over_inputs_and_beta(rng):
  xs = jnp.stack([ties_input(rng) for _ in range(3)])
  betas = jnp.array([0.0, 0.5, 1.0])
  f = jax.grad(lambda x, b: (pool(x, CONFIGS[0], b) ** 2).sum())
  both = jax.vmap(f)(xs, betas)
  for i in range(3):
    assert_bits_equal(both[i], f(xs[i], betas[i]))


def test_per_channel_beta():
  x = jnp.zeros((1, 2, 2, 2))
  beta = jnp.array([0.0, 1.0])
  dx = jax.grad(lambda x: pool(x, CONFIGS[0], beta).sum())(x)
  np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 0], [0, 0]])
  np.testing.assert_array_equal(dx[0, :, :, 1], [[0.25, 0.25], [0.25, 0.25]])


def test_unbatched_input_matches_batched(rng):
  x = ties_input(rng, (7, 8, 3))
  g = jax.grad(lambda x: pool(x, CONFIGS[1], 1.0).sum())
  assert_bits_equal(g(x), g(x[None])[0])
  assert pool(x, CONFIGS[1]).shape == (4, 4, 3)


def test_blended_forward_reproduces_the_reference_rounding():
  # A value whose blend (1 - beta) * y + beta * y does not round back to y.
  x = jnp.full((1, 2, 2, 1), 0.1, jnp.float32)
  for beta in (0.0, 1.0):
    assert pool(x, CONFIGS[0], beta, blended_forward=True)[0, 0, 0, 0] == (
        np.float32(0.1))
  beta = np.float32(1e4)
  want = (np.float32(1) - beta) * np.float32(0.1) + beta * np.float32(0.1)
  got = pool(x, CONFIGS[0], beta, blended_forward=True)[0, 0, 0, 0]
  assert got == want and want != np.float32(0.1)
  g = jnp.ones((1, 1, 1, 1))
  assert_bits_equal(pool_vjp(x, CONFIGS[0], beta, g, blended_forward=True),
                    pool_vjp(x, CONFIGS[0], beta, g))


@pytest.mark.parametrize('args, error', [
    (((2, 2), (2,), 'VALID'), 'one entry per window'),
    (((2, 2), (2, 2), 'FULL'), 'padding must be'),
    (((2, 2), (2, 2), ((1, 1),)), 'one \\(low, high\\) pair'),
    (((9, 9), (1, 1), 'VALID'), 'does not fit'),
    (((0, 2), (1, 1), 'VALID'), 'must be positive'),
    (((2, 2), (1, 1), ((-1, 0), (0, 0))), 'negative padding'),
])
def test_bad_arguments_give_clear_errors(args, error):
  with pytest.raises(ValueError, match=error):
    jaxkink.max_pool(jnp.zeros((1, 4, 4, 1)), *args)


def test_integer_input_is_refused():
  with pytest.raises(TypeError, match='floating-point'):
    jaxkink.max_pool(jnp.zeros((1, 4, 4, 1), jnp.int32), (2, 2))


def test_beta_shape_is_checked():
  with pytest.raises(ValueError, match='does not broadcast'):
    jaxkink.max_pool(jnp.zeros((1, 4, 4, 2)), (2, 2), beta=jnp.ones(3))
