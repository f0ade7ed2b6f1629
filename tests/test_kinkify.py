"""kinkify and audit on programs jaxkink did not write (DESIGN.md section 9)."""

from __future__ import annotations

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxkink
from jaxkink import Kinks
from tests.conftest import assert_bits_equal

KINKS = [Kinks(), Kinks(relu_s=1.0), Kinks(relu_s=0.5, pool_beta=1.0),
         Kinks(relu_s=0.25, pool_beta=0.5), Kinks(relu_s=2.0, pool_beta=3.0)]
NO_AXES = dict(relu_s=None, relu6_alpha=None, relu6_beta=None, leaky_s=None,
               pool_beta=None)


def _ints(rng, shape, lo=-1, hi=2):
  """Integer-valued float32 arrays: exact sums, so exact zeros and ties."""
  return jnp.asarray(rng.integers(lo, hi, shape), jnp.float32)


def _int_variables(module, rng, *args):
  """``module``'s variables, every one integer-valued (no init compiled)."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), *args)
  return jax.tree_util.tree_map(lambda l: _ints(rng, l.shape), shapes)


class CNN(nn.Module):
  """A plain flax.linen CNN, no jaxkink in it."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), padding='SAME')(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(4, (3, 3), padding='VALID', use_bias=False)(x))
    x = nn.max_pool(x, (2, 2), (1, 1))
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


class KinkCNN(nn.Module):
  """The same network written with jaxkink's primitives."""

  @nn.compact
  def __call__(self, x, kinks: Kinks):
    x = kinks.relu(nn.Conv(4, (3, 3), padding='SAME')(x))
    x = kinks.max_pool(x, (2, 2), (2, 2))
    x = kinks.relu(nn.Conv(4, (3, 3), padding='VALID', use_bias=False)(x))
    x = kinks.max_pool(x, (2, 2), (1, 1))
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


@pytest.fixture(scope='module')
def cnn():
  """Integer weights and inputs: every sum is exact, zeros and ties abound."""
  rng = np.random.default_rng(0)
  x = _ints(rng, (2, 8, 8, 1))
  return _int_variables(CNN(), rng, x), x, _ints(rng, (2, 3), 1, 4)


def _loss(apply):
  return lambda params, x, w: jnp.sum(apply(params, x) * w)


def test_cnn_gradients_follow_the_kinks(cnn):
  variables, x, w = cnn
  fk = jaxkink.kinkify(CNN().apply)
  report = jaxkink.audit(CNN().apply)(variables, x)
  assert [r.kind for r in report] == ['relu', 'max_pool', 'relu', 'max_pool']
  assert all(r.hits > 0 for r in report), report  # the kinks are hit

  @jax.jit
  def both(kinks, variables, x, w):
    ours = jax.grad(lambda p, x: jnp.sum(fk(kinks, p, x) * w), (0, 1))(
        variables, x)
    ref = jax.grad(lambda p, x: jnp.sum(KinkCNN().apply(p, x, kinks) * w),
                   (0, 1))(variables, x)
    return ours, ref

  grads = []
  for kinks in KINKS:
    ours, ref = both(kinks, variables, x, w)
    jax.tree_util.tree_map(assert_bits_equal, ours, ref)
    grads.append(ours)
  assert both._cache_size() == 1  # pylint: disable=protected-access
  # Kinks() is flax's own derivative; other values do change it.
  plain = jax.jit(jax.grad(_loss(CNN().apply), (0, 1)))(variables, x, w)
  jax.tree_util.tree_map(assert_bits_equal, grads[0], plain)
  for g in grads[1:]:
    assert not all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a, b: bool(jnp.array_equal(a, b)), g, grads[0])))


def test_cnn_forward_is_bit_identical(cnn):
  variables, _, _ = cnn
  x = np.random.default_rng(1).normal(size=(2, 8, 8, 1)).astype(np.float32)
  x[0, :4] = 0.0  # zeros: ties in the pools, zeros at the ReLUs
  variables = jax.tree_util.tree_map(lambda v: v * 0.37, variables)
  fk = jaxkink.kinkify(CNN().apply)
  ref = jax.jit(CNN().apply)(variables, x)
  for kinks in KINKS[:3]:
    assert_bits_equal(jax.jit(fk)(kinks, variables, x), ref)
  # Run eagerly too, op by op (the conv kernels are the same as jitted here).
  assert_bits_equal(fk(KINKS[2], variables, x), CNN().apply(variables, x))


