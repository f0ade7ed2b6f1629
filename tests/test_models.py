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
from jaxkink.models.layers import bias_first_dense, hard_sigmoid, hard_swish
from conftest import assert_bits_equal, assert_close_ulps, ulp_distance

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


# The MLP's vmapped program multiplies all members' weights in one product
# (the unbatched input against (12, 3 x 16) in the first layer, batched
# (3, 8, 16) x (3, 16, 16) products after it), the lone program (8, 12) x
# (12, 16): XLA's CPU backend may pick other GEMM kernels for the two shapes
# (on an AVX-512 EPYC 23 of 32 outputs differ in their last bits, also with
# --xla_cpu_max_isa=AVX2: the GEMM library dispatches on the CPU itself). The
# sums have at most 16 terms, over 3 layers and batch norms: a few ulps of
# each array's largest element. Measured between the kernels this
# repository's CPUs offer (YNNPACK and XLA's own dot emitter, with and
# without FMA): at most 6. A member mixed up with another, or batch
# statistics taken across members, is off by far more (checked).
MLP_ULPS = 64


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
    if family == 'mlp':   # dense layers: a few ulps (MLP_ULPS)
      close = lambda a, b: assert_close_ulps(a, b, MLP_ULPS, scale='max')
      close(out_v[i], out)
      jax.tree.map(close, member(stats_v), stats)
      # Another member's output is far outside the tolerance.
      assert ulp_distance(out_v[(i + 1) % 3], out, 'max').max() > (
          1000 * MLP_ULPS)
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
  # Each member is the gradient a lone run with its kink values gives, to
  # rounding: the lone program has other GEMM shapes (MLP_ULPS, in ulps of
  # the largest gradient element), and a vmapped convolution's weight
  # gradient is summed in another order on XLA:CPU. Checked on two families
  # to keep the suite fast (test_kinks.py checks it on a conv + pool net
  # too, and that members of one program do not depend on each other).
  if family not in ('mlp', 'vgg'):
    return
  lone = jax.jit(grad)
  for i, (s, beta) in enumerate(((0.0, 0.0), (0.5, 1.0), (1.0, 10.0))):
    want = lone(s, beta)
    got = jax.tree.map(lambda a, i=i: a[i], g1)
    if family == 'mlp':
      scale = max(float(jnp.abs(a).max()) for a in jax.tree.leaves(want))
      jax.tree.map(lambda a, b: assert_close_ulps(a, b, MLP_ULPS, scale),
                   got, want)
    else:
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                           atol=1e-5),
                   got, want)


def test_vmapped_init_gives_independent_samples():
  # The Monte Carlo pattern: one init per key, vmapped; each sample is the
  # one a lone init with its key gives (threefry keys are vmap-invariant).
  # Bit for bit across the two programs: the draw is integer arithmetic and
  # one elementwise scale-and-shift per weight, compiled by the same loop
  # emitter at any shape (no GEMM or reduction kernel to pick).
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
# Default kinks = JAX's and flax's own functions: exactly (exact arithmetic),
# or to rounding where batch norm makes the two programs inexact.

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


def _dyadic_variables(model, x, rng):
  """Kernels in {-1/2, 0, 1/2}, biases 0, batch-norm scales in [0.5, 1.5].

  With small integer inputs and a loss linear in the logits with small
  integer coefficients, every product and partial sum of the small
  networks below, forward and backward, is a multiple of a small power of
  2^-1 and far below 2^24 of those (bounds in the tests), so float32
  computes it exactly in any order, with or without FMA: any GEMM or
  convolution kernel XLA picks gives the same values. With zero biases,
  many pre-activations are exactly 0 and many pooling windows tie.
  """
  def draw(path, a):
    name = jax.tree_util.keystr(path)
    if 'kernel' in name:
      return jnp.asarray(rng.integers(-1, 2, size=a.shape) / 2, a.dtype)
    return a
  return jax.tree_util.tree_map_with_path(
      draw, _zero_biases(_random_variables(model, x, rng)))


@pytest.mark.parametrize('activation, act, wrong, relu_after_first', [
    ('relu', jax.nn.relu, dict(relu_s=1.0), True),
    ('relu', jax.nn.relu, dict(relu_s=1.0), False),
    ('relu6', jax.nn.relu6, dict(relu6_alpha=1.0), True),
    ('leaky_relu', lambda x: jax.nn.leaky_relu(x, 0.5), dict(leaky_s=0.0),
     True)])
