"""Model zoo: initialisers, registry, precision policies, documentation."""

from __future__ import annotations

import doctest
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkink
from jaxkink import models
from jaxkink.models import registry
from jaxkink.models.layers import Layers
from conftest import assert_bits_equal

KINKS = jaxkink.Kinks()


class OneLayer(nn.Module):
  """A single dense or conv layer built the way the models build theirs."""
  kind: str
  features: int
  init_scheme: str = 'pytorch'
  kernel: int = 3
  groups: int = 1
  param_dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x):
    layers = Layers(init_scheme=self.init_scheme,
                    param_dtype=self.param_dtype)
    if self.kind == 'dense':
      return layers.dense(x, self.features)
    return layers.conv(x, self.features, self.kernel, groups=self.groups)


def _init(kind, features, x_shape, seed=0, **kw):
  layer = OneLayer(kind, features, **kw)
  params = layer.init(jax.random.key(seed), jnp.zeros(x_shape))['params']
  (child,) = params.values()   # Dense_0 or Conv_0
  return child


def _assert_uniform(sample, bound):
  """Support, extremes and variance of ``sample`` against U[-bound, bound]."""
  sample = np.asarray(sample, np.float64).ravel()
  n = sample.size
  assert sample.max() <= bound and sample.min() >= -bound
  # The extremes of n uniform draws come within ~bound/n of the ends.
  assert sample.max() > bound * (1 - 50 / n)
  assert sample.min() < -bound * (1 - 50 / n)
  np.testing.assert_allclose(sample.var(), bound**2 / 3, rtol=0.02)
  assert abs(sample.mean()) < 5 * bound / math.sqrt(3 * n)


def _pytorch_bound(fan_in):
  # torch.nn.init.kaiming_uniform_(w, a=sqrt(5)): gain for leaky_relu with
  # slope a, std = gain / sqrt(fan_in), uniform bound = sqrt(3) * std.
  a = math.sqrt(5)
  gain = math.sqrt(2 / (1 + a**2))
  return math.sqrt(3) * gain / math.sqrt(fan_in)


@pytest.mark.parametrize('kind, features, x_shape, groups, fan_in', [
    ('dense', 4000, (1, 50), 1, 50),            # nn.Linear(50, 4000)
    ('dense', 100_000, (1, 3), 1, 3),           # many biases
    ('conv', 2000, (1, 5, 5, 6), 1, 6 * 3 * 3),  # nn.Conv2d(6, 2000, 3)
    ('conv', 50_000, (1, 5, 5, 2), 1, 2 * 3 * 3),
    # Depthwise nn.Conv2d(c, c, 3, groups=c): fan_in = 1 * 3 * 3.
    ('conv', 20_000, (1, 5, 5, 20_000), 20_000, 9),
])
def test_pytorch_default_init_bounds(kind, features, x_shape, groups, fan_in):
  params = _init(kind, features, x_shape, groups=groups)
  bound = _pytorch_bound(fan_in)
  np.testing.assert_allclose(bound, 1 / math.sqrt(fan_in), rtol=1e-12)
  _assert_uniform(params['kernel'], bound)
  _assert_uniform(params['bias'], bound)     # the weight's fan_in, too


def test_pytorch_init_draws_float32_then_rounds():
  # As a float32 PyTorch model converted with .half() / .double(). Two
  # programs, compared bit for bit: the float32 draw is the same elementwise
  # computation on the same shapes in both (no kernel to pick), and the
  # conversion to float16 is one correctly rounded operation.
  p32 = _init('dense', 64, (1, 8))
  p16 = _init('dense', 64, (1, 8), param_dtype=jnp.float16)
  jax.tree.map(lambda a, b: assert_bits_equal(a.astype(jnp.float16), b),
               p32, p16)


def test_other_schemes():
  # TMLR notebook: conv kaiming_uniform_(fan_in, relu), bias 0.
  p = _init('conv', 4000, (1, 5, 5, 6), init_scheme='tmlr')
  _assert_uniform(p['kernel'], math.sqrt(6 / 54))
  assert not np.any(p['bias'])
  # TMLR notebook: Linear weight N(0, 0.01^2), bias 0.
  p = _init('dense', 4000, (1, 50), init_scheme='tmlr')
  np.testing.assert_allclose(np.std(p['kernel']), 0.01, rtol=0.01)
  assert not np.any(p['bias'])
  # torchvision ResNet: conv kaiming_normal_(fan_out, relu), N(0, 2/fan_out).
  p = _init('conv', 500, (1, 5, 5, 400), init_scheme='torchvision_resnet')
  np.testing.assert_allclose(np.std(p['kernel']),
                             math.sqrt(2 / (500 * 9)), rtol=0.01)
  p = _init('dense', 4000, (1, 50), init_scheme='torchvision_resnet')
  _assert_uniform(p['kernel'], 1 / math.sqrt(50))
  # flax: lecun_normal (variance 1 / fan_in), zero bias.
  p = _init('dense', 4000, (1, 50), init_scheme='flax')
  np.testing.assert_allclose(np.var(p['kernel']), 1 / 50, rtol=0.02)
  assert not np.any(p['bias'])
  # Batch norm starts at scale 1, bias 0.
  v = models.get('mlp', widths=(4, 2), batch_norm=True).init(
      jax.random.key(0), jnp.zeros((2, 3)), KINKS)
  np.testing.assert_array_equal(v['params']['BatchNorm_0']['scale'], 1)
  np.testing.assert_array_equal(v['params']['BatchNorm_0']['bias'], 0)


