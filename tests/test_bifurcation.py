"""Lockstep training: the s = 0 and s = 1 runs part exactly at a kink hit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkink
from jaxkink.experiments import bifurcation
from jaxkink import lockstep
from jaxkink import models
from conftest import assert_bits_equal

HIT_STEP = 2  # the minibatch of this step holds an all-zero input


def _planted_run(rng, steps=5):
  """A 3-4-3 MLP whose neuron 0 sits exactly at 0 on one input of step 2.

  Neuron 0 of the hidden layer has negative weights and a zero bias. The
  inputs of steps 0 and 1 are positive, so it is negative there: it gets no
  gradient and its bias stays exactly 0. Step 2's minibatch holds an
  all-zero input, on which the neuron's pre-activation is 0 * w + 0 = 0
  exactly: the kink. Every other pre-activation is a generic float.
  """
  model = models.MLP(widths=(4, 3))
  params = model.init(jax.random.key(0), jnp.zeros((1, 3)),
                      jaxkink.Kinks())['params']
  kernel = params['Dense_0']['kernel'].at[:, 0].set(jnp.array([-.3, -.5, -.2]))
  bias = params['Dense_0']['bias'].at[0].set(0.0)
  params['Dense_0'] = {'kernel': kernel, 'bias': bias}
  xs = jnp.asarray(rng.uniform(0.1, 1.0, size=(steps, 6, 3)), jnp.float32)
  xs = xs.at[HIT_STEP, 4].set(0.0)
  ys = jnp.asarray(rng.integers(0, 3, size=(steps, 6)), jnp.int32)
  policy = jaxkink.get_policy('float32')
  step = lockstep.make_step(model, policy)
  stacked = lockstep.replicate(params, 3)
  kinks = lockstep.kinks_for('relu', [0.0, 1.0, 0.0])
  records, history = [], [stacked]
  for k in range(steps):
    stacked, rec = step(stacked, kinks, xs[k], ys[k], 0.5)
    records.append(jax.tree.map(np.asarray, rec))
    history.append(stacked)
  return records, history


def test_runs_part_exactly_at_the_kink_hit(rng):
  records, history = _planted_run(rng)
  for k, rec in enumerate(records):
    members = jax.tree.map(lambda a, k=k: a, history[k + 1])
    s0 = jax.tree.map(lambda a: a[0], members)
    s1 = jax.tree.map(lambda a: a[1], members)
    control = jax.tree.map(lambda a: a[2], members)
    jax.tree.map(assert_bits_equal, s0, control)  # the control never parts
    assert rec.l1_to_first[2] == 0
    differ = any(np.any(np.asarray(a) != np.asarray(b))
                 for a, b in zip(jax.tree.leaves(s0), jax.tree.leaves(s1)))
    assert differ == (k >= HIT_STEP), k
    assert (rec.l1_to_first[1] > 0) == (k >= HIT_STEP)
    # Kink hits: only the planted one, seen identically by every member.
    want_hits = [1, 0] if k == HIT_STEP else [0, 0]
    np.testing.assert_array_equal(rec.hits[:, 0], want_hits[0])
    if k == HIT_STEP:
      np.testing.assert_array_equal(rec.closest[0, 0], [4, 0])
      assert rec.min_distance[0, 0] == 0
    else:
      assert rec.min_distance[0, 0] > 0


def test_l1_distance():
  a = {'w': jnp.array([1.0, -2.0]), 'b': jnp.array([0.5])}
  b = {'w': jnp.array([0.0, 1.0]), 'b': jnp.array([0.5])}
  assert float(lockstep.l1_distance(a, b)) == 4.0


def test_kinks_for_relu6_sets_both_kinks():
  kinks = lockstep.kinks_for('relu6', [0.0, 1.0])
  np.testing.assert_array_equal(kinks.relu6_alpha, [0, 1])
  np.testing.assert_array_equal(kinks.relu6_beta, [0, 1])
  assert kinks.relu_s.shape == (2,)
  with pytest.raises(ValueError, match='unknown activation'):
    lockstep.kinks_for('tanh', [0.0])


def test_learning_rate_and_minibatch_order():
  lrs = [bifurcation.learning_rate(seed) for seed in range(20)]
  assert all(0.01 <= lr <= 0.012 for lr in lrs) and len(set(lrs)) == 20
  order = bifurcation.minibatch_order(10, 3, 7, seed=0, shuffle=False)
  np.testing.assert_array_equal(order[:3].ravel(), np.arange(9))
  np.testing.assert_array_equal(order[3], [0, 1, 2])  # the next epoch
  assert order.shape == (7, 3)


def test_default_steps_are_one_mnist_epoch():
  """--steps defaults to one epoch of full MNIST at batch 128: 468 steps,
  the last partial batch (96 images) dropped."""
  steps, batch = bifurcation.EPOCH_STEPS, bifurcation.BATCH_SIZE
  assert (steps, batch) == (468, 128)
  order = bifurcation.minibatch_order(60000, batch, steps, seed=0,
                                      shuffle=False)
  assert order.shape == (468, 128)
  np.testing.assert_array_equal(order.ravel(), np.arange(59904))
  more = bifurcation.minibatch_order(60000, batch, steps + 1, seed=0,
                                     shuffle=False)
  np.testing.assert_array_equal(more[-1], np.arange(128))  # epoch 2


def test_script_default_steps_and_no_backend_probe_line(tmp_path):
  """The script as a user runs it (JAX_PLATFORMS unset): the --steps
  default reaches the run, and JAX's "Unable to initialize backend 'tpu'"
  line is not printed (jaxkink.cli.quiet_backend_probing)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root)
  for name in ('JAX_PLATFORMS', 'JAX_LOGGING_LEVEL', 'JAXKINK_DATA_DIR'):
    env.pop(name, None)
  proc = subprocess.run(
      [sys.executable, os.path.join(root, 'experiments', 'bifurcation.py'),
       '--widths=8,10', f'--out={tmp_path}'], env=env, capture_output=True,
      text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Unable to initialize backend' not in proc.stderr, proc.stderr
  assert 'bundled MNIST sample' in proc.stderr  # other warnings still show
  summary = json.loads((tmp_path / 'seed_0' / 'summary.json').read_text())
  assert summary['steps'] == bifurcation.EPOCH_STEPS


def _run(out, steps, **kw):
  from jaxkink import data  # pylint: disable=g-import-not-at-top
  ds = data.load('mnist', 'train', source='sample')
  images = data.preprocess(jnp.asarray(ds.images[:256]), 'mnist',
                           normalize=False, flatten=True)
  model = models.MLP(widths=(16, 10))
  # One run directory's settings for every call: a call with fewer steps
  # stands for a run interrupted after that step.
  with jaxkink.rundir.RunDir.open(out, {'run': 'bifurcation test'}) as run:
    return bifurcation.run_seed(
        0, run, images=images, labels=jnp.asarray(ds.labels[:256]),
        model=model, policy=jaxkink.get_policy('float32'), activation='relu',
        kink_values=(0.0, 1.0), steps=steps, batch_size=32, lr=None,
        shuffle=True, checkpoint_every=4, **kw)


def test_interrupted_run_resumes_to_the_same_records(tmp_path):
  whole = _run(tmp_path / 'whole', 12)
  _run(tmp_path / 'cut', 8)  # stops after step 8 (a checkpoint)
  # The newest checkpoint (step 8) damaged: the run resumes from step 4.
  ckpts = tmp_path / 'cut' / 'checkpoints'
  assert sorted(os.listdir(ckpts)) == ['000000004.npz', '000000008.npz']
  (ckpts / '000000008.npz').write_bytes(b'garbage')
  resumed = _run(tmp_path / 'cut', 12)
  assert resumed == whole
  assert len(os.listdir(tmp_path / 'cut' / 'corrupt')) == 1
  for name in ('loss', 'l1_to_first', 'min_distance', 'hits'):
    a = np.load(tmp_path / 'whole' / 'records.npz')[name]
    b = np.load(tmp_path / 'cut' / 'records.npz')[name]
    assert_bits_equal(a, b)
  assert os.path.getsize(tmp_path / 'whole' / 'bifurcation.png') > 1000
  summary = json.loads((tmp_path / 'whole' / 'summary.json').read_text())
  assert summary['steps'] == 12 and summary['control_max_l1'] == 0