def test_mlp_default_kinks_match_jax(rng, activation, act, wrong,
                                     relu_after_first):
  """Default kinks = jax.nn's activations, in an MLP, exactly.

  Two differently written programs, so XLA may pick other GEMM kernels for
  them; the arithmetic is made exact instead (_dyadic_variables, inputs in
  {-1, 0, 1}, a loss with coefficients in {-1, 0, 1}, LeakyReLU slope 1/2):
  |pre-activations| <= 6, 48, 384, logits <= 3072 (multiples of 2^-7 at
  worst), loss <= 40 * 3072 < 2^17 (2^-7), weight gradients <= 3072
  (2^-6), so every partial sum is exact in float32 in any order. Values,
  not bits, are compared: the sign of a zero sum is the kernel's.
  """
  widths = (16, 16, 16, 5)
  model = models.get('mlp', widths=widths, activation=activation,
                     relu_after_first=relu_after_first, leaky_slope=0.5)
  ref = ReferenceMLP(widths, act, relu_after_first)
  x = jnp.asarray(rng.integers(-1, 2, size=(8, 12)), jnp.float32)
  x = x.at[0].set(0.0)   # with zero biases: exact zeros in every layer
  variables = _dyadic_variables(model, x, rng)
  coef = jnp.asarray(rng.integers(-1, 2, size=(8, 5)), jnp.float32)
  loss = jax.jit(jax.grad(lambda v, k: (model.apply(v, x, k) * coef).sum()))
  ref_loss = lambda v: (ref.apply(v, x) * coef).sum()
  got, want = loss(variables, KINKS), jax.jit(jax.grad(ref_loss))(variables)
  pairs = [(model.apply(variables, x, KINKS), ref.apply(variables, x))]
  for a, b in pairs + list(zip(jax.tree.leaves(got), jax.tree.leaves(want))):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  # Kinks are hit: another kink value (the same program) changes the result.
  other = loss(variables, jaxkink.Kinks(**wrong))
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(other), jax.tree.leaves(want)))


# Batch norm in training mode divides by the batch's standard deviation, so
# the exactness above is lost after the first convolution: the two programs
# (ours and flax's, whose backward passes differ in structure around the
# convolutions) are then equal only to rounding, as XLA's CPU backend may
# compile their convolutions into different kernels (measured on an AVX-512
# EPYC: weight gradients 1 ulp off flax's). Each summed quantity here has at
# most 256 terms (conv1's weight gradient: 4 x 8 x 8 positions), and a
# reordered float32 sum of n terms is off by at most about n ulps of the sum
# of their magnitudes. So BN_ULPS = 256, in ulps of the largest gradient
# element of the whole tree (the convolution biases before a batch norm
# have a gradient that is 0 in exact arithmetic: theirs is rounding noise,
# small only against the tree's scale). Measured between the kernels this
# repository's CPUs offer (YNNPACK and XLA's own dot emitter, with and
# without FMA): at most 1.6 such ulps. Another kink convention changes these
# gradients by more than 10^6 of them (checked below with pool_beta = 1).
BN_ULPS = 256


@pytest.mark.parametrize('batch_norm', [False, True])
def test_small_vgg_default_kinks_match_flax(rng, batch_norm):
  """Default kinks = flax's max_pool and jax.nn.relu, on a small VGG.

  Without batch norm the arithmetic is exact (see _dyadic_variables), so
  ours and flax's give the same values on every CPU whatever kernels XLA
  picks (values, not bits: the sign of a zero sum depends on how a kernel
  starts its accumulator). Bounds: conv1 |pre| <= 27 / 2 (multiples of
  1/2), conv2 <= 36 * 27 / 4 (1/4), logits <= 32 * 243 / 2 (1/8), loss
  < 2^19 (1/8); backward: conv1 weight gradient <= 256 * 360 (1/4), the
  others smaller. With batch norm: within BN_ULPS.
  """
  config = (4, 'M', 8, 'M')
  model = models.get('vgg11', config=config, batch_norm=batch_norm)
  ref = ReferenceVGG(config, batch_norm)
  x = jnp.asarray(rng.integers(0, 2, size=(4, 8, 8, 3)), jnp.float32)
  variables = _dyadic_variables(model, x, rng)
  coef = jnp.asarray(rng.integers(-2, 3, size=(4, 10)), jnp.float32)
  train = batch_norm   # batch statistics in training mode
  mutable = ['batch_stats'] if train else False

  def loss(params, net, *args):
    out = net.apply({**variables, 'params': params}, x, *args, train=train,
                    mutable=mutable)
    out = out[0] if mutable else out
    return (out * coef).sum(), out
  ours = jax.jit(jax.value_and_grad(
      lambda p, kinks: loss(p, model, kinks), has_aux=True))
  (l1, y1), g1 = ours(variables['params'], KINKS)
  (l2, y2), g2 = jax.jit(jax.value_and_grad(
      lambda p: loss(p, ref), has_aux=True))(variables['params'])
  scale = max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g2))
  if batch_norm:
    assert_close_ulps(y1, y2, BN_ULPS, scale='max')
    assert_close_ulps(l1, l2, BN_ULPS)
    jax.tree.map(lambda a, b: assert_close_ulps(a, b, BN_ULPS, scale), g1, g2)
  else:
    for a, b in [(y1, y2), (l1, l2)] + list(zip(jax.tree.leaves(g1),
                                                 jax.tree.leaves(g2))):
      assert a.dtype == b.dtype
      np.testing.assert_array_equal(a, b)
  # The test means something: zeros and ties are there, and other kink
  # values (the same compiled program) change the gradients far beyond
  # the tolerance.
  pre = nn.Conv(4, (3, 3), padding=1).apply(
      {'params': variables['params']['Conv_0']}, x)
  assert int(jaxkink.relu_hits(pre).count) > 0
  assert int(jaxkink.pool_hits(jax.nn.relu(pre), (2, 2), (2, 2)).count) > 0
  others = [jaxkink.Kinks(pool_beta=1.0)]
  if not batch_norm:   # after a batch norm, exact zeros are rare
    others.append(jaxkink.Kinks(relu_s=1.0))
  for kinks in others:
    _, g = ours(variables['params'], kinks)
    worst = max(ulp_distance(a, b, scale).max()
                for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g2)))
    assert worst > 1000 * BN_ULPS, (kinks, worst)


