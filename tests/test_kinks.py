"""The Kinks pytree: routing, defaults, modes, jit and vmap."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkink
from conftest import assert_bits_equal, assert_close_ulps, ulp_distance


class TinyNet(nn.Module):
  """A conv + pool + MLP whose nonsmooth ops go through ``kinks``."""

  @nn.compact
  def __call__(self, x, kinks: jaxkink.Kinks):
    x = nn.Conv(4, (3, 3))(x)
    x = kinks.max_pool(kinks.relu(x), (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    x = kinks.relu6(nn.Dense(8)(x))
    x = kinks.leaky_relu(nn.Dense(8)(x), 0.1)
    return nn.Dense(3)(x)


class ReferenceNet(nn.Module):
  """The same network written with JAX's and Flax's own functions."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.max_pool(jax.nn.relu(x), (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu6(nn.Dense(8)(x))
    x = jax.nn.leaky_relu(nn.Dense(8)(x), 0.1)
    return nn.Dense(3)(x)


def _setup(rng):
  # Integer images with a blank 4 x 4 corner: with the first layer's zero
  # biases, its top-left 2 x 2 outputs are exactly 0 and tie in a pooling
  # window, so ReLU'(0) and the tie rule change the gradients.
  x = jnp.asarray(rng.integers(0, 2, size=(4, 6, 6, 1)), jnp.float32)
  x = x.at[:, :4, :4].set(0.0)
  params = TinyNet().init(jax.random.key(0), x, jaxkink.Kinks())
  return x, params


def test_default_kinks_match_jax_and_flax_bit_for_bit(rng):
  # Not jitted on purpose: eagerly, every primitive (each convolution, dot,
  # reduction) runs as its own program on the same shapes in both
  # networks, so they share kernels and only the kink rules differ. Jitted,
  # the two differently written programs could get other kernels from XLA
  # (tests/test_models.py compares jitted models with exact arithmetic).
  x, params = _setup(rng)
  loss = lambda p: (TinyNet().apply(p, x, jaxkink.Kinks()) ** 2).sum()
  ref = lambda p: (ReferenceNet().apply(p, x) ** 2).sum()
  assert_bits_equal(loss(params), ref(params))
  jax.tree.map(assert_bits_equal, jax.grad(loss)(params), jax.grad(ref)(params))


def test_kink_values_are_leaves_and_modes_are_static():
  kinks = jaxkink.Kinks(relu_s=0.5, legacy_relu_grad=True)
  assert jax.tree.leaves(kinks) == [0.5, 0.0, 0.0, 1.0, 0.0]
  leaves, treedef = jax.tree.flatten(kinks)
  assert jax.tree.unflatten(treedef, leaves).legacy_relu_grad


# A lone program and a vmapped one have other shapes: XLA computes a
# convolution's weight gradient with another summation order when the
# cotangent carries a vmapped axis (measured on CPU: the conv kernel
# differs in the last bits even for the s = 0 member), and may pick other
# GEMM kernels for the dense layers' batched products on other CPUs. Sums
# here have at most 64 terms (the conv kernel's gradient over 4 x 4 x 4
# positions): KINK_ULPS, in ulps of the largest gradient element, bounds a
# reordering of them (measured here, with and without YNNPACK and FMA: 1/8
# of one), and is far below what another kink value changes (checked).
KINK_ULPS = 64


def test_vmap_over_kinks_one_compile(rng):
  x, params = _setup(rng)
  traces = []

  def grad(s, beta):
    traces.append(1)
    kinks = jaxkink.Kinks(relu_s=s, pool_beta=beta)
    return jax.grad(lambda p: TinyNet().apply(p, x, kinks).sum())(params)

  ss = jnp.array([0.0, 0.5, 1.0])
  betas = jnp.array([0.0, 1.0, 10.0])
  sweep = jax.jit(jax.vmap(grad))
  batched = sweep(ss, betas)
  assert len(traces) == 1
  # Members of one program do not depend on each other or on their place:
  # the same program on the values reversed gives the members reversed,
  # bit for bit.
  reversed_ = sweep(ss[::-1], betas[::-1])
  assert len(traces) == 1
  jax.tree.map(lambda a, b: assert_bits_equal(a[::-1], b), batched, reversed_)
  single = jax.jit(grad)
  members = []
  for i in range(3):
    want = single(ss[i], betas[i])
    got = jax.tree.map(lambda a, i=i: a[i], batched)
    scale = max(float(jnp.abs(a).max()) for a in jax.tree.leaves(want))
    jax.tree.map(lambda a, b, scale=scale: assert_close_ulps(
        a, b, KINK_ULPS, scale), got, want)
    members.append((want, scale))
  assert len(traces) == 2
  # The kink values matter on this net (ties and zeros): members differ far
  # beyond the tolerance.
  (want0, scale0), (want1, _), _ = members
  assert max(ulp_distance(a, b, scale0).max() for a, b in zip(
      jax.tree.leaves(want1), jax.tree.leaves(want0))) > 1000 * KINK_ULPS