def test_cnn_jit_traces_once_and_vmaps_over_s(cnn):
  variables, x, w = cnn
  traces = []

  def apply(p, x):
    traces.append(None)
    return CNN().apply(p, x)

  loss = lambda kinks, p, x: jnp.sum(jaxkink.kinkify(apply)(kinks, p, x) * w)
  grad = jax.jit(jax.grad(loss, argnums=1))
  singles = [grad(Kinks(relu_s=s), variables, x) for s in (0.0, 0.5, 1.0)]
  assert len(traces) == 1
  assert grad._cache_size() == 1  # pylint: disable=protected-access
  swept = jax.jit(jax.vmap(jax.grad(loss, argnums=1),
                           in_axes=(Kinks(**{**NO_AXES, 'relu_s': 0}), None,
                                    None)))(
      Kinks(relu_s=jnp.array([0.0, 0.5, 1.0])), variables, x)
  for i, single in enumerate(singles):  # exact arithmetic: bits agree
    jax.tree_util.tree_map(lambda a, b, i=i: assert_bits_equal(a[i], b),
                           swept, single)


def _grad_x(f):
  """``(kinks, x) -> d sum(f) / dx``, kinkified and jitted."""
  fk = jaxkink.kinkify(f)
  return jax.jit(jax.grad(lambda kinks, x: jnp.sum(fk(kinks, x)), argnums=1))


X = jnp.array([-1.0, 0.0, 0.0, 3.0, 6.0, 7.0])


ZEROS = jnp.zeros(6)  # a closed-over constant


@pytest.mark.parametrize('f', [
    lambda x: jnp.maximum(x, 0.0), lambda x: jnp.maximum(0.0, x),
    lambda x: lax.max(x, jnp.zeros_like(x)), lambda x: jnp.maximum(x, ZEROS),
    jax.nn.relu, nn.relu,
], ids=['maximum', 'maximum_swapped', 'lax_max_zeros', 'constant_zeros',
        'jax_nn', 'flax'])
def test_relu_patterns(f):
  grad = _grad_x(f)
  for s in (0.0, 0.5, 1.0):
    g = grad(Kinks(relu_s=s), X)
    np.testing.assert_array_equal(g, [0, s, s, 1, 1, 1])
    assert_bits_equal(jaxkink.kinkify(f)(Kinks(relu_s=s), X), f(X))


@pytest.mark.parametrize('f', [jax.nn.relu6, lambda x: jnp.clip(x, 0, 6),
                               lambda x: jnp.minimum(jnp.maximum(x, 0.), 6.)],
                         ids=['jax_nn', 'clip', 'min_max'])
def test_relu6_patterns(f):
  g = _grad_x(f)(Kinks(relu6_alpha=0.25, relu6_beta=0.75), X)
  np.testing.assert_array_equal(g, [0, 0.25, 0.25, 1, 0.75, 0])
  report = jaxkink.audit(f)(X)
  assert [(r.kind, r.hits) for r in report] == [('relu6', 3)]


@pytest.mark.parametrize('f,slope', [
    (jax.nn.leaky_relu, 0.01), (lambda x: jax.nn.leaky_relu(x, 0.2), 0.2),
    (lambda x: jnp.where(x >= 0, x, 0.5 * x), 0.5)],
                         ids=['default', 'slope', 'where'])
def test_leaky_relu_patterns(f, slope):
  g = _grad_x(f)(Kinks(leaky_s=0.375), X)
  np.testing.assert_array_equal(g, np.float32([slope, .375, .375, 1, 1, 1]))
  assert_bits_equal(jaxkink.kinkify(f)(Kinks(), X), f(X))
  np.testing.assert_array_equal(_grad_x(f)(Kinks(), X), jax.grad(
      lambda x: f(x).sum())(X))