def test_unknown_init_scheme_lists_the_valid_ones():
  with pytest.raises(ValueError, match='unknown initialiser .kaiming.*pytorch, '
                     'flax, tmlr'):
    models.get('mlp', init_scheme='kaiming')


# ---------------------------------------------------------------------------
# Registry.

def test_names():
  assert {'mlp', 'mlp_reference', 'lenet5', 'vgg11', 'vgg13', 'vgg16',
          'vgg19', 'resnet18', 'resnet50', 'densenet121',
          'mobilenet_v3_small'} <= set(models.names())
  assert models.get('VGG-11').config == 'vgg11'
  assert models.get('ResNet18').stage_sizes == (2, 2, 2, 2)
  assert isinstance(models.get('mobilenetv3small'), models.MobileNetV3Small)


def test_bad_name_lists_valid_names():
  with pytest.raises(ValueError, match=r"unknown model 'vgg12'; valid names: "
                     r'densenet121, lenet5, .*vgg11, vgg13'):
    models.get('vgg12')


def test_bad_option_lists_valid_options():
  with pytest.raises(ValueError, match="model 'vgg11' has no option.s. "
                     'batchnorm; valid options: config, num_classes, '
                     'batch_norm, activation'):
    models.get('vgg11', batchnorm=True)
  assert 'batch_norm' in models.options('resnet18')


@pytest.mark.parametrize('name, options, match', [
    ('vgg11', dict(batch_norm='maybe'), 'batch_norm=.maybe.'),
    ('mlp', dict(activation='tanh'), 'unknown activation .tanh.; valid: relu'),
    ('resnet18', dict(stem='tiny'), 'unknown stem'),
    ('resnet18', dict(stem_pool='3x3'), 'unknown stem_pool'),
    ('resnet18', dict(block='wide'), 'unknown block'),
    ('vgg11', dict(config='vgg12'), 'unknown VGG config'),
    ('mlp', dict(widths=()), 'at least one width'),
])
def test_bad_option_values(name, options, match):
  with pytest.raises(ValueError, match=match):
    models.get(name, **options)


def test_string_options_from_flags():
  assert models.get('vgg11', batch_norm='false').batch_norm is False
  assert models.get('vgg11', batch_norm='True').batch_norm is True
  model = models.get('mlp', widths='784,10', dropout='0.5', activation='relu6')
  assert (model.widths, model.dropout, model.activation) == ((784, 10), 0.5,
                                                             'relu6')
  assert models.get('resnet18', num_classes='100').num_classes == 100
  # Presets are defaults that options override.
  assert models.get('mlp_reference').relu_after_first is False
  assert models.get('mlp_reference', relu_after_first=True).relu_after_first


def test_registry_doctest():
  result = doctest.testmod(registry, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0


# ---------------------------------------------------------------------------
# Precision policies.

def test_policy_sets_dtypes_and_precision():
  x = jnp.ones((2, 6))
  model = models.get('mlp', widths=(4, 3), policy='float16')
  variables = model.init(jax.random.key(0), x.astype(jnp.float16), KINKS)
  assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype('float16')}
  assert model.apply(variables, x.astype(jnp.float16), KINKS).dtype == (
      jnp.float16)

  mixed = models.with_policy(models.get('mlp', widths=(4, 3)),
                             'mixed_float16')
  variables = mixed.init(jax.random.key(0), x, KINKS)
  assert {a.dtype for a in jax.tree.leaves(variables)} == {jnp.dtype('float32')}
  assert mixed.apply(variables, x.astype(jnp.float16), KINKS).dtype == (
      jnp.float16)

  assert models.get('vgg11', policy='tf32').precision == 'tensorfloat32'
  assert models.get('vgg11', policy='bfloat16').precision is None
  f32 = models.get('mlp', widths=(4, 3), policy=jaxkink.get_policy('float32'))
  assert f32.precision == 'highest'
  hlo = jax.jit(f32.apply).lower(f32.init(jax.random.key(0), x, KINKS), x,
                                 KINKS).as_text()
  assert 'HIGHEST' in hlo


def test_float64_policy_needs_x64():
  if jax.config.jax_enable_x64:
    pytest.skip('x64 is on in this process')
  with pytest.raises(RuntimeError, match='jax_enable_x64'):
    models.get('mlp', policy='float64')


# ---------------------------------------------------------------------------
# Documentation.

@pytest.mark.parametrize('cls', [models.MLP, models.LeNet5, models.VGG,
                                 models.ResNet, models.DenseNet,
                                 models.MobileNetV3Small])
def test_each_model_says_where_the_papers_use_it(cls):
  doc = cls.__doc__
  assert 'Used in' in doc
  assert any(w in doc for w in ('Fig.', 'Table', 'appendix')), cls
