"""Exact semantics of relu, relu6, leaky_relu and random_kink_relu."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

import jaxkink
from conftest import assert_bits_equal

DTYPES = (jnp.float32, jnp.float16, jnp.bfloat16)


def vjp(f, x, g):
  return jax.vjp(f, x)[1](g)[0]


# ------------------------------------------------ hand-worked gradients


@pytest.mark.parametrize('s, expected', [(0.0, [0, 0, 3]), (0.5, [0, 1.5, 3]),
                                         (1.0, [0, 3, 3]), (-2.0, [0, -6, 3])])
def test_relu_multiplies_the_cotangent(s, expected):
  x = jnp.array([-1.0, 0.0, 2.0])
  g = jnp.full(3, 3.0)
  np.testing.assert_array_equal(vjp(lambda x: jaxkink.relu(x, s), x, g),
                                expected)


@pytest.mark.parametrize('s', [0.0, 0.5, 1.0])
def test_relu_legacy_assigns_the_kink_value(s):
  x = jnp.array([-1.0, 0.0, 2.0])
  g = jnp.full(3, 3.0)
  got = vjp(lambda x: jaxkink.relu(x, s, legacy=True), x, g)
  np.testing.assert_array_equal(got, [0.0, s, 3.0])


def test_relu6_kinks_at_0_and_6():
  x = jnp.array([-1.0, 0.0, 3.0, 6.0, 7.0])
  g = jnp.full(5, 2.0)
  got = vjp(lambda x: jaxkink.relu6(x, 0.25, 0.75), x, g)
  np.testing.assert_array_equal(got, [0, 0.5, 2, 1.5, 0])
  legacy = vjp(lambda x: jaxkink.relu6(x, 0.25, 0.75, legacy=True), x, g)
  np.testing.assert_array_equal(legacy, [0, 0.25, 2, 0.75, 0])
  np.testing.assert_array_equal(jaxkink.relu6(x), [0, 0, 3, 6, 6])


@pytest.mark.parametrize('s', [0.0, 0.5, 1.0])
def test_leaky_relu(s):
  x = jnp.array([-2.0, 0.0, 3.0])
  g = jnp.full(3, 2.0)
  np.testing.assert_array_equal(jaxkink.leaky_relu(x, 0.125, s),
                                [-0.25, 0, 3])
  got = vjp(lambda x: jaxkink.leaky_relu(x, 0.125, s), x, g)
  np.testing.assert_array_equal(got, [0.25, 2 * s, 2])
  legacy = vjp(lambda x: jaxkink.leaky_relu(x, 0.125, s, legacy=True), x, g)
  np.testing.assert_array_equal(legacy, [0.25, s, 2])
  # The slope is a parameter: d/dslope sum(leaky(x)) = sum of negative x.
  dslope = jax.grad(lambda a: jaxkink.leaky_relu(x, a, s).sum())(0.125)
  assert dslope == -2.0


def test_kink_values_get_zero_cotangent():
  x = jnp.array([-1.0, 0.0, 0.0, 6.0])
  assert jax.grad(lambda s: jaxkink.relu(x, s).sum())(0.3) == 0
  ga, gb = jax.grad(lambda a, b: jaxkink.relu6(x, a, b).sum(),
                    argnums=(0, 1))(0.3, 0.7)
  assert ga == 0 and gb == 0


def test_smooth_gradients_away_from_the_kinks():
  x = jnp.array([-1.5, -0.25, 0.5, 2.0, 5.5, 7.0])
  for s in (0.0, 0.7):
    check_grads(lambda x: jaxkink.relu(x, s), (x,), order=2,
                modes=('fwd', 'rev'))
    check_grads(lambda x: jaxkink.relu6(x, s, 1 - s), (x,), order=2,
                modes=('fwd', 'rev'))
    check_grads(lambda x: jaxkink.leaky_relu(x, 0.1, s), (x,), order=2,
                modes=('fwd', 'rev'))


def test_forward_mode_uses_the_same_kink():
  x = jnp.array([-1.0, 0.0, 1.0])
  np.testing.assert_array_equal(jax.jacfwd(jaxkink.relu)(x, 0.3),
                                np.diag([0, 0.3, 1]).astype(np.float32))
  np.testing.assert_array_equal(jax.jacrev(jaxkink.relu)(x, 0.3),
                                np.diag([0, 0.3, 1]).astype(np.float32))
  with pytest.raises(TypeError):  # legacy is a custom_vjp: reverse only
    jax.jacfwd(lambda x: jaxkink.relu(x, 0.3, legacy=True))(x)


# ---------------------------------------- defaults are JAX's conventions


@pytest.mark.parametrize('dtype', DTYPES)
def test_defaults_are_bit_identical_to_jax_nn(dtype, rng):
  # Integer-valued inputs put many entries exactly on the kinks; signed
  # cotangents make 0 * g = -0.0 visible if it leaked through.
  x = jnp.asarray(rng.integers(-3, 9, size=(64, 33)), dtype)
  g = jnp.asarray(rng.standard_normal((64, 33)), dtype)
  pairs = [(jaxkink.relu, jax.nn.relu), (jaxkink.relu6, jax.nn.relu6),
           (jaxkink.leaky_relu, jax.nn.leaky_relu)]
  for ours, theirs in pairs:
    assert_bits_equal(ours(x), theirs(x))
    assert_bits_equal(vjp(ours, x, g), vjp(theirs, x, g))
    assert_bits_equal(jax.jit(jax.grad(lambda x: (ours(x) * g).sum()))(x),
                      jax.jit(jax.grad(lambda x: (theirs(x) * g).sum()))(x))


def test_forward_never_depends_on_the_kink_value(rng):
  x = jnp.asarray(rng.integers(-3, 9, size=(50,)), jnp.float32)
  for s in (0.0, 0.5, 1.0, 100.0):
    assert_bits_equal(jaxkink.relu(x, s), jax.nn.relu(x))
    assert_bits_equal(jaxkink.relu6(x, s, s), jax.nn.relu6(x))
    assert_bits_equal(jaxkink.leaky_relu(x, 0.01, s), jax.nn.leaky_relu(x))


# ----------------------------------------- runtime values: jit and vmap


def test_new_kink_value_does_not_recompile():
  traces = []

  @jax.jit
  def grad(x, s):
    traces.append(1)  # runs once per trace, i.e. once per compilation
    return jax.grad(lambda x: jaxkink.relu(x, s).sum())(x)

  x = jnp.zeros(4)
  for s in (0.0, 0.25, 1.0, 3.0):
    np.testing.assert_array_equal(grad(x, s), np.full(4, float(s)))
  assert len(traces) == 1
  assert grad._cache_size() == 1  # pylint: disable=protected-access


def test_vmap_over_kink_values_equals_separate_calls(rng):
  # Programs of other shapes, compared bit for bit all the same: the rules
  # are elementwise selects and at most one multiply (s * g) per element,
  # with no reduction or product whose kernel XLA picks by CPU and shape and
  # no multiply-add to fuse into an FMA, so every CPU gives the same bits.
  x = jnp.asarray(rng.integers(-2, 3, size=(7, 5)), jnp.float32)
  g = jnp.asarray(rng.standard_normal((7, 5)), jnp.float32)
  ss = jnp.array([0.0, 0.1, 0.5, 1.0, 3.0])
  grad = lambda s: vjp(lambda x: jaxkink.relu(x, s), x, g)
  batched = jax.jit(jax.vmap(grad))(ss)
  for i, s in enumerate(ss):
    assert_bits_equal(batched[i], jax.jit(grad)(s))
  grad6 = lambda a, b: vjp(lambda x: jaxkink.relu6(x * 3, a, b), x, g)
  batched6 = jax.vmap(grad6)(ss, 1 - ss)
  for i, s in enumerate(ss):
    assert_bits_equal(batched6[i], grad6(s, 1 - s))


def test_vmap_over_inputs_and_over_both(rng):
  xs = jnp.asarray(rng.integers(-2, 3, size=(4, 6)), jnp.float32)
  ss = jnp.array([0.0, 0.3, 0.6, 1.0])
  d = jax.grad(lambda x, s: jaxkink.relu(x, s).sum())
  over_x = jax.vmap(d, in_axes=(0, None))(xs, 0.3)
  over_both = jax.vmap(d)(xs, ss)
  nested = jax.vmap(jax.vmap(d, in_axes=(None, 0)), in_axes=(0, None))(xs, ss)
  for i in range(4):
    assert_bits_equal(over_x[i], d(xs[i], 0.3))
    assert_bits_equal(over_both[i], d(xs[i], ss[i]))
    for j in range(4):
      assert_bits_equal(nested[i, j], d(xs[i], ss[j]))


def test_per_channel_kink_values_broadcast():
  x = jnp.zeros((2, 3))
  s = jnp.array([0.0, 0.5, 1.0])
  g = jax.grad(lambda x: jaxkink.relu(x, s).sum())(x)
  np.testing.assert_array_equal(g, np.tile([0.0, 0.5, 1.0], (2, 1)))
  per_element = jnp.arange(6.0).reshape(2, 3)
  g = jax.grad(lambda x: jaxkink.relu6(x, per_element).sum())(x)
  np.testing.assert_array_equal(g, per_element)
  with pytest.raises(ValueError, match='does not broadcast'):
    jaxkink.relu(x, jnp.ones((4, 3)))
  with pytest.raises(ValueError, match='does not broadcast'):
    jaxkink.relu(jnp.zeros(3), jnp.ones((2, 3)))  # would enlarge the input


def test_kink_value_is_cast_to_the_input_dtype():
  x = jnp.zeros(3, jnp.float16)
  g = jax.grad(lambda x: jaxkink.relu(x, 0.1).astype(jnp.float32).sum())(x)
  assert g.dtype == jnp.float16
  np.testing.assert_array_equal(g, np.full(3, np.float16(0.1)))


# ------------------------------------------------------------- random kink


def test_random_kink_relu_draws_uniform_per_element():
  x = jnp.zeros((1000,))
  key = jax.random.key(0)
  g = jax.grad(lambda x: jaxkink.random_kink_relu(x, key).sum())(x)
  np.testing.assert_array_equal(g, jax.random.uniform(key, (1000,)))
  assert 0 <= g.min() and g.max() < 1 and 0.45 < g.mean() < 0.55
  g2 = jax.grad(lambda x: jaxkink.random_kink_relu(x, key).sum())(x)
  assert_bits_equal(g, g2)
  other = jax.grad(
      lambda x: jaxkink.random_kink_relu(x, jax.random.key(1)).sum())(x)
  assert np.any(np.asarray(other) != np.asarray(g))
  # Off the kink it is a plain ReLU.
  y = jnp.array([-1.0, 2.0])
  np.testing.assert_array_equal(
      jax.grad(lambda y: jaxkink.random_kink_relu(y, key).sum())(y), [0, 1])