def test_legacy_mode_changes_relu_but_not_leaky():
  x = jnp.array([0.0, 0.0])
  g = jnp.array([3.0, -2.0])
  legacy = jaxkink.Kinks(relu_s=0.5, relu6_alpha=0.25, leaky_s=0.5,
                         legacy_relu_grad=True)
  normal = legacy.replace(legacy_relu_grad=False)
  vjp = lambda f: jax.vjp(f, x)[1](g)[0]
  np.testing.assert_array_equal(vjp(legacy.relu), [0.5, 0.5])
  np.testing.assert_array_equal(vjp(normal.relu), [1.5, -1.0])
  np.testing.assert_array_equal(vjp(legacy.relu6), [0.25, 0.25])
  np.testing.assert_array_equal(vjp(legacy.leaky_relu), [1.5, -1.0])


def test_blended_pool_forward_mode():
  x = jnp.full((1, 2, 2, 1), 0.1)
  kinks = jaxkink.Kinks(pool_beta=1e4, blended_pool_forward=True)
  assert kinks.max_pool(x, (2, 2), (2, 2))[0, 0, 0, 0] != np.float32(0.1)
  assert kinks.replace(blended_pool_forward=False).max_pool(
      x, (2, 2), (2, 2))[0, 0, 0, 0] == np.float32(0.1)


def test_bad_kink_shape_is_reported(rng):
  x, params = _setup(rng)
  with pytest.raises(ValueError, match='does not broadcast'):
    TinyNet().apply(params, x, jaxkink.Kinks(relu_s=jnp.ones(5)))


def test_sweep_maps_only_the_swept_fields():
  kinks, axes = jaxkink.Kinks.sweep(relu_s=[0.0, 0.5, 1.0],
                                    pool_beta=[0.0, 0.0, 1.0])
  assert axes.relu_s == 0 and axes.pool_beta == 0
  assert axes.leaky_s is None and axes.relu6_alpha is None
  x = jnp.zeros((1, 2, 2, 1))  # a tie in the window and ReLU'(0) at every x

  def grad(k, x):
    return jax.grad(lambda v: k.max_pool(k.relu(v), (2, 2), (2, 2)).sum())(x)
  g = jax.vmap(grad, in_axes=(axes, None))(kinks, x)
  # Hand-worked (DESIGN.md section 2): the pool's cotangent, native (beta =
  # 0) all on the first of the four tied members, minimal (beta = 1) 1/4 on
  # each, times ReLU'(0) = s.
  want = np.zeros((3, 1, 2, 2, 1), np.float32)
  want[1, 0, 0, 0, 0] = 0.5
  want[2] = 0.25
  np.testing.assert_array_equal(g, want)
  with pytest.raises(ValueError, match='rank should be at least 1'):
    jax.vmap(grad, in_axes=(0, None))(kinks, x)


@pytest.mark.parametrize('values, match', [
    ({}, 'at least one field'),
    ({'legacy_relu_grad': [True]}, 'cannot sweep legacy_relu_grad'),
    ({'relu_z': [0.0]}, 'cannot sweep relu_z'),
    ({'relu_s': [0.0, 1.0], 'pool_beta': [0.0]}, 'one length'),
    ({'relu_s': 0.5}, '1-D'),
])
def test_sweep_bad_values(values, match):
  with pytest.raises(ValueError, match=match):
    jaxkink.Kinks.sweep(**values)


def test_stack():
  k = jaxkink.Kinks.stack([jaxkink.Kinks(relu_s=0.0),
                           jaxkink.Kinks(relu_s=1.0, pool_beta=1.0)])
  np.testing.assert_array_equal(k.relu_s, [0.0, 1.0])
  np.testing.assert_array_equal(k.pool_beta, [0.0, 1.0])
  g = jax.vmap(lambda kk: jax.grad(lambda v: kk.relu(v))(0.0))(k)
  np.testing.assert_array_equal(g, [0.0, 1.0])
  with pytest.raises(ValueError, match='static modes'):
    jaxkink.Kinks.stack([jaxkink.Kinks(), jaxkink.Kinks(legacy_relu_grad=True)])
  with pytest.raises(ValueError, match='at least one'):
    jaxkink.Kinks.stack([])