def test_hard_swish_matches_jax_bit_for_bit(rng):
  # Both jitted: XLA turns ``/ 6`` into ``* (1 / 6)``, eager code does not,
  # and ``jax.nn.hard_swish`` is always jitted. Elementwise programs on the
  # same shape: no kernel choice; checked with and without FMA
  # (--xla_cpu_max_isa=AVX).
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


# ---------------------------------------------------------------------------
# PyTorch's CPU summation order (``torch_order``): same thetas, other bits.

# u = 0.75, v = -1, b = 0.25 + 2^-25 (float32). Every product is exact, so
# only the order of the additions matters: XLA's (u + v) + b = 2^-25, the
# bias first (b + u) + v = 1 - 1 = 0 (b + u rounds to 1: 2^-25 is below half
# an ulp of 1).
_B = np.float32(0.25 + 2.0 ** -25)


def test_bias_first_dense_order_on_a_hand_case():
  x = jnp.ones((1, 2), jnp.float32)
  w = jnp.array([[0.75], [-1.0]], jnp.float32)
  b = jnp.array([_B])
  native = nn.Dense(1).apply({'params': {'kernel': w, 'bias': b}}, x)
  assert float(native[0, 0]) == 2.0 ** -25
  blocked = bias_first_dense(x, w, b, 1)
  assert float(blocked[0, 0]) == 0.0
  # One block of all of K: the bias first, then the (exact) product.
  assert float(bias_first_dense(x, w, b, 2)[0, 0]) == 2.0 ** -25
  # Without a bias the blocks start the sum.
  assert float(bias_first_dense(x, w, None, 1)[0, 0]) == -0.25
  with pytest.raises(ValueError, match='block'):
    bias_first_dense(x, w, b, 0)


def test_torch_order_draws_the_same_thetas():
  x = jnp.zeros((1, 784), jnp.float32)
  native = models.get('mlp_reference').init(jax.random.key(3), x, KINKS)
  torch = models.get('mlp_reference_torch').init(jax.random.key(3), x, KINKS)
  assert jax.tree.structure(native) == jax.tree.structure(torch)
  for a, b in zip(jax.tree.leaves(native), jax.tree.leaves(torch)):
    assert_bits_equal(a, b)
  assert models.get('mlp_reference_torch').torch_order == ('784:192',
                                                          '256:128')
  assert models.get('mlp', torch_order='784:192,256:128').torch_order == (
      '784:192', '256:128')


def test_torch_order_puts_a_kink_where_xla_has_none():
  """The hand case as a hidden layer: in PyTorch's order the pre-activation
  is an exact 0, so ReLU'(0) = 0 and 1 give other input gradients; in XLA's
  order it is 2^-25 and they agree."""
  params = {'Dense_0': {'kernel': jnp.array([[0.75], [-1.0]]),
                        'bias': jnp.array([_B])},
            'Dense_1': {'kernel': jnp.ones((1, 1)), 'bias': jnp.zeros(1)}}
  x = jnp.ones((1, 2), jnp.float32)

  def input_grad(model, s):
    return jax.grad(lambda v: model.apply({'params': params}, v,
                                          jaxkink.Kinks(relu_s=s)).sum())(x)
  native = models.get('mlp', widths=(1, 1))
  torch = models.get('mlp', widths=(1, 1), torch_order=('2:1',))
  np.testing.assert_array_equal(input_grad(native, 0.0),
                                input_grad(native, 1.0))
  np.testing.assert_array_equal(input_grad(torch, 0.0), [[0.0, 0.0]])
  np.testing.assert_array_equal(input_grad(torch, 1.0), [[0.75, -1.0]])


@pytest.mark.parametrize('order, match', [
    (('784:0',), 'positive integers'),
    (('784',), 'K:kc'),
    (('784:192', (784, 128)), 'each fan-in K once'),
])
def test_torch_order_bad_entries(order, match):
  with pytest.raises(ValueError, match=match):
    models.get('mlp', torch_order=order)


def test_torch_order_missing_fan_in():
  model = models.get('mlp', torch_order=('784:192',))
  with pytest.raises(ValueError, match='fan-in 256 of hidden layer 1'):
    jax.eval_shape(model.init, jax.random.key(0),
                   jax.ShapeDtypeStruct((1, 784), jnp.float32), KINKS)
