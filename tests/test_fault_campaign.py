"""The fault campaign of the trust issue, at small sizes, on the scripts.

For each script that writes a run directory (volume.py, train.py,
bifurcation.py, zero_map.py):

(a) a re-run with each result-affecting setting changed is refused (exit
    status 2, the setting named) and every file of the directory keeps its
    bytes;
(b) two volume.py writers started together into one fresh directory: one
    is refused within seconds, the other's records equal an uninterrupted
    run;
(c) truncated, zero-byte, random-bytes and swapped chunks are detected,
    named, moved into ``corrupt/`` and recomputed; a damaged newest
    checkpoint resumes from the one before, to the same final numbers;
(d) SIGKILL at random moments (some right after a write), then a re-run:
    the final records equal an uninterrupted run.

Hostile flag values are in test_cli_errors.py, the gzip bomb in
test_data_limits.py. Every script runs as a subprocess on the bundled MNIST
sample; one test per script, so that pytest-xdist spreads the scripts over
its workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

import jaxkink

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 600

VOLUME = ('--model=mlp', '--model_opt=widths=16,10', '--precision=float16',
          '--samples=12', '--chunk=1', '--batch_size=256',
          '--train_size=1024')
TRAIN = ('--model=mlp', '--widths=16,10', '--epochs=3', '--batch_size=100',
         '--train_examples=500', '--test_examples=200', '--kink_values=0,1',
         '--lr=0.05')
# float16 and 64 hidden units: the s0 and s1 runs part at iteration 3.
BIFURCATION = ('--widths=64,10', '--steps=40', '--batch_size=32',
               '--checkpoint_every=10', '--precision=float16', '--seeds=0')


def _env():
  # The compilation cache of conftest.py comes with os.environ.
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  env.pop('JAXKINK_DATA_DIR', None)  # the bundled sample
  return env


def _command(script, *args):
  return [sys.executable, os.path.join(ROOT, 'experiments', script), *args]


def _run(script, *args, status=0):
  proc = subprocess.run(_command(script, *args), env=_env(),
                        capture_output=True, text=True, timeout=TIMEOUT_S)
  assert proc.returncode == status, (proc.returncode, proc.stderr[-3000:])
  assert 'Traceback' not in proc.stderr
  return proc


def _digests(directory):
  """Every file under ``directory`` and the sha256 of its bytes."""
  out = {}
  for d, _, files in os.walk(directory):
    for f in files:
      path = os.path.join(d, f)
      with open(path, 'rb') as fh:
        out[os.path.relpath(path, directory)] = hashlib.sha256(
            fh.read()).hexdigest()
  return out


def _arrays(path):
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def _assert_same_arrays(a, b):
  assert sorted(a) == sorted(b)
  for k in a:
    assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
    assert a[k].tobytes() == b[k].tobytes(), k


def _assert_refused(script, args, out, names):
  """Re-runs with other settings are refused and change no byte of out."""
  before = _digests(out)
  for extra, name in zip(args, names):
    proc = _run(script, *extra, status=2)
    assert 'holds a run with other settings' in proc.stderr, proc.stderr
    assert name in proc.stderr, (name, proc.stderr[-2000:])
    assert _digests(out) == before, extra


def _kill_repeatedly(script, args, watch, rng, kills=3):
  """Starts the script ``kills`` times and SIGKILLs it: after a write to
  ``watch`` (even kills) or at a random moment; returns the number of
  kills that landed before the run finished."""
  landed = 0
  for k in range(kills):
    proc = subprocess.Popen(_command(script, *args), env=_env(),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
      if k % 2 == 0:  # right after the next file appears in ``watch``
        seen = set(os.listdir(watch)) if os.path.isdir(watch) else set()
        deadline = time.monotonic() + TIMEOUT_S
        while proc.poll() is None and time.monotonic() < deadline:
          now = set(os.listdir(watch)) if os.path.isdir(watch) else set()
          if now - seen:
            break
          time.sleep(0.01)
      else:
        time.sleep(rng.uniform(2.0, 6.0))
      landed += proc.poll() is None
      proc.send_signal(signal.SIGKILL)
    finally:
      proc.wait()
  return landed


def _summary(path, drop=('seconds',)):
  with open(path) as f:
    s = json.load(f)
  for k in drop:
    s.pop(k, None)
  return s


def _chunks(run):
  directory = os.path.join(run, 'chunks')
  return {n: _arrays(os.path.join(directory, n))
          for n in sorted(os.listdir(directory))}


def test_volume_campaign(tmp_path):
  rng = random.Random(0)
  whole = str(tmp_path / 'whole')
  _run('volume.py', *VOLUME, f'--out={whole}')
  reference = _chunks(os.path.join(whole, 'float16'))
  summary = _summary(os.path.join(whole, 'float16', 'summary.json'))
  assert len(reference) == 12

  # (a) Each setting that changes a record, changed: refused, untouched.
  # (Every run flag, in process: test_volume_settings_name_every_run_flag.)
  _assert_refused('volume.py', [
      (*VOLUME, '--seed=1', f'--out={whole}'),
      (*VOLUME, '--kinks=relu:0,0.5', f'--out={whole}'),
      (*VOLUME, '--legacy_relu_grad', f'--out={whole}'),
      (*VOLUME, '--train_size=1000', f'--out={whole}'),
      (*VOLUME, '--model_opt=widths=8,10', f'--out={whole}'),
      (*VOLUME, '--precision=float32', f'--out={whole}'),
      # Recorded only when set (old directories resume), refused all the same.
      (*VOLUME, '--augment', f'--out={whole}'),
  ], whole, ['seed', 'kinks', 'legacy_relu_grad', 'train_size', 'model_opt',
             'float32', 'augment'])

  # (c) Damaged chunks: named, moved aside, recomputed.
  damaged = str(tmp_path / 'damaged')
  shutil.copytree(whole, damaged)
  chunk = lambda i: os.path.join(damaged, 'float16', 'chunks',
                                 f'chunk_{i:06d}.npz')
  with open(chunk(0), 'r+b') as f:
    f.truncate(os.path.getsize(chunk(0)) // 2)
  open(chunk(1), 'wb').close()
  with open(chunk(2), 'wb') as f:
    f.write(rng.randbytes(4096))
  shutil.copyfile(chunk(5), chunk(3))
  proc = _run('volume.py', *VOLUME, f'--out={damaged}')
  for i in range(4):
    assert f'chunk_{i:06d}.npz' in proc.stderr
  assert 'holds index 5, expected 3' in proc.stderr
  assert len(os.listdir(os.path.join(damaged, 'float16', 'corrupt'))) == 4
  for name, arrays in _chunks(os.path.join(damaged, 'float16')).items():
    _assert_same_arrays(arrays, reference[name])
  assert _summary(os.path.join(damaged, 'float16', 'summary.json')) == (
      summary)

  # (d) SIGKILL at random moments, then to the end.
  killed = str(tmp_path / 'killed')
  landed = _kill_repeatedly('volume.py', (*VOLUME, f'--out={killed}'),
                            os.path.join(killed, 'float16', 'chunks'), rng)
  assert landed >= 2
  _run('volume.py', *VOLUME, f'--out={killed}')
  for name, arrays in _chunks(os.path.join(killed, 'float16')).items():
    _assert_same_arrays(arrays, reference[name])
  assert _summary(os.path.join(killed, 'float16', 'summary.json')) == summary

  # (b) Two writers into one fresh directory: one refused at once.
  shared = str(tmp_path / 'shared')
  t0 = time.monotonic()
  procs = [subprocess.Popen(_command('volume.py', *VOLUME, f'--seed={s}',
                                     f'--out={shared}'), env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for s in (0, 1)]
  results = []
  for p in procs:
    _, err = p.communicate(timeout=TIMEOUT_S)
    results.append((p.returncode, err, time.monotonic() - t0))
  codes = sorted(r[0] for r in results)
  assert codes == [0, 2], [(r[0], r[1][-1000:]) for r in results]
  winner = [s for s, r in zip((0, 1), results) if r[0] == 0][0]
  loser = [r for r in results if r[0] == 2][0]
  assert ('being written by another process' in loser[1]
          or 'holds a run with other settings' in loser[1]), loser[1]
  assert loser[2] < 60, f'refused only after {loser[2]:.0f} s'
  if winner == 0:
    solo = whole
  else:
    solo = str(tmp_path / 'solo')
    _run('volume.py', *VOLUME, f'--seed={winner}', f'--out={solo}')
  for name, arrays in _chunks(os.path.join(shared, 'float16')).items():
    _assert_same_arrays(arrays, _chunks(os.path.join(solo, 'float16'))[name])


def _metrics(run):
  with open(os.path.join(run, 'metrics.json')) as f:
    m = json.load(f)
  timing = ('seconds', 'images_per_s')
  return m['members'], [{k: v for k, v in h.items() if k not in timing}
                        for h in m['history']]


def _newest_checkpoint(run):
  directory = os.path.join(run, 'checkpoints')
  return os.path.join(directory, sorted(os.listdir(directory))[-1])


def _state_leaves(path):
  return {k: v for k, v in _arrays(path).items() if k.startswith('leaf_')}


def test_train_campaign(tmp_path):
  rng = random.Random(1)
  whole = str(tmp_path / 'whole')
  _run('train.py', *TRAIN, f'--out={whole}')
  metrics = _metrics(whole)
  final = _state_leaves(_newest_checkpoint(whole))
  assert sorted(os.listdir(os.path.join(whole, 'checkpoints'))) == [
      '000000002.npz', '000000003.npz']  # the newest two

  _assert_refused('train.py', [
      (*TRAIN, '--lr=0.1', f'--out={whole}'),
      (*TRAIN, '--epochs=4', f'--out={whole}'),
      (*TRAIN, '--kink_values=0,0.5', f'--out={whole}'),
      (*TRAIN, '--seeds=2', f'--out={whole}'),
      (*TRAIN, '--train_examples=400', f'--out={whole}'),
  ], whole, ['lr', 'epochs', 'kink_values', 'seeds', 'train_examples'])

  # (c) The newest checkpoint damaged: resume from the one before.
  damaged = str(tmp_path / 'damaged')
  shutil.copytree(whole, damaged)
  newest = _newest_checkpoint(damaged)
  with open(newest, 'r+b') as f:
    f.truncate(200)
  proc = _run('train.py', *TRAIN, f'--out={damaged}')
  assert 'resuming after epoch 2' in proc.stderr  # absl INFO lines
  assert '000000003.npz' in proc.stderr
  assert _metrics(damaged) == metrics
  _assert_same_arrays(_state_leaves(_newest_checkpoint(damaged)), final)

  # (d) SIGKILL at random moments (some right after a checkpoint).
  killed = str(tmp_path / 'killed')
  _kill_repeatedly('train.py', (*TRAIN, f'--out={killed}'),
                   os.path.join(killed, 'checkpoints'), rng, kills=2)
  _run('train.py', *TRAIN, f'--out={killed}')
  assert _metrics(killed) == metrics
  _assert_same_arrays(_state_leaves(_newest_checkpoint(killed)), final)


def test_bifurcation_and_zero_map_campaign(tmp_path):
  rng = random.Random(2)
  whole = str(tmp_path / 'whole')
  _run('bifurcation.py', *BIFURCATION, f'--out={whole}')
  seed = os.path.join(whole, 'seed_0')
  records = _arrays(os.path.join(seed, 'records.npz'))
  parting = _arrays(os.path.join(seed, 'parting_params.npz'))
  summary = _summary(os.path.join(whole, 'summary.json'))
  assert summary['parted'] == 1

  _assert_refused('bifurcation.py', [
      (*BIFURCATION, '--kink_values=0,0.5', f'--out={whole}'),
      (*BIFURCATION, '--lr=0.02', f'--out={whole}'),
      (*BIFURCATION, '--widths=32,10', f'--out={whole}'),
      (*BIFURCATION, '--steps=41', f'--out={whole}'),
  ], whole, ['kink_values', 'lr', 'widths', 'steps'])

  # zero_map.py on the parted seed, then re-runs with other settings.
  zmap = ('--precisions=float16,float32', '--grid=21', f'--run={seed}')
  _run('zero_map.py', *zmap)
  out = os.path.join(seed, 'zero_map')
  assert os.path.exists(os.path.join(out, 'zero_map.npz'))
  _assert_refused('zero_map.py', [
      (*zmap, '--radius=1e-6'), (*zmap, '--precisions=float64'),
  ], out, ['radius', 'float64'])

  # (c) and (d): a damaged newest checkpoint, SIGKILLs, then to the end.
  killed = str(tmp_path / 'killed')
  _kill_repeatedly('bifurcation.py', (*BIFURCATION, f'--out={killed}'),
                   os.path.join(killed, 'seed_0', 'checkpoints'), rng,
                   kills=2)
  checkpoints = os.path.join(killed, 'seed_0', 'checkpoints')
  if os.path.isdir(checkpoints) and os.listdir(checkpoints):
    with open(_newest_checkpoint(os.path.join(killed, 'seed_0')), 'wb') as f:
      f.write(rng.randbytes(1000))
  _run('bifurcation.py', *BIFURCATION, f'--out={killed}')
  _assert_same_arrays(_arrays(os.path.join(killed, 'seed_0', 'records.npz')),
                      records)
  _assert_same_arrays(_arrays(os.path.join(killed, 'seed_0',
                                           'parting_params.npz')), parting)
  assert _summary(os.path.join(killed, 'summary.json')) == summary


def test_volume_settings_name_every_run_flag():
  """Every flag that can change a record changes the run directory's
  settings, so a re-run with any one of them changed is refused."""
  from jaxkink.experiments import volume  # pylint: disable=g-import-not-at-top
  cfg = dict(model='mlp', model_opt=['widths=16,10'], kinks='relu:0,1',
             legacy_relu_grad=False, precision='float16', samples=4, chunk=2,
             batch_size=256, dataset='mnist', train_size=512,
             normalize=False, screen=True, seed=0, tau=0.0,
             first_layer_only=False, batch_norm_mode='batch',
             theta_loop='map')
  assert set(cfg) == set(volume.RUN_FLAGS)
  changed = dict(model_opt=['widths=8,10'],
                 kinks='relu:0,0.5', legacy_relu_grad=True,
                 precision='float32', samples=5, chunk=1, batch_size=128,
                 train_size=500, normalize=True,
                 screen=False, seed=1, tau=0.5, first_layer_only=True,
                 batch_norm_mode='running', theta_loop='vmap')
  base = volume.prepare(cfg, None).settings
  # Another model or data set needs other options or files than the bundled
  # sample; they are recorded like the rest (and the model's repr and the
  # data's hash are in the settings too).
  for flag in ('model', 'dataset'):
    assert base['flags'][flag] == cfg[flag]
  for flag in set(volume.RUN_FLAGS) - {'model', 'dataset'}:
    other = volume.prepare({**cfg, flag: changed[flag]}, None).settings
    diff = jaxkink.rundir.differences(base, other)
    assert any(d.startswith(f'flags.{flag}:') for d in diff), (flag, diff)
