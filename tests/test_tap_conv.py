"""``tap_conv``: convolutions on tiny maps as one matmul per kernel tap
(issue 17's fix for XLA's slow CPU convolution on 1x1 and 2x2 maps).

It is another summation order than XLA's convolution, so it is checked
against an independent float64 NumPy convolution with a rounding bound, and
exactly where the arithmetic is exact (small integers); what it does not
take is handed to ``lax.conv_general_dilated`` unchanged (the same
primitive, so the same program); in the model zoo it keeps ``nn.Conv``'s
parameters and draws; and the engine's records with and without it agree as
two programs' records do.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxkink
from jaxkink import models
from jaxkink import montecarlo as mc
from jaxkink.models.layers import tap_conv
from conftest import assert_bits_equal

DN = ('NHWC', 'HWIO', 'NHWC')
EPS32 = float(np.finfo(np.float32).eps)


def _reference(x, w, pads):
  """The convolution in float64 NumPy, straight from its definition."""
  x = np.pad(np.asarray(x, np.float64), ((0, 0), *pads, (0, 0)))
  w = np.asarray(w, np.float64)
  kh, kw = w.shape[:2]
  h, v = x.shape[1] - kh + 1, x.shape[2] - kw + 1
  out = np.zeros((x.shape[0], h, v, w.shape[3]))
  for i in range(h):
    for j in range(v):
      out[:, i, j] = np.einsum('bpqc,pqco->bo', x[:, i:i + kh, j:j + kw], w)
  return out


def _primitives(fn, *args):
  return {e.primitive.name for e in jax.make_jaxpr(fn)(*args).eqns}


# (input map, kernel, padding): VGG's 2x2 and 1x1 maps with padding 1, a
# 1x1 kernel, a rectangular kernel with uneven padding.
CASES = [((2, 2), (3, 3), ((1, 1), (1, 1))),
         ((1, 1), (3, 3), ((1, 1), (1, 1))),
         ((2, 2), (1, 1), ((0, 0), (0, 0))),
         ((3, 2), (2, 3), ((0, 1), (1, 0)))]


@pytest.mark.parametrize('hw,k,pads', CASES)
def test_equals_the_definition(rng, hw, k, pads):
  channels, features = 24, 5
  x = rng.standard_normal((3, *hw, channels)).astype(np.float32)
  w = rng.standard_normal((*k, channels, features)).astype(np.float32)
  taps = functools.partial(tap_conv, max_pixels=4)
  got = jax.jit(lambda a, b: taps(a, b, (1, 1), pads, dimension_numbers=DN,
                                  precision='highest'))(x, w)
  assert _primitives(lambda a, b: taps(a, b, (1, 1), pads,
                                       dimension_numbers=DN), x, w).isdisjoint(
                                           {'conv_general_dilated'})
  want = _reference(x, w, pads)
  assert got.shape == want.shape and got.dtype == jnp.float32
  # Each output is a float32 sum of at most k*k*C products: the usual
  # bound n * eps * sum |x * w| (n = terms, with a factor 2 of headroom).
  magnitude = _reference(np.abs(x), np.abs(w), pads)
  n = np.prod(k) * channels
  assert (np.abs(got - want) <= 2 * n * EPS32 * magnitude + 1e-30).all()
  # Small integers: every product and partial sum is exact, so the taps,
  # XLA's convolution and the definition agree exactly.
  xi = rng.integers(-3, 4, x.shape).astype(np.float32)
  wi = rng.integers(-3, 4, w.shape).astype(np.float32)
  exact = _reference(xi, wi, pads)
  for conv in (taps, lax.conv_general_dilated):
    out = conv(xi, wi, (1, 1), pads, dimension_numbers=DN)
    np.testing.assert_array_equal(out, exact)


@pytest.mark.parametrize('hw,k,pads', CASES[:2])
def test_gradients_equal_the_convolutions_on_exact_values(rng, hw, k, pads):
  """Both pullbacks (input and kernel) are the convolution's: exactly on
  small integers, where no sum rounds."""
  x = rng.integers(-3, 4, (2, *hw, 8)).astype(np.float32)
  w = rng.integers(-3, 4, (*k, 8, 6)).astype(np.float32)
  out_shape = _reference(x, w, pads).shape
  g = rng.integers(-3, 4, out_shape).astype(np.float32)

  def pullback(conv):
    _, vjp = jax.vjp(lambda a, b: conv(a, b, (1, 1), pads,
                                       dimension_numbers=DN), x, w)
    return vjp(g)
  for mine, theirs in zip(pullback(tap_conv),
                          pullback(lax.conv_general_dilated)):
    np.testing.assert_array_equal(mine, theirs)
    assert np.abs(theirs).max() > 0


@pytest.mark.parametrize('x_shape,w_shape,kwargs', [
    # An output map of 9 pixels, over max_pixels = 4.
    ((2, 3, 3, 4), (3, 3, 4, 5), dict(padding=((1, 1), (1, 1)))),
    # Stride 2, dilation, groups, string padding, NCHW.
    ((2, 4, 4, 4), (3, 3, 4, 5), dict(padding=((1, 1), (1, 1)),
                                      window_strides=(2, 2))),
    ((2, 4, 4, 4), (2, 2, 4, 5), dict(padding=((0, 0), (0, 0)),
                                      rhs_dilation=(2, 2))),
    ((2, 2, 2, 4), (3, 3, 2, 6), dict(padding=((1, 1), (1, 1)),
                                      feature_group_count=2)),
    ((2, 2, 2, 4), (3, 3, 4, 5), dict(padding='SAME')),
    ((2, 4, 2, 2), (3, 3, 4, 5), dict(padding=((1, 1), (1, 1)),
                                      dimension_numbers=('NCHW', 'HWIO',
                                                         'NCHW'))),
])
def test_everything_else_is_xlas_convolution(rng, x_shape, w_shape, kwargs):
  kwargs = {'window_strides': (1, 1), 'dimension_numbers': DN, **kwargs}
  strides, padding = kwargs.pop('window_strides'), kwargs.pop('padding')
  x = rng.standard_normal(x_shape).astype(np.float32)
  w = rng.standard_normal(w_shape).astype(np.float32)
  mine = lambda a, b: tap_conv(a, b, strides, padding, **kwargs)
  theirs = lambda a, b: lax.conv_general_dilated(a, b, strides, padding,
                                                 **kwargs)
  assert 'conv_general_dilated' in _primitives(mine, x, w)
  assert_bits_equal(jax.jit(mine)(x, w), jax.jit(theirs)(x, w))


def test_vgg11_keeps_its_parameters_and_taps_only_the_2x2_maps():
  x = jnp.zeros((2, 32, 32, 3), jnp.float32)
  kinks = jaxkink.Kinks()
  taps, plain = (models.get('vgg11', policy='float32', tap_conv_pixels=n)
                 for n in (4, 0))
  assert models.get('vgg11').tap_conv_pixels == 4   # the default
  a, b = (jax.eval_shape(m.init, jax.random.key(0), x, kinks)
          for m in (taps, plain))
  assert jax.tree.structure(a) == jax.tree.structure(b)
  # The same parameter draws: compare a cheap slice of the tree (the
  # 2x2-map convolutions Conv_6 and Conv_7, and the first one).
  key = jax.random.key(3)
  small = models.get('vgg11', config=(4, 'M', 4, 'M', 4, 'M', 4, 'M', 4, 4,
                                      'M'), tap_conv_pixels=4)
  small_plain = small.clone(tap_conv_pixels=0)
  for u, v in zip(jax.tree.leaves(small.init(key, x, kinks)),
                  jax.tree.leaves(small_plain.init(key, x, kinks))):
    assert_bits_equal(u, v)

  def convs(model):
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, kinks))(a)
    return sum(e.primitive.name == 'conv_general_dilated'
               for e in jaxpr.eqns)
  # VGG11 on 32x32: 8 convolutions, the last two on 2x2 maps.
  assert (convs(plain), convs(taps)) == (8, 6)


@pytest.mark.parametrize('name,x_shape', [('lenet5', (2, 28, 28, 1)),
                                          ('lenet5', (2, 32, 32, 3))])
def test_models_without_tiny_maps_keep_their_program(name, x_shape):
  """LeNet-5 (smallest convolution output 8x8 on MNIST) traces to the same
  program with and without the option: its records are unchanged."""
  x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
  kinks = jaxkink.Kinks()

  def program(pixels):
    model = models.get(name, tap_conv_pixels=pixels)
    variables = jax.eval_shape(model.init, jax.random.key(0), x, kinks)
    return str(jax.make_jaxpr(lambda v, a: model.apply(v, a, kinks))(
        variables, x))
  assert program(4) == program(0)


@pytest.mark.parametrize('value', [-1, 1.5, True])
def test_bad_option_values(value):
  with pytest.raises(ValueError, match='tap_conv_pixels'):
    models.get('vgg11', tap_conv_pixels=value)


def test_option_from_the_command_line():
  assert models.get('vgg11', tap_conv_pixels='0').tap_conv_pixels == 0


# A small VGG on the bundled 28x28 digits: convolutions on 28, 14, 7 and
# twice on 3x3 maps, then a pool to 1x1. tap_conv_pixels=9 puts the two 3x3
# ones through the taps.
_CONFIG = (4, 'M', 4, 'M', 8, 'M', 8, 8, 'M')
BATCH = 32


@functools.lru_cache(maxsize=None)
def _records(pixels, kind):
  """Native against minimal MaxPool on normalised digits; or ReLU'(0) = 0
  against 1 with zero biases ('flax' init) and the first 4 images of each
  minibatch blank: planted ReLU hits (exact zeros in any summation
  order)."""
  ds = jaxkink.data.load('mnist', 'train')
  images = np.array(ds.images[:64])
  if kind == 'relu':
    images[0:4] = images[BATCH:BATCH + 4] = 0
  x = jaxkink.data.preprocess(images, 'mnist', normalize=kind == 'pool',
                              dtype=jnp.float32)
  y = jnp.asarray(ds.labels[:64])
  policy = jaxkink.get_policy('float32')
  net = models.get('vgg11', config=_CONFIG, tap_conv_pixels=pixels,
                   init_scheme='tmlr' if kind == 'pool' else 'flax',
                   policy=policy)
  engine = mc.Engine(net, policy, mc.kink_pair(kind, (0, 1)), samples=4,
                     chunk=4, theta_loop='programs')
  (xs, ys), _ = mc.stack_batches(x, y, BATCH)
  return engine.run_chunks([0], xs, ys)[0]


@pytest.mark.parametrize('kind', ['pool', 'relu'])
def test_engine_records_agree_with_xlas_convolution(kind):
  """Two programs that sum the 3x3-map convolutions in other orders: the
  pairs with the same hits (most of them) differ or not alike, and D
  agrees to 1e-4 where it is a major variation (> 1e-6: the planted ReLU
  hits); the minor ones (native against minimal MaxPool here) are rounding
  noise of either program's kernels, and stay minor."""
  taps, plain = _records(9, kind), _records(0, kind)
  assert taps.computed.all() and plain.computed.all()
  same = (taps.hits == plain.hits).all(-1)
  assert same.mean() > 0.5, same
  np.testing.assert_array_equal(taps.differs[same], plain.differs[same])
  assert taps.differs.all()
  major = taps.l1 > 1e-6
  np.testing.assert_array_equal(major[same], (plain.l1 > 1e-6)[same])
  both = major & same
  assert both.all() == (kind == 'relu'), (kind, taps.l1)
  np.testing.assert_allclose(taps.l1[both], plain.l1[both], rtol=1e-4)
