"""The model zoo: sizes, kink routing, vmapping, and JAX's own conventions.

Full-size models are only traced (``jax.eval_shape``); everything that
compiles uses reduced widths and tiny inputs. Parameters for the vmap tests
are drawn with numpy from the shapes ``eval_shape`` gives: compiling
``model.init`` costs seconds per model on a CPU (the threefry PRNG), a
forward pass a fraction of that.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkink
from jaxkink import models
from jaxkink.models.layers import hard_sigmoid, hard_swish
from conftest import assert_bits_equal

KINKS = jaxkink.Kinks()


def _shapes(model, x_shape):
  return jax.eval_shape(model.init, jax.random.key(0),
                        jax.ShapeDtypeStruct(x_shape, jnp.float32), KINKS)


def _num_params(model, x_shape) -> int:
  return sum(math.prod(a.shape)
             for a in jax.tree.leaves(_shapes(model, x_shape)['params']))


def _random_variables(model, x, rng, n=None):
  """Variables of ``model`` drawn with numpy (``n`` stacked sets if given)."""
  lead = () if n is None else (n,)

  def draw(path, s):
    name = jax.tree_util.keystr(path)
    if 'var' in name or 'scale' in name:   # running variance, BN scale
      value = rng.uniform(0.5, 1.5, lead + s.shape)
    else:
      fan_in = math.prod(s.shape[:-1]) if len(s.shape) > 1 else 10
      value = rng.normal(size=lead + s.shape) / math.sqrt(fan_in)
    return jnp.asarray(value, s.dtype)
  return jax.tree_util.tree_map_with_path(draw, _shapes(model, x.shape))


# ---------------------------------------------------------------------------
# Parameter counts, from layer shapes written out here (PyTorch layouts).

def conv(cin, cout, k, bias=True):
  return cin * cout * k * k + (cout if bias else 0)


def dense(fan_in, fan_out):
  return fan_in * fan_out + fan_out


def bn(channels, on=True):
  return 2 * channels if on else 0   # weight and bias (running stats: buffers)


# torchvision ``vgg.py`` cfgs A, B, D, E.
VGG_CFGS = {
    'vgg11': [64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512, 'M'],
    'vgg13': [64, 64, 'M', 128, 128, 'M', 256, 256, 'M', 512, 512, 'M',
              512, 512, 'M'],
    'vgg16': [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512,
              'M', 512, 512, 512, 'M'],
    'vgg19': [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512,
              512, 512, 'M', 512, 512, 512, 512, 'M'],
}


def vgg_count(cfg, batch_norm):
  """kuangliu/pytorch-cifar VGG: 3x3 convs with bias, one 512x10 Linear."""
  total, cin = 0, 3
  for v in cfg:
    if v != 'M':
      total += conv(cin, v, 3) + bn(v, batch_norm)
      cin = v
  return total + dense(512, 10)


def resnet_count(block, layers, stem_kernel, classes, batch_norm):
  """torchvision resnet.py: bias-free convs, BN, 1x1 downsample shortcut."""
  b = lambda c: bn(c, batch_norm)
  total = conv(3, 64, stem_kernel, bias=False) + b(64)
  inplanes = 64
  for i, blocks in enumerate(layers):
    planes = 64 * 2**i
    for j in range(blocks):
      stride = 2 if i > 0 and j == 0 else 1
      if block == 'basic':
        out = planes
        total += (conv(inplanes, planes, 3, False) + b(planes) +
                  conv(planes, planes, 3, False) + b(planes))
      else:
        out = 4 * planes
        total += (conv(inplanes, planes, 1, False) + b(planes) +
                  conv(planes, planes, 3, False) + b(planes) +
                  conv(planes, out, 1, False) + b(out))
      if stride != 1 or inplanes != out:
        total += conv(inplanes, out, 1, False) + b(out)
      inplanes = out
  return total + dense(inplanes, classes)


def densenet121_count(classes, batch_norm):
  """torchvision densenet.py, growth 32, blocks (6, 12, 24, 16), bn_size 4."""
  b = lambda c: bn(c, batch_norm)
  total, c = conv(3, 64, 7, False) + b(64), 64
  for i, n in enumerate((6, 12, 24, 16)):
    for _ in range(n):
      total += b(c) + conv(c, 128, 1, False) + b(128) + conv(128, 32, 3, False)
      c += 32
    if i < 3:
      total += b(c) + conv(c, c // 2, 1, False)
      c //= 2
  return total + b(c) + dense(c, classes)


def mobilenet_v3_small_count(classes):
  """torchvision mobilenetv3.py, small: (kernel, expanded, out, SE) rows."""
  rows = [(3, 16, 16, 1), (3, 72, 24, 0), (3, 88, 24, 0), (5, 96, 40, 1),
          (5, 240, 40, 1), (5, 240, 40, 1), (5, 120, 48, 1), (5, 144, 48, 1),
          (5, 288, 96, 1), (5, 576, 96, 1), (5, 576, 96, 1)]
  # SE squeeze width: _make_divisible(expanded // 4, 8), worked out by hand.
  squeeze = {16: 8, 96: 24, 240: 64, 120: 32, 144: 40, 288: 72, 576: 144}
  total, c = conv(3, 16, 3, False) + bn(16), 16
  for k, exp, out, se in rows:
    if exp != c:
      total += conv(c, exp, 1, False) + bn(exp)
    total += exp * k * k + bn(exp)                  # depthwise, groups = exp
    if se:
      total += conv(exp, squeeze[exp], 1) + conv(squeeze[exp], exp, 1)
    total += conv(exp, out, 1, False) + bn(out)
    c = out
  return (total + conv(96, 576, 1, False) + bn(576) + dense(576, 1024) +
          dense(1024, classes))


MNIST, CIFAR, IMAGENET = (1, 28, 28, 1), (1, 32, 32, 3), (1, 224, 224, 3)
LENET = (conv(1, 6, 5) + conv(6, 16, 5) + dense(16 * 4 * 4, 120) +
         dense(120, 84) + dense(84, 10))


@pytest.mark.parametrize('name, options, x_shape, want', [
    # Table 1 (784-256x3-10) and the reference notebook's variant.
    ('mlp', {}, MNIST, dense(784, 256) + 2 * dense(256, 256) + dense(256, 10)),
    ('mlp_reference', {}, MNIST, 335_114),
    ('mlp_bifurcation', {}, MNIST,
     dense(784, 2000) + dense(2000, 128) + dense(128, 10)),
    ('mlp_relu6', {}, MNIST, dense(784, 4000) + dense(4000, 256) +
     dense(256, 10)),
    ('mlp_2048', {}, MNIST,
     dense(784, 2048) + 2 * dense(2048, 2048) + dense(2048, 10)),
    ('mlp', dict(widths=(5, 7, 3)), (1, 4), dense(4, 5) + dense(5, 7) +
     dense(7, 3)),
    # ChawDoe/LeNet5-MNIST-PyTorch as in the TMLR code: 44,426.
    ('lenet5', {}, MNIST, LENET),
    ('lenet5', dict(batch_norm=True), MNIST,
     LENET + bn(6) + bn(16) + bn(120) + bn(84)),
    # VGG11 CIFAR (kuangliu/pytorch-cifar): 9,225,610, with BN 9,231,114.
    ('vgg11', {}, CIFAR, 9_225_610),
    ('vgg11', dict(batch_norm=True), CIFAR, 9_231_114),
    ('vgg11', {}, CIFAR, vgg_count(VGG_CFGS['vgg11'], False)),
    ('vgg13', dict(batch_norm=True), CIFAR, vgg_count(VGG_CFGS['vgg13'], True)),
    ('vgg16', {}, CIFAR, vgg_count(VGG_CFGS['vgg16'], False)),
    ('vgg19', dict(batch_norm=True), CIFAR, vgg_count(VGG_CFGS['vgg19'], True)),
    # ResNet18 CIFAR (3x3 stem, 10 classes): 11,173,962. torchvision's
    # published ImageNet counts: resnet18 11,689,512, resnet50 25,557,032.
    ('resnet18', dict(batch_norm=True), CIFAR, 11_173_962),
    ('resnet18', dict(batch_norm=True), CIFAR,
     resnet_count('basic', [2, 2, 2, 2], 3, 10, True)),
    ('resnet18', {}, CIFAR, resnet_count('basic', [2, 2, 2, 2], 3, 10, False)),
    ('resnet18', dict(batch_norm=True, stem='imagenet', num_classes=1000),
     IMAGENET, 11_689_512),
    ('resnet50', dict(batch_norm=True, stem='imagenet', num_classes=1000),
     IMAGENET, 25_557_032),
    ('resnet50', dict(batch_norm=True), CIFAR,
     resnet_count('bottleneck', [3, 4, 6, 3], 3, 10, True)),
    ('resnet50', dict(stem='imagenet'), IMAGENET,
     resnet_count('bottleneck', [3, 4, 6, 3], 7, 10, False)),
    ('resnet34', dict(batch_norm=True), CIFAR,
     resnet_count('basic', [3, 4, 6, 3], 3, 10, True)),
    # torchvision's published densenet121: 7,978,856.
    ('densenet121', dict(batch_norm=True, num_classes=1000), IMAGENET,
     7_978_856),
    ('densenet121', dict(batch_norm=True), CIFAR, densenet121_count(10, True)),
    ('densenet121', {}, CIFAR, densenet121_count(10, False)),
    # torchvision's published mobilenet_v3_small: 2,542,856.
    ('mobilenet_v3_small', dict(num_classes=1000), IMAGENET, 2_542_856),
    ('mobilenet_v3_small', {}, IMAGENET, mobilenet_v3_small_count(10)),
])
def test_parameter_counts_match_pytorch(name, options, x_shape, want):
  assert _num_params(models.get(name, **options), x_shape) == want


def test_hand_counts_agree_with_published_ones():
  # The layer-shape formulas above, checked against torchvision's numbers.
  assert resnet_count('basic', [2, 2, 2, 2], 7, 1000, True) == 11_689_512
  assert resnet_count('bottleneck', [3, 4, 6, 3], 7, 1000, True) == 25_557_032
  assert densenet121_count(1000, True) == 7_978_856
  assert mobilenet_v3_small_count(1000) == 2_542_856
  assert vgg_count(VGG_CFGS['vgg11'], True) == 9_231_114


def test_no_batch_norm_means_no_parameters_and_no_statistics():
  shapes = _shapes(models.get('resnet18'), CIFAR)
  assert set(shapes) == {'params'}
  assert not any('BatchNorm' in jax.tree_util.keystr(p) for p, _ in
                 jax.tree_util.tree_leaves_with_path(shapes))
  shapes = _shapes(models.get('resnet18', batch_norm=True), CIFAR)
  assert set(shapes) == {'params', 'batch_stats'}


# ---------------------------------------------------------------------------
# Every kink goes through the Kinks value (counted while tracing full size).

@pytest.mark.parametrize('name, options, x_shape, want', [
    ('mlp', {}, MNIST, dict(relu=3)),
    ('mlp_reference', {}, MNIST, dict(relu=2)),
    ('mlp_relu6', {}, MNIST, dict(relu6=2)),
    ('mlp', dict(activation='leaky_relu'), MNIST, dict(leaky_relu=3)),
    ('lenet5', dict(batch_norm=True), MNIST, dict(relu=4, max_pool=2)),
    ('vgg11', {}, CIFAR, dict(relu=8, max_pool=5)),
    ('vgg19', dict(activation='relu6'), CIFAR, dict(relu6=16, max_pool=5)),
    ('resnet18', {}, CIFAR, dict(relu=17, max_pool=1)),
    ('resnet18', dict(stem_pool='none'), CIFAR, dict(relu=17)),
    ('resnet50', dict(stem='imagenet'), IMAGENET, dict(relu=49, max_pool=1)),
    # 1 stem + 2 per dense layer (58) + 3 transitions + 1 final.
    ('densenet121', {}, CIFAR, dict(relu=121, max_pool=1)),
    # 'RE': 2 + 2 + 2 in the first three blocks, 8 SE in the others;
    # hard-swish / hard-sigmoid: stem, SE 1, 3 x 8, last conv, classifier.
    ('mobilenet_v3_small', {}, IMAGENET, dict(relu=14, relu6=28)),
])
def test_every_kink_goes_through_kinks(monkeypatch, name, options, x_shape,
                                       want):
  calls = dict(relu=0, relu6=0, leaky_relu=0, max_pool=0)
  for method in calls:
    original = getattr(jaxkink.Kinks, method)

    def counted(self, *args, _method=method, _original=original, **kw):
      calls[_method] += 1
      return _original(self, *args, **kw)
    monkeypatch.setattr(jaxkink.Kinks, method, counted)
  _shapes(models.get(name, **options), x_shape)
  assert calls == dict(dict(relu=0, relu6=0, leaky_relu=0, max_pool=0), **want)


# ---------------------------------------------------------------------------
# vmap over weight samples and over kink values, per family.

# Dropout (the MLP's) compiles a threefry sampler: seconds on a CPU, so only
# the MLP has it here.
FAMILIES = {
    'mlp': ('mlp', dict(widths=(16, 16, 4), batch_norm=True, dropout=0.25),
            (8, 12)),
    'lenet5': ('lenet5', dict(batch_norm=True), (8, 16, 16, 1)),
    'vgg': ('vgg11', dict(config=(4, 'M', 8, 'M'), batch_norm=True),
            (4, 8, 8, 3)),
    'resnet_basic': ('resnet18', dict(stage_sizes=(1, 1), width=4,
                                      batch_norm=True), (4, 8, 8, 3)),
    'resnet_bottleneck': ('resnet50', dict(stage_sizes=(1, 1), width=4,
                                           batch_norm=True, stem='imagenet'),
                          (4, 16, 16, 3)),
    'densenet': ('densenet121', dict(block_config=(1, 2), growth_rate=4,
                                     num_init_features=8, bn_size=2,
                                     batch_norm=True),
                 (4, 16, 16, 3)),
    'mobilenet': ('mobilenet_v3_small', dict(
        width_mult=0.25, last_channel=16, dropout=0.0,
        blocks=((3, 16, 16, True, 'RE', 2), (3, 72, 24, False, 'RE', 2),
                (5, 96, 24, True, 'HS', 1))), (4, 16, 16, 3)),
}


@pytest.mark.parametrize('family', list(FAMILIES))
def test_vmap_over_weights_and_kinks(family, rng):
  name, options, x_shape = FAMILIES[family]
  model = models.get(name, **options)
  x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
  stacked = _random_variables(model, x, rng, n=3)
  dropout_key = jax.random.key(1)

  # Training-mode forward (batch statistics, dropout), over 3 weight sets.
  def forward(variables):
    return model.apply(variables, x, KINKS, train=True,
                       mutable=['batch_stats'], rngs={'dropout': dropout_key})
  out_v, stats_v = jax.jit(jax.vmap(forward))(stacked)
  single = jax.jit(forward)
  for i in range(3):
    out, stats = single(jax.tree.map(lambda a, i=i: a[i], stacked))
    member = lambda t, i=i: jax.tree.map(lambda a: a[i], t)
    if family == 'mlp':   # dense layers: the very same bits
      assert_bits_equal(out_v[i], out)
      jax.tree.map(assert_bits_equal, member(stats_v), stats)
    else:                 # XLA batches convolutions in another order
      np.testing.assert_allclose(out_v[i], out, rtol=1e-4, atol=1e-5)
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                           atol=1e-6),
                   member(stats_v), stats)

  # Gradients vmapped over kink values: one trace, reused for new values.
  variables = jax.tree.map(lambda a: a[0], stacked)
  traces = []

  def grad(s, beta):
    traces.append(1)
    kinks = jaxkink.Kinks(relu_s=s, relu6_alpha=s, relu6_beta=s, leaky_s=s,
                          pool_beta=beta)
    loss = lambda p: (model.apply({**variables, 'params': p}, x, kinks) ** 2
                      ).sum()
    return jax.grad(loss)(variables['params'])
  sweep = jax.jit(jax.vmap(grad))
  g1 = sweep(jnp.array([0.0, 0.5, 1.0]), jnp.array([0.0, 1.0, 10.0]))
  g2 = sweep(jnp.array([0.3, 0.7, 2.0]), jnp.array([1e3, 1e4, -1.0]))
  assert len(traces) == 1
  for g in (g1, g2):
    assert all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(g))
    assert {a.shape[0] for a in jax.tree.leaves(g)} == {3}
  # Each member is the gradient a lone run with its kink values gives
  # (bit for bit for dense layers; a vmapped convolution's weight gradient
  # is summed in another order on XLA:CPU). Checked on two families to keep
  # the suite fast (test_kinks.py checks it on a conv + pool net too).
  if family not in ('mlp', 'vgg'):
    return
  lone = jax.jit(grad)
  for i, (s, beta) in enumerate(((0.0, 0.0), (0.5, 1.0), (1.0, 10.0))):
    want = lone(s, beta)
    got = jax.tree.map(lambda a, i=i: a[i], g1)
    if family == 'mlp':
      jax.tree.map(assert_bits_equal, got, want)
    else:
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                           atol=1e-5),
                   got, want)


def test_vmapped_init_gives_independent_samples():
  # The Monte Carlo pattern: one init per key, vmapped; each sample is the
  # one a lone init with its key gives (threefry keys are vmap-invariant).
  model = models.get('mlp', widths=(8,))
  x = jnp.zeros((1, 5))
  keys = jax.random.split(jax.random.key(0), 3)
  stacked = jax.jit(jax.vmap(model.init, in_axes=(0, None, None)))(
      keys, x, KINKS)
  kernel = stacked['params']['Dense_0']['kernel']
  assert kernel.shape == (3, 5, 8)
  assert not np.array_equal(kernel[0], kernel[1])
  alone = jax.jit(model.init)(keys[1], x, KINKS)
  jax.tree.map(lambda a, b: assert_bits_equal(a[1], b), stacked, alone)


# ---------------------------------------------------------------------------
# Default kinks = JAX's and flax's own functions, bit for bit.

class ReferenceMLP(nn.Module):
  widths: tuple
  act: object
  relu_after_first: bool = True

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.widths[:-1]):
      x = nn.Dense(width)(x)
      if i > 0 or self.relu_after_first:
        x = self.act(x)
    return nn.Dense(self.widths[-1])(x)


class ReferenceVGG(nn.Module):
  config: tuple
  batch_norm: bool

  @nn.compact
  def __call__(self, x, train):
    for item in self.config:
      if item == 'M':
        x = nn.max_pool(x, (2, 2), (2, 2))
      else:
        x = nn.Conv(item, (3, 3), padding=1)(x)
        if self.batch_norm:
          x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                           epsilon=1e-5)(x)
        x = jax.nn.relu(x)
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def _zero_biases(variables):
  # With integer inputs and zero biases, pre-activations hit 0 exactly and
  # pooling windows tie: the kink conventions are exercised.
  return jax.tree_util.tree_map_with_path(
      lambda p, a: jnp.zeros_like(a) if 'bias' in jax.tree_util.keystr(p)
      else a, variables)


@pytest.mark.parametrize('activation, act, relu_after_first', [
    ('relu', jax.nn.relu, True), ('relu', jax.nn.relu, False),
    ('relu6', jax.nn.relu6, True),
    ('leaky_relu', lambda x: jax.nn.leaky_relu(x, 0.01), True)])
def test_mlp_default_kinks_match_jax_bit_for_bit(rng, activation, act,
                                                 relu_after_first):
  widths = (16, 16, 16, 5)
  model = models.get('mlp', widths=widths, activation=activation,
                     relu_after_first=relu_after_first)
  ref = ReferenceMLP(widths, act, relu_after_first)
  x = jnp.asarray(rng.integers(-1, 2, size=(8, 12)), jnp.float32)
  x = x.at[0].set(0.0)   # with zero biases: exact zeros in every layer
  variables = _zero_biases(_random_variables(model, x, rng))
  loss = lambda v: (model.apply(v, x, KINKS) ** 2).sum()
  ref_loss = lambda v: (ref.apply(v, x) ** 2).sum()
  assert_bits_equal(model.apply(variables, x, KINKS), ref.apply(variables, x))
  jax.tree.map(assert_bits_equal, jax.jit(jax.grad(loss))(variables),
               jax.jit(jax.grad(ref_loss))(variables))


@pytest.mark.parametrize('batch_norm', [False, True])
def test_small_vgg_default_kinks_match_flax_bit_for_bit(rng, batch_norm):
  config = (4, 'M', 8, 'M')
  model = models.get('vgg11', config=config, batch_norm=batch_norm)
  ref = ReferenceVGG(config, batch_norm)
  x = jnp.asarray(rng.integers(0, 2, size=(4, 8, 8, 3)), jnp.float32)
  variables = _zero_biases(_random_variables(model, x, rng))
  train = batch_norm   # batch statistics in training mode
  mutable = ['batch_stats'] if train else False

  def loss(params, net, *args):
    out = net.apply({**variables, 'params': params}, x, *args, train=train,
                    mutable=mutable)
    out = out[0] if mutable else out
    return (out ** 2).sum(), out
  (l1, y1), g1 = jax.jit(jax.value_and_grad(
      lambda p: loss(p, model, KINKS), has_aux=True))(variables['params'])
  (l2, y2), g2 = jax.jit(jax.value_and_grad(
      lambda p: loss(p, ref), has_aux=True))(variables['params'])
  assert_bits_equal(y1, y2)
  assert_bits_equal(l1, l2)
  jax.tree.map(assert_bits_equal, g1, g2)
  # The test means something: ties and zeros are there.
  hits = jaxkink.pool_hits(jax.nn.relu(nn.Conv(4, (3, 3), padding=1).apply(
      {'params': variables['params']['Conv_0']}, x)), (2, 2), (2, 2))
  assert hits.count > 0


def test_hard_swish_matches_jax_bit_for_bit(rng):
  # Both jitted: XLA turns ``/ 6`` into ``* (1 / 6)``, eager code does not,
  # and ``jax.nn.hard_swish`` is always jitted.
  x = jnp.asarray(rng.integers(-4, 5, size=64) / 1.0, jnp.float32)
  for ours, theirs in ((hard_swish, jax.nn.hard_swish),
                       (hard_sigmoid, jax.nn.hard_sigmoid)):
    f = jax.jit(lambda v, ours=ours: (ours(v, KINKS) ** 2).sum())
    g = jax.jit(lambda v, theirs=theirs: (theirs(v) ** 2).sum())
    assert_bits_equal(jax.jit(ours)(x, KINKS), theirs(x))
    assert_bits_equal(jax.jit(jax.grad(f))(x), jax.jit(jax.grad(g))(x))
  # The kink at -3 takes ReLU6'(0) / 6 (times x in hard-swish's product).
  slope = jax.grad(lambda v: hard_sigmoid(v, jaxkink.Kinks(relu6_alpha=1.0)))
  assert slope(-3.0) == np.float32(1 / 6)


# ---------------------------------------------------------------------------
# Batch norm and dropout behaviour.

def test_batch_norm_train_and_eval(rng):
  model = models.get('mlp', widths=(6, 3), batch_norm=True)
  x = jnp.asarray(rng.normal(2.0, 3.0, size=(32, 4)), jnp.float32)
  variables = _random_variables(model, x, rng)
  stats = variables['batch_stats']['BatchNorm_0']
  assert set(stats) == {'mean', 'var'}
  # Training mode: running mean moves by PyTorch's momentum 0.1.
  _, updates = model.apply(variables, x, KINKS, train=True,
                           mutable=['batch_stats'])
  h = nn.Dense(6).apply({'params': variables['params']['Dense_0']}, x)
  np.testing.assert_allclose(updates['batch_stats']['BatchNorm_0']['mean'],
                             0.9 * stats['mean'] + 0.1 * h.mean(0),
                             rtol=1e-5, atol=1e-6)
  # Evaluation mode uses the running statistics and needs nothing mutable.
  out_eval = model.apply(variables, x, KINKS)
  out_train, _ = model.apply(variables, x, KINKS, train=True,
                             mutable=['batch_stats'])
  assert not np.allclose(out_eval, out_train)


def test_dropout_uses_the_dropout_rng_only_in_training(rng):
  model = models.get('mlp', widths=(64, 3), dropout=0.5)
  x = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
  variables = _random_variables(model, x, rng)
  assert_bits_equal(model.apply(variables, x, KINKS),
                    model.apply(variables, x, KINKS, train=False))
  a = model.apply(variables, x, KINKS, train=True,
                  rngs={'dropout': jax.random.key(1)})
  b = model.apply(variables, x, KINKS, train=True,
                  rngs={'dropout': jax.random.key(2)})
  assert not np.array_equal(a, b)
  with pytest.raises(Exception, match='dropout'):
    model.apply(variables, x, KINKS, train=True)


@pytest.mark.parametrize('options, x_shape, want', [
    # torchvision's MaxPool2d(3, 2, padding=1), kept by deel-ai/relu-prime.
    (dict(), CIFAR, ((1, 32, 32, 4), (3, 3), (2, 2), ((1, 1), (1, 1)),
                     (1, 16, 16, 4))),
    # The TMLR code's MaxPool2DBeta: 2x2, stride 2.
    (dict(stem_pool='2x2s2'), CIFAR, ((1, 32, 32, 4), (2, 2), (2, 2),
                                      ((0, 0), (0, 0)), (1, 16, 16, 4))),
    # ImageNet: 224 -> 112 (7x7/2 pad 3) -> 56 (3x3/2 pad 1).
    (dict(stem='imagenet'), IMAGENET, ((1, 112, 112, 4), (3, 3), (2, 2),
                                       ((1, 1), (1, 1)), (1, 56, 56, 4))),
])
def test_resnet_stem_pool_geometry(monkeypatch, options, x_shape, want):
  seen = []
  original = jaxkink.Kinks.max_pool

  def recorded(self, x, window, strides, padding):
    y = original(self, x, window, strides, padding)
    seen.append((x.shape, tuple(window), tuple(strides), tuple(padding),
                 y.shape))
    return y
  monkeypatch.setattr(jaxkink.Kinks, 'max_pool', recorded)
  _shapes(models.get('resnet18', stage_sizes=(1,), width=4, **options),
          x_shape)
  assert seen == [want]