def test_legacy_mode_and_any_pool_layout():
  g = _grad_x(lambda x: 3.0 * jax.nn.relu(x))
  np.testing.assert_array_equal(g(Kinks(relu_s=0.5), X[:3]), [0, 1.5, 1.5])
  np.testing.assert_array_equal(  # the 2021 code assigns s
      g(Kinks(relu_s=0.5, legacy_relu_grad=True), X[:3]), [0, 0.5, 0.5])
  x = jnp.zeros((1, 2, 4, 4)).at[0, 1, 0, 0].set(1.0)  # NCHW, ties elsewhere
  nchw = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, 2, 2),
                                     (1, 1, 2, 2), 'VALID')
  nhwc = lambda x, b: jaxkink.max_pool(x.transpose(0, 2, 3, 1), (2, 2), (2, 2),
                                       beta=b).sum()
  ours, ref = _grad_x(nchw), jax.jit(jax.grad(nhwc))
  for beta in (0.0, 1.0, 0.5):
    np.testing.assert_array_equal(ours(Kinks(pool_beta=beta), x), ref(x, beta))


def test_forward_bits_at_special_values():
  """NaN, -0.0 and infinities: the rebuilt ops (operand order included) give
  the original's bits."""
  x = jnp.array([jnp.nan, -0.0, 0.0, 6.0, 7.0, -jnp.inf, jnp.inf])
  fs = [lambda x: jnp.clip(x, 0, 6),
        lambda x: jnp.minimum(6., jnp.maximum(0., x)), jax.nn.relu6,
        lambda x: jnp.maximum(0., x), jax.nn.leaky_relu]
  run = jax.jit(lambda kinks, x: [jaxkink.kinkify(f)(kinks, x) for f in fs])
  ref = jax.jit(lambda x: [f(x) for f in fs])(x)
  for ours, theirs in zip(run(Kinks(relu_s=0.5, leaky_s=0.5), x), ref):
    assert_bits_equal(ours, theirs)


def test_slope_is_still_differentiated():
  f = lambda x, a: jax.nn.leaky_relu(x, a)
  fk = jaxkink.kinkify(f)
  np.testing.assert_array_equal(
      jax.grad(lambda a: fk(Kinks(), X, a).sum())(0.1),
      jax.grad(lambda a: f(X, a).sum())(0.1))


def test_higher_order_primitives():
  relu = jax.nn.relu

  def f(x):
    c, ys = lax.scan(lambda c, _: (relu(c) * 2.0, relu(c)), x, length=2)
    y = lax.cond(x[0] < 1, lambda z: relu(z), lambda z: z, x)
    r = jax.checkpoint(lambda z: relu(z) * 3.0)(x)
    j = jax.jit(lambda z: jax.jit(relu)(z) * 5.0)(x)
    return c.sum() + ys.sum() + y.sum() + r.sum() + j.sum()

  x = jnp.array([0.0, 1.0, -1.0])
  grad = _grad_x(f)
  at0 = lambda s: float(grad(Kinks(relu_s=s), x)[0])
  # d/dx at 0: scan 4 s^2 (carry) + s + 2 s^2 (ys), cond s, remat 3 s, jit 5 s.
  for s in (0.0, 0.5, 1.0):
    assert at0(s) == 6 * s * s + s + s + 3 * s + 5 * s, s
  # while loops: forward mode (no reverse mode for while_loop in JAX).
  w = lambda x: lax.while_loop(lambda v: v[0] < 4.0,
                               lambda v: relu(v - 1.0) + 2.0, x)
  _, t = jax.jvp(lambda x: jaxkink.kinkify(w)(Kinks(relu_s=0.5), x),
                 (jnp.array([1.0]),), (jnp.array([1.0]),))
  np.testing.assert_array_equal(t, [0.5])  # relu at 0, then at 1 and 2
  report = jaxkink.audit(f)(x)
  assert [r.hits for r in report if r.kind == 'relu'] == [3, 3, 1, 1, 1]


def test_shard_map():
  mesh = jax.make_mesh((1,), ('d',))
  spec = jax.sharding.PartitionSpec()
  f = jax.shard_map(jax.nn.relu, mesh=mesh, in_specs=spec, out_specs=spec)
  g = _grad_x(f)(Kinks(relu_s=0.5), jnp.array([0.0, 1.0]))
  np.testing.assert_array_equal(g, [0.5, 1.0])
  report = jaxkink.audit(f)(jnp.zeros(2))  # not looked into, but listed
  assert [(r.kind, r.hits) for r in report] == [('shard_map', None)]
  assert '-' in str(report).splitlines()[-1].split()


