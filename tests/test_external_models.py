"""Models defined outside jaxkink (``--model=package.module:factory``)."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkink
from jaxkink import models

from conftest import assert_bits_equal

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, 'tests')
PLAIN, AWARE = 'outside_models:plain_cnn', 'outside_models:kink_cnn'


def _inputs():
  sample = jaxkink.data.load('mnist', 'train', source='sample')
  x = jaxkink.data.preprocess(sample.images[:8], sample.info)
  return x, jnp.asarray(sample.labels[:8])


def test_plain_flax_model_gets_the_kink_aware_models_bits():
  x, y = _inputs()
  plain, aware = models.get(PLAIN, features='3'), models.get(AWARE, features=3)
  variables = plain.init(jax.random.key(0), x, jaxkink.Kinks())
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(
      aware.init(jax.random.key(0), x, jaxkink.Kinks()))):
    assert_bits_equal(a, b)

  kinks, axes = jaxkink.Kinks.sweep(relu_s=[0.0, 1.0, 0.5],
                                    pool_beta=[0.0, 1.0, 2.0])

  def grads(model):
    def loss(params, kinks):
      logits = model.apply({'params': params}, x, kinks)
      return jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), y])
    return jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, axes)))

  got = grads(plain)(variables['params'], kinks)
  want = grads(aware)(variables['params'], kinks)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert_bits_equal(a, b)
  assert 'outside_models:plain_cnn' in repr(plain)


@pytest.mark.parametrize('spec, opts, message', [
    ('outside_models', {}, 'unknown model .* or package.module:factory'),
    ('outside_models:', {}, 'expected package.module:factory'),
    ('no_such_module_xyz:f', {}, 'cannot import'),
    ('outside_models:missing', {}, 'has no'),
    ('outside_models:plain_cnn', {'width': 3}, 'takes no option'),
    ('outside_models:not_a_module', {}, 'not a flax.linen.Module'),
])
def test_bad_specs_give_clear_errors(spec, opts, message):
  with pytest.raises(ValueError, match=message):
    models.get(spec, **opts)


def test_a_policy_the_module_cannot_follow_is_refused():
  with pytest.raises(ValueError, match='dtype, param_dtype'):
    models.get('outside_models:no_dtype', policy='bfloat16')
  assert models.get(PLAIN, policy='bfloat16').module.dtype == jnp.bfloat16


def _volume(out, model, *extra):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]),
             JAX_PLATFORMS='cpu')
  env.pop('JAXKINK_DATA_DIR', None)  # the bundled sample
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'volume.py'),
       f'--model={model}', '--model_opt=features=2', '--samples=4',
       '--chunk=2', '--train_size=256', '--batch_size=128',
       '--precision=float32', f'--out={out}', *extra],
      env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return sorted(glob.glob(os.path.join(out, 'float32', 'chunks', '*.npz')))


@pytest.mark.parametrize('kinks', ['relu:0,1', 'pool:0,1'])
def test_volume_script_runs_an_outside_model_as_written_with_jaxkink(
    tmp_path, kinks):
  plain = _volume(str(tmp_path / 'plain'), PLAIN, f'--kinks={kinks}')
  aware = _volume(str(tmp_path / 'aware'), AWARE, f'--kinks={kinks}')
  assert len(plain) == len(aware) == 2
  hits = 0
  for a, b in zip(plain, aware):
    with np.load(a) as fa, np.load(b) as fb:
      assert sorted(fa.files) == sorted(fb.files)
      for name in fa.files:
        if fa[name].dtype.kind == 'U':  # the settings digest: other models
          assert fa[name] != fb[name], name
          continue
        assert_bits_equal(fa[name], fb[name])
      hits += sum(int(fa[n].sum()) for n in fa.files if 'hits' in n)
  assert hits > 0, 'no kink was hit: the comparison would be empty'


def test_train_script_trains_an_outside_model_as_written_with_jaxkink(
    tmp_path):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]),
             JAX_PLATFORMS='cpu')
  env.pop('JAXKINK_DATA_DIR', None)
  weights = []
  for name, model in (('plain', PLAIN), ('aware', AWARE)):
    out = str(tmp_path / name)
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'experiments', 'train.py'),
         f'--model={model}', '--epochs=1', '--batch_size=100',
         '--train_examples=300', '--seeds=1', '--kink_values=0,1',
         f'--out={out}'], env=env, capture_output=True, text=True,
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt, = glob.glob(os.path.join(out, 'checkpoints', '*.npz'))
    with np.load(ckpt) as f:
      # The state's leaves (parameters, optimiser state, keys, flags);
      # the header and manifest record the settings, model name included.
      weights.append({k: f[k] for k in f.files if k.startswith('leaf_')})
  assert sorted(weights[0]) == sorted(weights[1]) and len(weights[0]) > 6
  for k in weights[0]:
    assert_bits_equal(weights[0][k], weights[1][k])


def test_kinkify_tapes_the_engines_hits_and_refuses_nested_programs():
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  x = jnp.array([[0., 1.], [1., 0.]])[None, :, :, None]
  f = lambda x: nn.max_pool(jax.nn.relu(x), (2, 2), (1, 1)).sum()
  taped = jaxkink.TapedKinks.of(jaxkink.Kinks())
  jaxkink.kinkify(f)(taped, x)
  # Two ReLU inputs at 0; the one window's maximum, 1, attained twice.
  assert [int(h.count) for h in taped.tape] == [2, 1]
  nested = lambda x: jax.jit(lambda x: jnp.sin(jax.nn.relu(x)).sum())(x)
  with pytest.raises(ValueError, match='cannot be taped .* screen=False'):
    jaxkink.kinkify(nested)(jaxkink.TapedKinks.of(jaxkink.Kinks()), x)
  assert float(jaxkink.kinkify(nested)(jaxkink.Kinks(), x)) == float(
      nested(x))
