"""Every kink primitive through every JAX transform (issue 14, point 1).

Away from kinks the derivatives are checked against JAX's own primitives
(``jax.nn``, ``flax.linen.max_pool``), which share no code with jaxkink's
rules. At kinks, forward mode (``_pool_tangent``, the JVP rules) and reverse
mode (the pullbacks) are separate code, so ``jacfwd == jacrev`` is a real
check, and hand-worked values pin both.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkink

from conftest import assert_bits_equal
from conftest import run_on_host_devices

# Integer-valued inputs away from every kink (no zeros, no 6, no pooling
# ties), and the same with kinks (zeros, sixes, tied windows).
SMOOTH = jnp.array([[-2.5, 1.5, 3.25, -0.75], [7.5, 0.5, -4.0, 2.25],
                    [5.5, -1.25, 0.25, 6.5], [1.75, -3.5, 4.5, 2.75]])
KINKED = jnp.array([[0., 1., 1., 6.], [6., 0., -2., 1.],
                    [3., 3., 0., 0.], [3., 3., 6., -1.]])

POOLS = {  # name: (window, strides, padding)
    '2x2/2': ((2, 2), (2, 2), 'VALID'),
    '3x3/1 overlapping': ((3, 3), (1, 1), 'VALID'),
    '3x3/2 pad 1': ((3, 3), (2, 2), ((1, 1), (1, 1))),
    '2x2/1 SAME': ((2, 2), (1, 1), 'SAME'),
}

# name: (jaxkink f(x, k), JAX's own f(x)) for k = the kink values.
def _pool_pair(window, strides, padding):
  return (lambda x, k: jaxkink.max_pool(x[None, :, :, None], window, strides,
                                        padding, beta=k),
          lambda x: nn.max_pool(x[None, :, :, None], window, strides, padding))


PRIMITIVES = {
    'relu': (lambda x, k: jaxkink.relu(x, k), jax.nn.relu),
    'relu6': (lambda x, k: jaxkink.relu6(x, k, 2 * k), jax.nn.relu6),
    'leaky_relu': (lambda x, k: jaxkink.leaky_relu(x, 0.1, k),
                   lambda x: jax.nn.leaky_relu(x, 0.1)),
    **{f'max_pool {n}': _pool_pair(*p) for n, p in POOLS.items()},
}


def _loss(f):
  # A smooth, non-linear outer function, so Hessians are not all zero.
  return lambda x, *k: jnp.sum(jnp.sin(f(x, *k)) * (1 + f(x, *k)))


TRANSFORMS = {
    'jvp': lambda f, x: jax.jvp(f, (x,), (jnp.cos(x),))[1],
    'jacfwd': lambda f, x: jax.jacfwd(f)(x),
    'jacrev': lambda f, x: jax.jacrev(f)(x),
    'hessian': lambda f, x: jax.hessian(_loss(lambda x: f(x)))(x),
    'hvp fwd-over-rev': lambda f, x: jax.jvp(
        jax.grad(_loss(lambda x: f(x))), (x,), (jnp.cos(x),))[1],
    'hvp rev-over-fwd': lambda f, x: jax.grad(lambda y: jax.jvp(
        _loss(lambda x: f(x)), (y,), (jnp.cos(x),))[1])(x),
    'hvp rev-over-rev': lambda f, x: jnp.tensordot(
        jax.jacrev(jax.grad(_loss(lambda x: f(x))))(x), jnp.cos(x),
        axes=x.ndim),
    'jit(grad)': lambda f, x: jax.jit(jax.grad(_loss(lambda x: f(x))))(x),
    'checkpoint': lambda f, x: jax.grad(jax.checkpoint(
        _loss(lambda x: f(x))))(x),
    'scan': lambda f, x: jax.grad(lambda x: jax.lax.scan(
        lambda c, _: (c + _loss(lambda x: f(x))(x), None), 0.0, None,
        length=2)[0])(x),
}


@pytest.mark.parametrize('transform', TRANSFORMS)
@pytest.mark.parametrize('name', PRIMITIVES)
def test_away_from_kinks_equals_jax_own(name, transform):
  ours, theirs = PRIMITIVES[name]
  apply = TRANSFORMS[transform]
  # No kink is hit, so the kink value (neither JAX's 0 nor 1) must not
  # matter; the kink test below runs five values through every primitive.
  got = apply(lambda x: ours(x, 0.5), SMOOTH)
  np.testing.assert_allclose(got, apply(theirs, SMOOTH), rtol=1e-6, atol=1e-6,
                             err_msg=f'{name} {transform}')


@pytest.mark.parametrize('k', [0.0, 0.5, 1.0, 2.0, -1.0])
@pytest.mark.parametrize('name', PRIMITIVES)
def test_at_kinks_forward_mode_is_the_transpose_of_reverse_mode(name, k):
  ours, _ = PRIMITIVES[name]
  f = lambda x: ours(x, k)
  fwd, rev = jax.jacfwd(f)(KINKED), jax.jacrev(f)(KINKED)
  # Each entry of the Jacobian is one weight (0, 1, k, 1/|A|, ...) times a
  # tangent or cotangent of 1, so both modes give it exactly (up to the sign
  # of zero: k * 0 is -0.0 for negative k, in another row or column).
  np.testing.assert_array_equal(fwd, rev)
  # The Hessian-vector products of both orders agree too.
  hvp_fr = TRANSFORMS['hvp fwd-over-rev'](f, KINKED)
  hvp_rf = TRANSFORMS['hvp rev-over-fwd'](f, KINKED)
  np.testing.assert_allclose(hvp_fr, hvp_rf, rtol=1e-6, atol=1e-6)


def test_relu_family_jvp_at_kinks_hand_worked():
  x = jnp.array([-1.0, 0.0, 2.0, 6.0])
  t = jnp.array([3.0, 5.0, 7.0, 11.0])
  jvp = lambda f: jax.jvp(f, (x,), (t,))[1]
  np.testing.assert_array_equal(jvp(lambda x: jaxkink.relu(x, 0.25)),
                                [0.0, 1.25, 7.0, 11.0])
  np.testing.assert_array_equal(jvp(lambda x: jaxkink.relu6(x, 0.25, 0.5)),
                                [0.0, 1.25, 7.0, 5.5])
  np.testing.assert_array_equal(jvp(lambda x: jaxkink.leaky_relu(x, 0.5, 0.25)),
                                [1.5, 1.25, 7.0, 11.0])


@pytest.mark.parametrize('beta, want', [
    (0.0, [[1, 0, 0, 0], [0, 0, 0, 0]]),   # native: the first maximum
    (1.0, [[.25, .25, .25, .25], [0, 0, 0, 0]]),  # minimal: 1 / |A|
    (0.5, [[.625, .125, .125, .125], [0, 0, 0, 0]]),  # hybrid
])
def test_max_pool_jvp_at_a_tie_hand_worked(beta, want):
  # One 2x2 window, all four tied (the first output), and one without a
  # tie whose maximum is the last member (the second output).
  x = jnp.array([[3., 3., 1., 2.], [3., 3., 0., 5.]])[None, :, :, None]
  f = lambda x: jaxkink.max_pool(x, (2, 2), (2, 2), beta=beta).ravel()
  jac = jax.jacfwd(f)(x).reshape(2, 2, 4)[:, :, :2].reshape(2, 4)
  want = np.array(want)
  want[1, 3] = 0  # member (1, 3) lies in the second window
  np.testing.assert_array_equal(jac[0], want[0])
  t = jnp.arange(1.0, 9.0).reshape(x.shape)
  dy = jax.jvp(f, (x,), (t,))[1]
  # Window 1 holds t = 1, 2, 5, 6; window 2's maximum (x = 5) has t = 8.
  np.testing.assert_allclose(dy, [want[0] @ np.array([1., 2., 5., 6.]), 8.0],
                             rtol=1e-7)


def test_vmap_of_forward_mode_over_kink_values_equals_separate_calls():
  betas = jnp.array([0.0, 0.3, 1.0, 2.0])
  f = lambda x, b: jaxkink.max_pool(x[None, :, :, None], (3, 3), (1, 1),
                                    beta=b)
  jac = jax.jit(jax.vmap(jax.jacfwd(f), in_axes=(None, 0)))(KINKED, betas)
  for i, b in enumerate(betas):
    assert_bits_equal(jac[i], jax.jit(jax.jacfwd(f))(KINKED, b))


def test_legacy_rule_stays_reverse_only_with_a_clear_error():
  with pytest.raises(TypeError, match='custom_vjp'):
    jax.jvp(lambda x: jaxkink.relu(x, 0.5, legacy=True), (KINKED,),
            (KINKED,))


_SHARD_SCRIPT = r'''
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
import jaxkink
assert jax.device_count() == 4, jax.devices()
mesh = Mesh(jax.devices(), ('k',))
x = jnp.array([[0., 1., 1., 6.], [6., 0., -2., 1.],
               [3., 3., 0., 0.], [3., 3., 6., -1.]])[None, :, :, None]
w = jnp.linspace(-1.0, 1.0, 16).reshape(1, 4, 4, 1)
values = jnp.array([0.0, 0.5, 1.0, 2.0])

def loss(w, k):
  h = jaxkink.relu(x * w + x, k)
  h = jaxkink.relu6(h, k, k) + jaxkink.leaky_relu(h, 0.1, k)
  return jnp.sum(jaxkink.max_pool(h, (3, 3), (1, 1), 'SAME', beta=k) ** 2)

# Each device runs a vmap over one kink value: the reference is that same
# program shape, one value at a time (bit-equality is promised only there).
one_value = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))
per_value = jnp.concatenate([one_value(w, values[i:i + 1]) for i in range(4)])

# Kink values sharded, weights replicated: each device takes the gradient
# of its own copy of the weights (cast to varying), the sweep over devices.
def body(w, k):
  w = jax.lax.pcast(w, 'k', to='varying')
  return jax.vmap(jax.grad(loss), in_axes=(None, 0))(w, k)
sharded = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P('k')),
                                out_specs=P('k')))(w, values)
np.testing.assert_array_equal(np.asarray(sharded), np.asarray(per_value))

# Without the cast the replicated weights' gradient is summed over the
# devices (the transpose of the implicit cast), as for jax.nn.relu(x) * s.
summed = jax.jit(jax.shard_map(
    lambda w, k: jax.grad(loss)(w, k[0]), mesh=mesh, in_specs=(P(), P('k')),
    out_specs=P()))(w, values)
np.testing.assert_allclose(np.asarray(summed), np.asarray(per_value.sum(0)),
                           rtol=1e-6)

# Kink values replicated, the batch sharded.
xs = jnp.tile(x, (4, 1, 1, 1)) * jnp.arange(1.0, 5.0)[:, None, None, None]
def batch_loss(x, k):
  return jnp.sum(jaxkink.max_pool(jaxkink.relu(x, k), (2, 2), (2, 2),
                                  beta=k) ** 2)
g_batch = jax.jit(jax.shard_map(
    lambda x, k: jax.grad(batch_loss)(x, k), mesh=mesh,
    in_specs=(P('k'), P()), out_specs=P('k')))(xs, jnp.float32(0.5))
one_example = jax.jit(jax.grad(batch_loss))  # each device's shape
np.testing.assert_array_equal(np.asarray(g_batch), np.concatenate(
    [np.asarray(one_example(xs[i:i + 1], 0.5)) for i in range(4)]))
print('ok')
'''


def test_shard_map_with_kink_values_sharded_or_replicated():
  assert run_on_host_devices(_SHARD_SCRIPT, 4).split()[-1] == 'ok'