def test_resnet_block():
  class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
      y = nn.relu(nn.Conv(2, (3, 3), padding='SAME')(x))
      y = nn.Conv(2, (3, 3), padding='SAME')(y)
      return nn.relu(x + y)

  class KinkBlock(nn.Module):
    @nn.compact
    def __call__(self, x, kinks):
      y = kinks.relu(nn.Conv(2, (3, 3), padding='SAME')(x))
      y = nn.Conv(2, (3, 3), padding='SAME')(y)
      return kinks.relu(x + y)

  rng = np.random.default_rng(2)
  x = _ints(rng, (1, 5, 5, 2))
  variables = _int_variables(Block(), rng, x)

  @jax.jit
  def both(kinks, v):
    ours = jax.grad(lambda v: jaxkink.kinkify(Block().apply)(kinks, v, x).sum())
    ref = jax.grad(lambda v: KinkBlock().apply(v, x, kinks).sum())
    return ours(v), ref(v)

  for s in (0.0, 0.5, 1.0):
    jax.tree_util.tree_map(assert_bits_equal, *both(Kinks(relu_s=s), variables))
  report = jaxkink.audit(Block().apply)(variables, x)
  assert [r.kind for r in report] == ['relu', 'relu'] and report[0].hits > 0


def test_equinox_style_pure_function():
  params = {'w1': jnp.array([[1.0, -1.0], [2.0, 1.0]]), 'b1': jnp.zeros(2),
            'w2': (jnp.array([1.0, 1.0]), jnp.array(0.0))}

  def mlp(params, x):  # plain jnp on a dict holding a tuple
    h = jnp.maximum(x @ params['w1'] + params['b1'], 0.0)
    w, b = params['w2']
    return jax.nn.relu(h @ w + b)

  def kink_mlp(params, x, kinks):
    h = kinks.relu(x @ params['w1'] + params['b1'])
    w, b = params['w2']
    return kinks.relu(h @ w + b)

  x = jnp.array([1.0, 1.0])  # first hidden unit at 0
  ours_fn = jax.jit(jax.grad(jaxkink.kinkify(mlp), argnums=(1, 2)))
  ref_fn = jax.jit(jax.grad(kink_mlp, argnums=(0, 1)))
  for s in (0.0, 0.5, 1.0):  # exact arithmetic: the bits are the same
    kinks = Kinks(relu_s=s)
    jax.tree_util.tree_map(assert_bits_equal, ours_fn(kinks, params, x),
                           ref_fn(params, x, kinks))


def test_audit_counts_equal_the_hit_counters():
  x = _ints(np.random.default_rng(3), (2, 6, 6, 3), -2, 3)

  def f(x):
    a = jax.nn.relu(x)
    b = jax.nn.relu6(x * 3.0)
    c = nn.max_pool(a, (3, 3), (2, 2), padding='SAME')
    d = nn.max_pool(x, (2, 2))
    return a.sum() + b.sum() + c.sum() + d.sum() + jnp.abs(x).sum()

  report = jaxkink.audit(f)(x)
  expected = jax.jit(lambda x: [
      jaxkink.relu_hits(x), jaxkink.relu6_hits(x * 3.0),
      jaxkink.pool_hits(jax.nn.relu(x), (3, 3), (2, 2), 'SAME'),
      jaxkink.pool_hits(x, (2, 2)), jaxkink.relu_hits(x)])(x)
  assert [r.kind for r in report] == ['relu', 'relu6', 'max_pool', 'max_pool',
                                      'abs']
  for r, e in zip(report, expected):
    assert (r.hits, r.min_distance) == (int(e.count), float(e.min_distance))
  assert [r.recognised for r in report] == [True] * 4 + [False]
  table = str(report)
  assert table.splitlines()[0].split()[:4] == ['kind', 'op', 'hits', 'min']
  assert len(table.splitlines()) == 2 + len(report)
  assert 'test_kinkify.py' in report[0].where
  with pytest.raises(dataclasses_frozen_error()):
    report[0].hits = 0


