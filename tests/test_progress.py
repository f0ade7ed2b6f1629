"""Progress bars and log lines (experiments/progress.py), and the
TensorBoard scalars of ``--tensorboard`` read back with TensorBoard's own
event reader."""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import pty
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest

from jaxkink import montecarlo
from jaxkink.experiments import progress
from conftest import script_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ('--model=mlp', '--widths=16,10', '--epochs=2', '--batch_size=100',
         '--train_examples=300', '--test_examples=200', '--seeds=1',
         '--kink_values=0,1')
VOLUME = ('--samples=6', '--chunk=2', '--train_size=256', '--batch_size=128',
          '--precision=float16')


def _env():
  return script_env('XLA_FLAGS')


def _script(name):
  return [sys.executable, os.path.join(ROOT, 'experiments', f'{name}.py')]


def _run(name, *args) -> subprocess.CompletedProcess:
  """Runs ``experiments/<name>.py`` with pipes; it must succeed."""
  proc = subprocess.run(_script(name) + list(args), capture_output=True,
                        text=True, env=_env(), timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc


def _on_a_terminal(cmd, columns=100) -> tuple[int, str]:
  """Runs ``cmd`` with stderr on a pseudo-terminal ``columns`` wide."""
  leader, follower = pty.openpty()
  fcntl.ioctl(follower, termios.TIOCSWINSZ,
              struct.pack('HHHH', 24, columns, 0, 0))
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=follower,
                          env=_env())
  os.close(follower)
  chunks = []
  while True:
    try:
      data = os.read(leader, 65536)
    except OSError:  # EIO: the child closed the terminal
      break
    if not data:
      break
    chunks.append(data)
  os.close(leader)
  return proc.wait(timeout=300), b''.join(chunks).decode('utf-8', 'replace')


def test_bar_logs_the_last_line_and_none_in_between(caplog):
  stream = io.StringIO()
  with caplog.at_level(logging.INFO):
    with progress.Bar(10, 'run', 'pair', initial=2, stream=stream,
                      log_every=1e9) as bar:
      assert not bar.is_bar
      bar.update(3)
      assert not caplog.records
      bar.set(10, 'theta in zone 1/5')
  assert stream.getvalue() == ''
  (line,) = [r.getMessage() for r in caplog.records]
  assert line.startswith('run: 10/10 pairs (100%), ')
  assert line.endswith(', theta in zone 1/5')


def test_bar_logs_at_most_every_interval(caplog):
  with caplog.at_level(logging.INFO):
    bar = progress.Bar(100, 'run', 'step', stream=io.StringIO(),
                       log_every=0.0)
    for _ in range(3):
      bar.update()
  assert [r.getMessage().split(',')[0] for r in caplog.records] == [
      'run: 1/100 steps (1%)', 'run: 2/100 steps (2%)', 'run: 3/100 steps (3%)']


def test_train_draws_a_bar_on_a_terminal(tmp_path):
  status, text = _on_a_terminal(
      _script('train') + [*TRAIN, f'--out={tmp_path / "run"}'])
  assert status == 0, text[-2000:]
  # tqdm's redraws: carriage returns, the bar's frame, the final count.
  assert '\r' in text and '2/2 [' in text and '100%|' in text, text[-2000:]
  assert 'epoch/s' in text and 'test acc s=0' in text


def test_without_a_terminal_progress_is_log_lines(tmp_path):
  proc = _run('train', *TRAIN, f'--out={tmp_path / "run"}')
  assert '\r' not in proc.stderr
  assert 'run: 2/2 epochs (100%)' in proc.stderr, proc.stderr[-2000:]
  # stdout holds the result only: its last line is the final JSON.
  assert 'epochs' not in proc.stdout
  json.loads(proc.stdout.splitlines()[-1])


def _scalars(logdir):
  """``{tag: [(step, value)]}`` of the event files under ``logdir``."""
  accumulator = pytest.importorskip(
      'tensorboard.backend.event_processing.event_accumulator',
      reason="TensorBoard is not installed (pip install -e '.[tensorboard]'):"
             ' its event reader reads the files back')
  acc = accumulator.EventAccumulator(str(logdir))
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
          for tag in acc.Tags()['scalars']}


def test_train_tensorboard_scalars_are_the_metrics(tmp_path):
  pytest.importorskip('tensorboardX', reason="tensorboardX is not installed "
                      "(pip install -e '.[tensorboard]')")
  out = tmp_path / 'run'
  _run('train', *TRAIN, f'--out={out}', '--tensorboard')
  scalars = _scalars(out / 'tensorboard')
  metrics = json.loads((out / 'metrics.json').read_text())
  members = [f'seed{m["seed"]}_{m["label"]}' for m in metrics['members']]
  assert members == ['seed0_s=0', 'seed0_s=1']
  members = [m.replace('=', '_') for m in members]  # TensorBoard's tags
  names = ('train_loss', 'train_acc', 'test_loss', 'test_acc',
           'l1_to_first_kink', 'l2_to_first_kink')
  assert set(scalars) == {f'{n}/{m}' for n in names for m in members}
  for n in names:
    for i, m in enumerate(members):
      # Event files hold float32 scalars.
      want = [(h['epoch'], np.float32(h[n][i])) for h in metrics['history']]
      got = [(step, np.float32(v)) for step, v in scalars[f'{n}/{m}']]
      assert got == want, (n, m)


def test_volume_tensorboard_zone_so_far_is_the_records(tmp_path):
  pytest.importorskip('tensorboardX', reason="tensorboardX is not installed "
                      "(pip install -e '.[tensorboard]')")
  out = tmp_path / 'vol'
  proc = _run('volume', *VOLUME, f'--out={out}', '--tensorboard')
  run = out / 'float16'
  records = montecarlo.load_records(str(run), 3)
  differs = np.asarray(records.differs)  # (6 thetas, 2 minibatches)
  scalars = _scalars(run / 'tensorboard')
  assert set(scalars) == {'zone/theta_in_zone', 'zone/impacted_pairs'}
  steps = [2, 4, 6]
  assert [s for s, _ in scalars['zone/theta_in_zone']] == steps
  assert [np.float32(v) for _, v in scalars['zone/theta_in_zone']] == [
      np.float32(differs[:n].any(axis=1).mean()) for n in steps]
  assert [np.float32(v) for _, v in scalars['zone/impacted_pairs']] == [
      np.float32(differs[:n].mean()) for n in steps]
  assert 'float16: 12/12 pairs (100%)' in proc.stderr
