"""Training sweeps: vmapped members are separate trainings (exactly inside
one program, to rounding against separately compiled ones), divergence,
resume, and the grid's invariants (same seed: same weights and batches)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkink
from jaxkink import models
from jaxkink import training
from conftest import assert_bits_equal, assert_close_ulps, file_bytes

POLICY = jaxkink.get_policy('float32')
SGD = training.OptimizerConfig('sgd', lr=0.1, momentum=0.9, weight_decay=5e-4)
N_TRAIN, N_TEST, BATCH = 96, 40, 32


def _data(rng, shape=(28, 28, 1)):
  images = rng.integers(0, 256, (N_TRAIN + N_TEST, *shape), dtype=np.uint8)
  labels = rng.integers(0, 10, N_TRAIN + N_TEST).astype(np.int32)
  return ((images[:N_TRAIN], labels[:N_TRAIN]),
          (images[N_TRAIN:], labels[N_TRAIN:]))


def _params(model, seeds, shape=(28, 28, 1)):
  """PyTorch-style U(+-1/sqrt(fan_in)) draws with numpy, per seed (the draw
  is not under test; this skips compiling threefry)."""
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, *shape)), jaxkink.Kinks()))
  out = []
  for seed in seeds:
    rng = np.random.default_rng(seed)

    def draw(s, rng=rng):
      fan_in = s.shape[0] if len(s.shape) == 2 else 16
      return jnp.asarray(rng.uniform(-1, 1, s.shape) / np.sqrt(fan_in),
                         s.dtype)
    variables = jax.tree.map(draw, shapes)
    stats = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype), shapes.get('batch_stats', {}))
    stats = jax.tree_util.tree_map_with_path(
        lambda p, a: a + 1 if p[-1].key == 'var' else a, stats)
    out.append((variables['params'], stats))
  return out


def _sweep(model, seeds, kinks, data, *, optimizer=None, epochs=2,
           dataset='mnist', augment=False, params=None, out=None,
           stop_after=None, pool_betas=(0.0,), batching='vmap'):
  grid = training.make_grid(seeds, kinks, pool_betas)
  config = training.SweepConfig(
      dataset=dataset, epochs=epochs, batch_size=BATCH, augment=augment,
      optimizer=optimizer or SGD, batching=batching)
  shape = data[0][0].shape[1:]
  if params is None:
    params = _params(model, seeds, shape)
  with POLICY.scope():
    return training.run_sweep(model, POLICY, grid, config, *data,
                              params=params, out=out, stop_after=stop_after,
                              log=lambda m: None)


def _member(state, m):
  return jax.tree.map(lambda a: np.asarray(a[m]), state.params)


def _assert_tree_bits_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert_bits_equal(x, y)


MLP = models.get('mlp', widths=(16, 16, 10), policy=POLICY)
BN_MLP = models.get('mlp', widths=(16, 16, 10), batch_norm=True,
                    dropout=0.25, policy=POLICY)
BN_KW = dict(epochs=3, optimizer=training.OptimizerConfig(
    'adam', lr=1e-3, schedule='cosine'))


# A separately compiled single-member training is another program: the
# plain network's products instead of the grid's batched ones, which XLA's
# CPU backend may give other GEMM kernels (by CPU and by shape), so it
# equals a member only to rounding. After the tests' 6 SGD steps, in ulps of
# each parameter array's largest element, the kernels this repository's
# CPUs offer (YNNPACK and XLA's own dot emitter, with and without FMA) give
# trainings at most 4 apart; TRAIN_ULPS leaves room for other kernels.
# Another kink value after a kink hit, or another member's weights, are
# 10^5 and more away.
TRAIN_ULPS = 64


def _assert_tree_close(a, b, ulps=TRAIN_ULPS):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert_close_ulps(x, y, ulps, scale='max')


def test_vmapped_members_are_separate_trainings_sgd(rng):
  """3 kink members in one program, each the training it would be alone
  (SGD with momentum and weight decay, 2 epochs, shuffled batches): bit for
  bit inside the grid's program (the same program on the kink values
  reversed gives the members reversed), to rounding against separately
  compiled single-member trainings (TRAIN_ULPS)."""
  data = _data(rng)
  kinks = (0.0, 0.5, 1.0)
  grid = _sweep(MLP, [0], kinks, data)
  flipped = _sweep(MLP, [0], kinks[::-1], data)
  for m, s in enumerate(kinks):
    _assert_tree_bits_equal(_member(grid['state'], m),
                            _member(flipped['state'], 2 - m))
    assert grid['history'][-1]['test_acc'][m] == (
        flipped['history'][-1]['test_acc'][2 - m])
    alone = _sweep(MLP, [0], [s], data)
    _assert_tree_close(_member(grid['state'], m), _member(alone['state'], 0))
    # Rounding could flip the argmax of one nearly tied test example.
    assert abs(grid['history'][-1]['test_acc'][m]
               - alone['history'][-1]['test_acc'][0]) <= 1 / N_TEST
  # Different seeds: member (seed 1, kink 1) of a 2 x 2 grid, against the
  # same program with the seeds swapped (its member 1) and a lone training.
  grid = _sweep(MLP, [0, 1], [0.0, 1.0], data)
  swapped = _sweep(MLP, [1, 0], [0.0, 1.0], data)
  _assert_tree_bits_equal(_member(grid['state'], 3),
                          _member(swapped['state'], 1))
  alone = _sweep(MLP, [1], [1.0], data, params=_params(MLP, [1]))
  _assert_tree_close(_member(grid['state'], 3), _member(alone['state'], 0))
  # Same kinks, different seeds: different weights and batches, far
  # outside the tolerance.
  assert not np.array_equal(_member(grid['state'], 0)['Dense_0']['kernel'],
                            _member(grid['state'], 2)['Dense_0']['kernel'])
  with pytest.raises(AssertionError, match='ulps apart'):
    _assert_tree_close(_member(grid['state'], 0), _member(grid['state'], 2))


@pytest.mark.parametrize('model,kw', [(MLP, {}), (BN_MLP, BN_KW)],
                         ids=['mlp_sgd', 'bn_dropout_mlp_adam'])
def test_separate_batching_members_are_lone_trainings_bit_for_bit(rng, model,
                                                                  kw):
  """batching='separate': each member of a 2 seeds x 2 kinks grid is the
  one-member training of its seed and kink, bit for bit (parameters, batch
  statistics, every metric of every epoch): the same one-member program."""
  data = _data(rng)

  def params(seed):
    # Kink hits: a first-layer unit with zero weights and bias has the
    # pre-activation 0 on every example at the first step, so in MLP
    # ReLU'(0) = 0 and 1 train differently.
    (p, stats), = _params(model, [seed])
    dense = p['Dense_0']
    p = {**p, 'Dense_0': {'kernel': dense['kernel'].at[:, 0].set(0),
                          'bias': dense['bias'].at[0].set(0)}}
    return [(p, stats)]
  grid = _sweep(model, [0, 1], [0.0, 1.0], data, batching='separate',
                params=params(0) + params(1), **kw)
  for m, (seed, s) in enumerate([(0, 0.0), (0, 1.0), (1, 0.0), (1, 1.0)]):
    alone = _sweep(model, [seed], [s], data, params=params(seed), **kw)
    _assert_tree_bits_equal(_member(grid['state'], m),
                            _member(alone['state'], 0))
    _assert_tree_bits_equal(
        jax.tree.map(lambda a: a[m], grid['state'].batch_stats),
        jax.tree.map(lambda a: a[0], alone['state'].batch_stats))
    for h, a in zip(grid['history'], alone['history'], strict=True):
      for key in ('train_loss', 'train_acc', 'test_loss', 'test_acc',
                  'diverged'):
        assert h[key][m] == a[key][0], (m, key, h['epoch'])
  # Each member got its own kink value and seed.
  differ = lambda m, n: any(
      not np.array_equal(a, b) for a, b in zip(
          jax.tree.leaves(_member(grid['state'], m)),
          jax.tree.leaves(_member(grid['state'], n))))
  assert differ(0, 2) and differ(1, 3)
  if model is MLP:  # (the planted hits do not reach BN_MLP's weights)
    assert differ(0, 1) and differ(2, 3)
  assert int(grid['state'].step) == int(alone['state'].step)


def test_adam_members_vs_separate_trainings(rng):
  """Adam: members of one program agree bit for bit; a separately compiled
  single member agrees to rounding only (documented in the notes: XLA
  compiles the tree-wide bias-corrected update of a batched member
  differently from the unbatched one)."""
  data = _data(rng)
  adam = training.OptimizerConfig('adam', lr=1e-3)
  grid = _sweep(MLP, [0], [0.0, 1.0], data, optimizer=adam)
  _assert_tree_bits_equal(_member(grid['state'], 0), _member(grid['state'], 1))
  alone = _sweep(MLP, [0], [0.0], data, optimizer=adam)
  for x, y in zip(jax.tree.leaves(_member(grid['state'], 0)),
                  jax.tree.leaves(_member(alone['state'], 0))):
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)


@jax.jit
def _kink_hits(params, x):
  """Exact zeros among the hidden pre-activations of MLP on ``x``."""
  _, state = MLP.apply({'params': params}, x, jaxkink.Kinks(),
                       capture_intermediates=True, mutable=['intermediates'])
  return sum(jaxkink.relu_hits(z).count
             for z in jaxkink.lockstep.hidden_preactivations(state))


def test_kink_members_without_hits_stay_identical(rng):
  """Different ReLU'(0) but no pre-activation exactly 0: identical members
  (with batch norm and dropout: see the resume test)."""
  data = _data(rng)
  res = _sweep(MLP, [0, 1], [0.0, 1.0], data, epochs=1)
  for seed in range(2):
    _assert_tree_bits_equal(_member(res['state'], 2 * seed),
                            _member(res['state'], 2 * seed + 1))
  assert res['history'][-1]['l1_to_first_kink'] == [0.0] * 4
  # No exact hit: replay the seed-0 steps and screen every pre-activation.
  grid = training.make_grid([0], [0.0])
  # The sweep's (cached) single-member program, one step at a time.
  tx, epoch, _ = training.loop.programs(MLP, POLICY, SGD, 0, 1, 1, 'mnist',
                                        False)
  state = training.init_state(MLP, tx, grid, jnp.zeros((1, 28, 28, 1)),
                              POLICY, params=_params(MLP, [0]))
  order = training.epoch_order(grid, N_TRAIN, BATCH, 0)
  keys = training.augment_keys(grid)
  for k in range(order.shape[1]):
    x = jaxkink.data.preprocess(jnp.asarray(data[0][0][order[0, k]]),
                                'mnist')
    assert int(_kink_hits(_member(state, 0), x)) == 0
    state, _, _ = epoch(state, grid.kinks, data[0][0], data[0][1],
                        order[:, k:k + 1], keys)
  # The replay is the plain single-member program, the sweep a vmapped one
  # (other GEMM shapes): equal to rounding.
  _assert_tree_close(_member(state, 0), _member(res['state'], 0))


def test_augmentation_is_per_seed(rng):
  """CIFAR augmentation: members of one seed see the same crops and flips."""
  data = _data(rng, (32, 32, 3))
  mlp = models.get('mlp', widths=(8, 10), policy=POLICY)
  res = _sweep(mlp, [0, 1], [0.0, 1.0], data, epochs=1, dataset='cifar10',
               augment=True)
  _assert_tree_bits_equal(_member(res['state'], 0), _member(res['state'], 1))
  _assert_tree_bits_equal(_member(res['state'], 2), _member(res['state'], 3))
  # The augmentation does change the batch, per seed and per step.
  prepare = jax.jit(training.make_batch_fn('cifar10', POLICY, augment=True))
  plain = training.make_batch_fn('cifar10', POLICY)(data[0][0][:BATCH], 0,
                                                     None)
  keys = training.augment_keys(training.make_grid([0, 1], [0.0]))
  views = [np.asarray(prepare(data[0][0][:BATCH], step, keys[s]))
           for s, step in ((0, 0), (0, 1), (1, 0))]
  for v in views:
    assert not np.array_equal(v, plain)
  assert not np.array_equal(views[0], views[1])
  assert not np.array_equal(views[0], views[2])


def test_forced_nan_leaves_the_other_members_untouched(rng):
  data = _data(rng)
  params = _params(MLP, [0])
  clean = _sweep(MLP, [0], [0.0, 0.5, 1.0], data, params=params)
  # Member 1's first weight is NaN; give it its own parameter set by
  # training a grid whose seed-0 parameters are patched after init.
  grid = training.make_grid([0], [0.0, 0.5, 1.0])
  config = training.SweepConfig('mnist', 2, BATCH, SGD)
  # The sweep's own (cached) program: same shape and optimizer.
  tx, epoch, _ = training.loop.programs(MLP, POLICY, config.optimizer, 0, 1,
                                        3, 'mnist', False)
  state = training.init_state(MLP, tx, grid, jnp.zeros((1, 28, 28, 1)),
                              POLICY, params=params)
  kernel = state.params['Dense_0']['kernel'].at[1, 0, 0].set(jnp.nan)
  state = state.replace(params={**state.params, 'Dense_0': {
      **state.params['Dense_0'], 'kernel': kernel}})
  poisoned = state
  keys = training.augment_keys(grid)
  losses = []
  with POLICY.scope():
    for e in range(2):
      order = training.epoch_order(grid, N_TRAIN, BATCH, e)
      state, loss, _ = epoch(state, grid.kinks, data[0][0], data[0][1],
                             order, keys)
      losses.append(np.asarray(loss))
  np.testing.assert_array_equal(np.asarray(state.diverged),
                                [False, True, False])
  np.testing.assert_array_equal(np.asarray(state.diverged_step), [-1, 0, -1])
  assert int(state.step) == 2 * (N_TRAIN // BATCH)
  loss = np.concatenate(losses)
  assert np.isnan(loss[:, 1]).all() and np.isfinite(loss[:, [0, 2]]).all()
  # The diverged member stopped updating: its state is the poisoned start.
  _assert_tree_bits_equal(_member(state, 1), _member(poisoned, 1))
  _assert_tree_bits_equal(
      jax.tree.map(lambda a: np.asarray(a[1]), state.opt_state),
      jax.tree.map(lambda a: np.asarray(a[1]), poisoned.opt_state))
  for m in (0, 2):
    _assert_tree_bits_equal(_member(state, m), _member(clean['state'], m))


def test_divergence_from_a_huge_step_is_recorded(rng):
  """A learning rate that overflows float32: every member stops at the same
  step with finite parameters, nothing raises, the metrics say so."""
  data = _data(rng)
  res = _sweep(MLP, [0], [0.0, 1.0], data, epochs=2,
               optimizer=training.OptimizerConfig('sgd', lr=1e38))
  last = res['history'][-1]
  assert last['diverged'] == [True, True]
  assert last['diverged_step'][0] == last['diverged_step'][1] >= 0
  assert all(np.isnan(v) for v in last['train_loss'])
  for leaf in jax.tree.leaves(res['state'].params):
    assert np.isfinite(np.asarray(leaf)).all()


def test_resume_reproduces_the_uninterrupted_run(rng, tmp_path):
  data = _data(rng)
  bn, kw = BN_MLP, BN_KW
  whole = _sweep(bn, [0, 1], [0.0, 1.0], data, out=str(tmp_path / 'whole'),
                 **kw)
  # Batch norm and dropout: the kink members of a seed stay identical (no
  # kink hit), the seeds differ (their own dropout masks and statistics).
  state = whole['state']
  _assert_tree_bits_equal(_member(state, 0), _member(state, 1))
  stats = jax.tree.map(np.asarray, state.batch_stats)
  _assert_tree_bits_equal(jax.tree.map(lambda a: a[0], stats),
                          jax.tree.map(lambda a: a[1], stats))
  assert not np.array_equal(stats['BatchNorm_0']['mean'][0],
                            stats['BatchNorm_0']['mean'][2])
  cut = str(tmp_path / 'cut')
  first = _sweep(bn, [0, 1], [0.0, 1.0], data, out=cut, stop_after=1, **kw)
  assert len(first['history']) == 1
  resumed = _sweep(bn, [0, 1], [0.0, 1.0], data, out=cut, **kw)
  assert len(resumed['history']) == 3
  for a, b in ((whole['state'], resumed['state']),):
    _assert_tree_bits_equal(jax.tree.map(np.asarray, a),
                            jax.tree.map(np.asarray, b))
  drop = lambda h: {k: v for k, v in h.items()
                    if k not in ('seconds', 'images_per_s')}
  saved = json.loads((tmp_path / 'cut' / 'metrics.json').read_text())
  assert [drop(h) for h in saved['history']] == [
      drop(h) for h in whole['history']]
  assert saved['members'][3] == {'member': 3, 'seed': 1, 'kink_index': 1,
                                 'label': 's=1', 'kink_value': 1.0,
                                 'pool_beta': 0.0}
  # Another configuration is refused before anything in the directory is
  # touched.
  before = file_bytes(cut)
  with pytest.raises(jaxkink.rundir.RefusedError, match=r'grid.seeds: \[0, 1\] -> \[0, 1, 2\]'):
    _sweep(bn, [0, 1, 2], [0.0, 1.0], data, out=cut, **kw)
  assert file_bytes(cut) == before


def test_checkpoint_keeps_the_bits_of_every_dtype(tmp_path):
  tree = {'a': jnp.asarray([1.5, -0.0, np.nan], jnp.bfloat16),
          'b': jnp.asarray([65504, 1e-7], jnp.float16),
          'c': jnp.asarray([True, False]), 'd': jnp.arange(3, dtype=jnp.int32),
          'e': jax.random.key_data(jax.random.key(3))}
  training.checkpoint.save(tmp_path / 'c.npz', tree, epoch=4)
  back, meta = training.checkpoint.load(tmp_path / 'c.npz', tree)
  assert meta == {'epoch': 4}
  _assert_tree_bits_equal(jax.tree.map(np.asarray, tree),
                          jax.tree.map(np.asarray, back))
  assert not any(p.startswith('c.npz.tmp') for p in os.listdir(tmp_path))


def test_grid_layout_and_pool_betas():
  grid = training.make_grid([3, 5], [0.0, 1.0], [0.0, 10.0])
  assert grid.members == 8 and grid.num_kinks == 4
  assert grid.member(5) == (1, 1)
  assert grid.labels == ('s=0 beta=0', 's=0 beta=10', 's=1 beta=0',
                         's=1 beta=10')
  np.testing.assert_array_equal(grid.kinks.relu_s, [0, 0, 1, 1])
  np.testing.assert_array_equal(grid.kinks.pool_beta, [0, 10, 0, 10])
  legacy = training.make_grid([0], [0.5], legacy_relu_grad=True)
  assert legacy.kinks.legacy_relu_grad
  relu6 = training.make_grid([0], [0.5], activation='relu6')
  np.testing.assert_array_equal(relu6.kinks.relu6_beta, [0.5])


@pytest.mark.parametrize('make, match', [
    (lambda: training.make_grid([], [0.0]), 'seeds is empty'),
    (lambda: training.make_grid([0], []), 'kink_values is empty'),
    (lambda: training.make_grid([0, 0], [0.0]), 'repeated'),
    (lambda: training.OptimizerConfig('rmsprop'), 'valid: sgd, adam'),
    (lambda: training.OptimizerConfig(schedule='step'), 'constant, cosine'),
    (lambda: training.OptimizerConfig(lr=0.0), 'positive'),
    (lambda: training.SweepConfig('mnist', 0, 32), 'epochs'),
    (lambda: training.get_preset('vgg'), 'relu_vgg11_sgd'),
    (lambda: training.make_grid([0], [0.0], activation='elu'), 'relu6'),
])
def test_bad_settings_raise_clear_errors(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_batch_larger_than_the_dataset_raises(rng):
  data = _data(rng)
  grid = training.make_grid([0], [0.0])
  config = training.SweepConfig('mnist', 1, N_TRAIN + 1)
  with pytest.raises(ValueError, match='exceeds the 96 training examples'):
    training.run_sweep(MLP, POLICY, grid, config, *data,
                       params=_params(MLP, [0]))


def test_optimizers_match_pytorch_update_rules():
  """SGD momentum / weight decay and Adam as torch.optim writes them."""
  p, g = jnp.asarray([1.0, -2.0]), jnp.asarray([0.5, 0.25])
  tx = training.make_optimizer(training.OptimizerConfig(
      'sgd', lr=0.1, momentum=0.9, weight_decay=0.01), 10)
  state = tx.init(p)
  buf = np.zeros(2)
  want = np.asarray(p, np.float64)
  for _ in range(3):
    u, state = tx.update(g, state, p)
    p = p + u
    d = np.asarray(g, np.float64) + 0.01 * want
    buf = 0.9 * buf + d
    want = want - 0.1 * buf
  np.testing.assert_allclose(p, want, rtol=1e-6)
  sched = training.make_optimizer(training.OptimizerConfig(
      'sgd', lr=0.1, schedule='cosine'), 4)
  q, st = jnp.asarray([0.0]), sched.init(jnp.asarray([0.0]))
  steps = []
  for _ in range(4):
    u, st = sched.update(jnp.asarray([1.0]), st, q)
    steps.append(-float(u[0]))
  np.testing.assert_allclose(steps, [0.1, 0.1 * (1 + np.cos(np.pi / 4)) / 2,
                                     0.05, 0.1 * (1 + np.cos(3 * np.pi / 4))
                                     / 2], rtol=1e-6)


def test_presets_resolve_to_buildable_settings():
  for name, preset in training.PRESETS.items():
    for reduced in (False, True):
      s = preset.resolve(reduced)
      models.options(s['model'])  # a registered model
      training.OptimizerConfig(s['optimizer'], lr=s['lr'],
                               momentum=s['momentum'],
                               weight_decay=s['weight_decay'])
      assert s['kink_values'] and s['seeds'] >= 1, name
  assert training.PRESETS['tmlr_vgg11_beta'].settings['pool_betas'] == (
      0.0, 1.0, 10.0, 100.0, 1e3, 1e4)


def test_auto_batching_separates_convnets_on_cpus_only():
  """The measured choice (BUILD_NOTES.md, issue 15 point 4): vmap for an
  MLP, separate programs for convolutional models on CPUs, vmap elsewhere."""
  mnist, cifar = jnp.zeros((1, 28, 28, 1)), jnp.zeros((1, 32, 32, 3))
  assert training.auto_batching(MLP, mnist, 'cpu') == 'vmap'
  assert training.auto_batching(models.get('lenet5'), mnist, 'cpu') == (
      'separate')
  assert training.auto_batching(models.get('vgg11'), cifar, 'cpu') == (
      'separate')
  assert training.auto_batching(models.get('vgg11'), cifar, 'gpu') == 'vmap'
