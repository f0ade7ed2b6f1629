"""experiments/volume.py end to end: a preset, a kill and restart, bad flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'experiments', 'volume.py')


def _env():
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  env.pop('JAXKINK_DATA_DIR', None)  # the bundled sample
  return env


def _volume(*args, check=True):
  proc = subprocess.run([sys.executable, SCRIPT, *args], env=_env(),
                        capture_output=True, text=True, timeout=600)
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def test_table1_preset_writes_tables_and_plot(tmp_path):
  out = str(tmp_path / 'table1')
  _volume('--preset=table1', '--precision=float32', '--samples=4',
          '--chunk=2', '--train_size=256', '--batch_size=128', f'--out={out}')
  table = open(os.path.join(out, 'summary.md')).read().splitlines()
  results = table[table.index('## Results') + 4:]
  results = results[:results.index('')]
  assert [l.split('|')[1].strip() for l in results] == [
      'reference_float32', 'clean_float32', "paper: ReLU'(0) Table 1, 32 bits"]
  assert any(l.startswith('- **WARNING: the bundled MNIST sample')
             for l in table)
  summaries = json.load(open(os.path.join(out, 'summaries.json')))
  ref = summaries['reference_float32']
  assert ref['samples'] == 4 and ref['minibatches'] == 2
  assert ref['first_layer_only'] and not summaries['clean_float32'][
      'first_layer_only']
  assert ref['config']['model'] == 'mlp_reference'
  assert ref['config']['samples'] == 4   # the command line beats the preset
  assert os.path.getsize(os.path.join(out, 'volume.png')) > 1000
  for label in ('reference_float32', 'clean_float32'):
    for name in ('manifest.json', 'environment.json', 'data.json',
                 'summary.json'):
      assert os.path.exists(os.path.join(out, label, name))
    assert len(os.listdir(os.path.join(out, label, 'chunks'))) == 2


_SMALL = ('--model=mlp', '--model_opt=widths=16,10', '--precision=float16',
          '--samples=40', '--chunk=2', '--batch_size=32')


def test_killed_run_restarts_to_the_same_summary(tmp_path):
  whole = str(tmp_path / 'whole')
  _volume(*_SMALL, f'--out={whole}')
  cut = str(tmp_path / 'cut')
  proc = subprocess.Popen([sys.executable, SCRIPT, *_SMALL, f'--out={cut}'],
                          env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  first = os.path.join(cut, 'float16', 'chunks', 'chunk_000000.npz')
  deadline = time.monotonic() + 300
  while not os.path.exists(first) and proc.poll() is None:
    assert time.monotonic() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  done = len(os.listdir(os.path.dirname(first)))
  _volume(*_SMALL, f'--out={cut}')
  a = json.load(open(os.path.join(whole, 'float16', 'summary.json')))
  b = json.load(open(os.path.join(cut, 'float16', 'summary.json')))
  a.pop('seconds'), b.pop('seconds')
  assert a == b
  assert done < 20, 'the run finished before it could be killed'


@pytest.mark.parametrize('flag,message', [
    ('--kinks=gelu:0,1', 'expected KIND:V0,V1'),
    ('--kinks=relu:nan,1', 'finite numbers'),
    ('--precision=float99', "unknown precision policy 'float99'"),
    ('--model=vgg12', 'unknown model'),
    ('--batch_size=5000', 'batch_size must be in 1..2000'),
])
def test_bad_flags_give_clear_errors(tmp_path, flag, message):
  proc = _volume('--samples=2', '--chunk=2', flag, f'--out={tmp_path}',
                 check=False)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr + proc.stdout
