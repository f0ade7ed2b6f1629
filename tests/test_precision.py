"""Precision policies: names, dtypes, casts and the matmul precision used."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkink


def test_every_policy_has_the_documented_dtypes():
  want = {
      'float32': ('float32',) * 4 + ('highest',),
      'tf32': ('float32',) * 4 + ('tensorfloat32',),
      'bfloat16': ('bfloat16',) * 4 + ('default',),
      'float16': ('float16',) * 4 + ('default',),
      'mixed_float16': ('float32', 'float16', 'float16', 'float32', 'default'),
      'mixed_bfloat16': ('float32', 'bfloat16', 'bfloat16', 'float32',
                         'default'),
  }
  for name, expected in want.items():
    p = jaxkink.get_policy(name).to_dict()
    assert (p['param_dtype'], p['input_dtype'], p['compute_dtype'],
            p['loss_dtype'], p['matmul_precision']) == expected, name


@pytest.mark.parametrize('alias, name', [
    ('f32', 'float32'), ('32', 'float32'), ('BF16', 'bfloat16'),
    ('half', 'float16'), (' mixed ', 'mixed_float16'), ('16', 'float16')])
def test_aliases(alias, name):
  assert jaxkink.get_policy(alias).name == name


def test_unknown_name_lists_the_valid_ones():
  with pytest.raises(ValueError, match='unknown precision policy .fp8.*'
                     'float64, float32, tf32'):
    jaxkink.get_policy('fp8')


def test_float64_needs_x64_and_says_how():
  assert not jax.config.jax_enable_x64
  with pytest.raises(RuntimeError, match='JAX_ENABLE_X64=1'):
    jaxkink.get_policy('float64')
  assert jaxkink.get_policy('float64', check=False).needs_x64
  with jax.enable_x64(True):
    policy = jaxkink.get_policy('float64')
    x = policy.cast_inputs(np.ones(3, np.float32))
    assert x.dtype == jnp.float64
    with policy.scope():
      assert (x @ x).dtype == jnp.float64


def test_casts_touch_floating_leaves_only():
  tree = {'w': jnp.ones((2, 2)), 'step': jnp.array(3, jnp.int32),
          'mask': jnp.array([True]), 'b': np.zeros(2, np.float64),
          'name': 'layer'}
  policy = jaxkink.get_policy('mixed_float16')
  params = policy.cast_params(tree)
  assert params['w'].dtype == jnp.float32 and params['b'].dtype == jnp.float32
  assert params['step'].dtype == jnp.int32 and params['mask'].dtype == bool
  assert params['name'] == 'layer'
  assert policy.cast_to_compute(tree)['w'].dtype == jnp.float16
  assert policy.cast_inputs(tree)['w'].dtype == jnp.float16
  assert policy.cast_loss(jnp.ones(2, jnp.float16)).dtype == jnp.float32


def _dot_precision(policy_name):
  f = jax.jit(lambda a, b: a @ b)
  a = jnp.ones((4, 4))
  with jaxkink.get_policy(policy_name).scope():
    text = f.lower(a, a).as_text()
  line = next(l for l in text.splitlines() if 'dot_general' in l)
  return line.split('precision = [')[1].split(']')[0]


def test_matmul_precision_reaches_the_compiled_program():
  assert _dot_precision('float32') == 'HIGHEST, HIGHEST'
  assert _dot_precision('tf32') == 'HIGH, HIGH'
  assert _dot_precision('float16') == 'DEFAULT, DEFAULT'
  # The level is part of jit's cache key: the same function traced under two
  # policies compiles twice and keeps each level.
  assert _dot_precision('float32') == 'HIGHEST, HIGHEST'


def test_policy_dtype_changes_the_product(rng):
  a = rng.standard_normal((64, 64)).astype(np.float32)
  b = rng.standard_normal((64, 64)).astype(np.float32)
  exact = a.astype(np.float64) @ b.astype(np.float64)
  results = {}
  for name in ('float32', 'bfloat16', 'float16'):
    policy = jaxkink.get_policy(name)
    with policy.scope():
      out = jax.jit(lambda a, b: a @ b)(policy.cast_inputs(a),
                                        policy.cast_inputs(b))
    assert out.dtype == policy.compute_dtype
    results[name] = np.max(np.abs(np.asarray(out, np.float64) - exact))
  assert results['float32'] < 1e-4 < results['float16'] < results['bfloat16']


@pytest.mark.skipif(jax.default_backend() != 'gpu',
                    reason='TF32 exists only on NVIDIA GPUs (Ampere and later)')
def test_tf32_differs_from_true_float32_on_gpu(rng):
  a = jnp.asarray(rng.standard_normal((512, 512)), jnp.float32)
  out = {}
  for name in ('float32', 'tf32'):
    with jaxkink.get_policy(name).scope():
      out[name] = np.asarray(jax.jit(lambda a: a @ a)(a), np.float64)
  exact = np.asarray(a, np.float64) @ np.asarray(a, np.float64)
  err32 = np.max(np.abs(out['float32'] - exact))
  errtf = np.max(np.abs(out['tf32'] - exact))
  assert err32 < 1e-3 < errtf


def test_bad_matmul_precision():
  with pytest.raises(ValueError, match='matmul_precision'):
    jaxkink.Policy('x', 'float32', 'float32', 'float32', 'float32', 'fast')


def test_policy_is_printable_and_serialisable():
  p = jaxkink.get_policy('tf32')
  assert str(p) == ('tf32: params float32, inputs float32, compute float32, '
                    'loss float32, matmul precision tensorfloat32')
  assert p.to_dict()['matmul_precision'] == 'tensorfloat32'
