"""The commands' final weights restore with plain orbax (no jaxkink code) to
the run's own arrays: jaxkink-train's members (against the run's last .npz
checkpoint) and jaxkink-bifurcation's parting weights (against
parting_params.npz); a re-run keeps equal weights and replaces, after moving
aside, ones that differ."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from conftest import script_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ('--model=mlp', '--widths=16,10', '--epochs=1', '--batch_size=100',
         '--train_examples=300', '--test_examples=100', '--seeds=2',
         '--kink_values=0,1')
# float16 and 64 hidden units: s0 and s1 part at iteration 3.
BIFURCATION = ('--widths=64,10', '--steps=5', '--batch_size=32',
               '--checkpoint_every=5', '--precision=float16', '--seeds=0')


def _run(script, *args):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', script), *args],
      env=script_env(), capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'orbax' not in proc.stderr.lower(), proc.stderr[-3000:]
  return proc


def _restore(path):
  checkpointer = ocp.StandardCheckpointer()
  try:
    return jax.tree.map(np.asarray, checkpointer.restore(os.fspath(path)))
  finally:
    checkpointer.close()


def _checkpoint_leaves(run):
  """The leaves of the run's newest checkpoint (raw bits, viewed as their
  dtypes), in the order of the training state: the params come first."""
  ckpts = os.path.join(run, 'checkpoints')
  newest = os.path.join(ckpts, sorted(os.listdir(ckpts))[-1])
  with np.load(newest) as z:
    header = json.loads(bytes(z['header']).decode())
    return [z[f'leaf_{i}'].view(np.dtype(d))
            for i, d in enumerate(header['dtypes'])]


def _assert_members_equal(run, members):
  leaves = _checkpoint_leaves(run)
  for m in range(members):
    restored = _restore(os.path.join(run, 'weights', f'member_{m}'))
    assert set(restored) == {'params'}  # no batch norm
    got = jax.tree.leaves(restored['params'])
    assert [a.shape for a in got] == [a.shape[1:] for a in leaves[:len(got)]]
    for a, b in zip(got, leaves):
      np.testing.assert_array_equal(a, b[m], strict=True)  # dtype too


def test_train_members_restore_with_orbax_and_resume_checks_them(tmp_path):
  run = str(tmp_path / 'train')
  _run('train.py', *TRAIN, f'--out={run}')
  table = json.load(open(os.path.join(run, 'weights', 'members.json')))
  assert table['epoch'] == 1 and len(table['members']) == 4
  assert [(r['seed'], r['kink_value'], r['path']) for r in table['members']
          ] == [(0, 0.0, 'member_0'), (0, 1.0, 'member_1'),
                (1, 0.0, 'member_2'), (1, 1.0, 'member_3')]
  _assert_members_equal(run, 4)
  assert not [n for n in os.listdir(os.path.join(run, 'weights'))
              if n.startswith('.') or 'tmp' in n]

  # A re-run of the finished run keeps equal weights, and moves aside (then
  # rewrites) a member's checkpoint that differs from the run's.
  kept = os.stat(os.path.join(run, 'weights', 'member_0', '_METADATA'))
  other = _restore(os.path.join(run, 'weights', 'member_1'))
  other = jax.tree.map(lambda a: a + np.ones((), a.dtype), other)
  ocp.StandardCheckpointer().save(
      os.path.join(run, 'weights', 'member_1'), other, force=True)
  again = _run('train.py', *TRAIN, f'--out={run}')
  assert 'resuming after epoch 1' in again.stderr
  assert os.stat(os.path.join(run, 'weights', 'member_0', '_METADATA')
                 ).st_mtime_ns == kept.st_mtime_ns
  assert [n.split('.')[0] for n in os.listdir(os.path.join(run, 'corrupt'))
          ] == ['weights__member_1']
  _assert_members_equal(run, 4)


def test_bifurcation_parting_weights_restore_with_orbax(tmp_path):
  out = tmp_path / 'bif'
  _run('bifurcation.py', *BIFURCATION, f'--out={out}')
  seed = out / 'seed_0'
  assert json.loads((seed / 'summary.json').read_text())[
      'parting_iteration'] == 3
  restored = _restore(seed / 'parting_weights')
  flat = {'/'.join(str(k.key) for k in path): a for path, a in
          jax.tree_util.tree_flatten_with_path(restored['params'])[0]}
  with np.load(seed / 'parting_params.npz') as z:
    npz = {k: z[k] for k in z.files if '/' in k}
  assert sorted(flat) == sorted(npz) and len(flat) == 4
  for k, a in flat.items():
    assert a.dtype == np.float16
    np.testing.assert_array_equal(a, npz[k], strict=True)