def dataclasses_frozen_error():
  import dataclasses  # pylint: disable=import-outside-toplevel
  return dataclasses.FrozenInstanceError


def test_audit_left_alone_ops():
  x = jnp.array([[0.0, 2.0, 2.0], [1.0, -1.0, 0.5]])
  report = jaxkink.audit(lambda x: (
      jnp.max(x, axis=1), jnp.sort(x, axis=1), jnp.maximum(x, x[::-1]),
      jnp.where(x > 0.5, x, 0.0), jnp.floor(x)))(x)
  got = {r.kind: (r.hits, r.min_distance) for r in report}
  assert got == {'reduce_max': (1, 0.0), 'sort': (1, 0.0), 'max': (0, 1.0),
                 'select_n': (1, 0.0), 'floor': (5, 0.0)}, got


def test_warn_names_what_is_left_alone():
  f = lambda x: jnp.abs(x).sum() + jnp.abs(2 * x).sum() + jax.nn.relu(x).sum()
  fk = jaxkink.kinkify(f, warn=True)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    g = jax.grad(fk, argnums=1)(Kinks(relu_s=1.0), jnp.array([0.0, 1.0]))
  messages = [str(w.message) for w in caught]
  assert len(messages) == 1 and "'abs'" in messages[0], messages
  # abs keeps JAX's derivative; relu'(0) is relu_s = 1 instead of 0.
  ref = jax.grad(f)(jnp.array([0.0, 1.0]))
  np.testing.assert_array_equal(g, ref + jnp.array([1.0, 0.0]))
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    jaxkink.kinkify(f)(Kinks(), jnp.zeros(2))  # no warning by default


def test_left_alone_are_unchanged():
  """Custom derivatives, jaxkink's own primitives and other nonsmooth ops."""
  f = lambda x: (jaxkink.relu(x, 0.5) + jaxkink.max_pool(
      x[None, :, None], (2,), beta=1.0)[0, :, 0].sum() + jnp.abs(x)
                 + jnp.maximum(x, 1.0) + jax.nn.gelu(x))
  x = jnp.array([0.0, 1.0, 1.0])
  fk = jax.jit(jax.jacrev(jaxkink.kinkify(f), argnums=1))
  ref = jax.jit(jax.jacrev(f))(x)
  for kinks in KINKS[1:3]:
    assert_bits_equal(fk(kinks, x), ref)


def test_batch_norm_dropout_and_bare_max_off():
  """BatchNorm's variance clamp is a bare max(0, v); dropout's random bits
  carry no tangent, so the max(0, u) inside jax.random is not a kink."""

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.BatchNorm(use_running_average=False)(nn.Dense(3)(x))
      return nn.Dense(1)(nn.Dropout(0.5, deterministic=False)(nn.relu(x)))

  x = jnp.zeros((2, 2))  # zero variance: the clamp sits on its kink
  keys = {'params': jax.random.key(0), 'dropout': jax.random.key(1)}
  variables = jax.jit(Net().init)(keys, x)
  f = lambda v, x, key: Net().apply(v, x, rngs={'dropout': key},
                                    mutable=['batch_stats'])[0].sum()
  key = jax.random.key(2)
  report = jaxkink.audit(f)(variables, x, key)
  assert [(r.kind, r.primitive) for r in report] == [
      ('relu', 'max'), ('relu', 'custom_jvp_call')]
  # bare_max=False: the clamp keeps JAX's rule, so Kinks() is flax's own.
  ours = jax.jit(jax.grad(jaxkink.kinkify(f, bare_max=False), argnums=1))(
      Kinks(), variables, x, key)
  ref = jax.jit(jax.grad(f))(variables, x, key)
  jax.tree_util.tree_map(assert_bits_equal, ours, ref)


def test_closed_over_tracers_are_differentiated():
  p = jnp.ones(2)
  g = jax.grad(lambda p: jaxkink.kinkify(lambda x: jax.nn.relu(x - p).sum())(
      Kinks(relu_s=0.5), jnp.ones(2)))(p)
  np.testing.assert_array_equal(g, [-0.5, -0.5])


def test_rejects_a_non_kinks_first_argument():
  with pytest.raises(TypeError, match='Kinks'):
    jaxkink.kinkify(jax.nn.relu)(0.5, jnp.zeros(2))
