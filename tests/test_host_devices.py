"""jaxkink-volume on CPUs: one JAX device per core unless the user sets the
count, and the same records (bit for bit) with one or two host devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from jaxkink import cli
from conftest import assert_bits_equal
from conftest import script_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'experiments', 'volume.py')

# Five chunks of two thetas (two devices pad the last call), 256 examples
# in minibatches of 48 (a partial last one), float16 (real kink hits: the
# screen's two branches) and float32.
_TINY = ('--model=mlp', '--model_opt=widths=16,16,10', '--samples=10',
         '--chunk=2', '--batch_size=48', '--train_size=256',
         '--precision=float16,float32')


def _env(xla_flags=None):
  env = script_env('XLA_FLAGS', 'JAX_NUM_CPU_DEVICES')
  if xla_flags is not None:
    env['XLA_FLAGS'] = xla_flags
  return env


def _volume(out, devices):
  flag = f'--{cli.DEVICE_COUNT_XLA_FLAG}={devices}'
  proc = subprocess.run([sys.executable, SCRIPT, *_TINY, f'--out={out}'],
                        env=_env(flag), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]


def test_records_are_the_same_bits_on_one_and_two_host_devices(tmp_path):
  runs = {d: str(tmp_path / f'devices{d}') for d in (1, 2)}
  for devices, out in runs.items():
    _volume(out, devices)
  for label in ('float16', 'float32'):
    one, two = (os.path.join(runs[d], label) for d in (1, 2))
    for d, path in ((1, one), (2, two)):   # the count asked for was used
      env = json.load(open(os.path.join(path, 'environment.json')))
      assert env['device_count'] == d
    names = sorted(os.listdir(os.path.join(one, 'chunks')))
    assert len(names) == 5
    assert sorted(os.listdir(os.path.join(two, 'chunks'))) == names
    for name in names:
      with np.load(os.path.join(one, 'chunks', name)) as a, np.load(
          os.path.join(two, 'chunks', name)) as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:   # the records, and the file's index and digest
          if a[key].dtype.kind in 'biuf':
            assert_bits_equal(a[key], b[key])
          else:
            np.testing.assert_array_equal(a[key], b[key])
    summaries = [json.load(open(os.path.join(p, 'summary.json')))
                 for p in (one, two)]
    for s in summaries:
      s.pop('seconds')
    assert summaries[0] == summaries[1]
    if label == 'float16':   # both branches of the screen were taken
      computed = np.concatenate([np.load(os.path.join(one, 'chunks', n))[
          'computed'] for n in names])
      assert computed.any() and not computed.all()


def _device_count(**env) -> int:
  proc = subprocess.run(
      [sys.executable, '-c', 'from jaxkink import cli; '
       'cli.use_host_devices(); import jax; print(jax.device_count())'],
      env={**_env(), **env}, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return int(proc.stdout)


def test_one_device_per_core_unless_the_user_sets_the_count():
  assert _device_count() == cli.host_cores()
  assert _device_count(XLA_FLAGS=f'--{cli.DEVICE_COUNT_XLA_FLAG}=3') == 3
  assert _device_count(JAX_NUM_CPU_DEVICES='3') == 3
  # Other XLA flags leave the count to the command.
  assert _device_count(XLA_FLAGS='--xla_cpu_enable_fast_math=false') == (
      cli.host_cores())
