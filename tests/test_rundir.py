"""jaxkink.rundir: the run-directory contract, in process."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from jaxkink import rundir
from jaxkink.rundir import RefusedError
from jaxkink.rundir import RunDir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_manifest_written_once_and_other_settings_refused(tmp_path):
  out = str(tmp_path / 'run')
  with RunDir.open(out, {'lr': 0.1, 'widths': (4, 2)}) as run:
    run.write_json('flags.json', {'x': 1})
  manifest = json.loads((tmp_path / 'run' / rundir.MANIFEST).read_text())
  assert manifest['settings'] == {'lr': 0.1, 'widths': [4, 2]}
  assert manifest['digest'] == rundir.settings_digest({'lr': 0.1,
                                                      'widths': [4, 2]})
  before = {p: (tmp_path / 'run' / p).read_bytes()
            for p in os.listdir(out)}
  with pytest.raises(RefusedError, match=r'lr: 0.1 -> 0.2; widths: '
                     r'\[4, 2\] -> \[4, 3\]'):
    RunDir.open(out, {'lr': 0.2, 'widths': (4, 3)})
  with pytest.raises(RefusedError, match=r'extra: \(absent\) -> 1'):
    RunDir.check(out, {'lr': 0.1, 'widths': [4, 2], 'extra': 1})
  assert {p: (tmp_path / 'run' / p).read_bytes()
          for p in os.listdir(out)} == before
  # The same settings (tuples and lists alike) re-open it.
  RunDir.open(out, {'widths': [4, 2], 'lr': 0.1}).close()


def test_unreadable_manifest_is_refused(tmp_path):
  (tmp_path / rundir.MANIFEST).write_text('{"settings": ')
  with pytest.raises(RefusedError, match='unreadable'):
    RunDir.open(str(tmp_path), {})


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
  out = str(tmp_path)
  first = RunDir.open(out, {'a': 1})
  with pytest.raises(RefusedError, match=f'"pid": {os.getpid()}'):
    RunDir.open(out, {'a': 1})
  # Another process, too; and the lock goes with its holder.
  script = ('import sys; from jaxkink.rundir import RunDir, RefusedError\n'
            'try:\n  RunDir.open(sys.argv[1], {"a": 1})\n'
            'except RefusedError as e:\n  print(e); sys.exit(2)\n')
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-c', script, out], env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and 'another process' in proc.stdout
  first.close()
  proc = subprocess.run([sys.executable, '-c', script, out], env=env,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_records_are_tagged_and_checked(tmp_path):
  warnings = []
  run = RunDir.open(str(tmp_path), {'a': 1}, warn=warnings.append)
  run.save_npz('r/0.npz', 0, x=np.arange(3))
  run.save_npz('r/1.npz', 1, x=np.arange(4))
  got = run.load_npz('r/0.npz', 0)
  np.testing.assert_array_equal(got['x'], np.arange(3))
  assert set(got) == {'x'}
  assert run.load_npz('r/2.npz', 2) is None and not warnings  # absent
  # A copy of record 1 in record 0's place: refused, moved aside.
  os.replace(run.file('r/1.npz'), run.file('r/0.npz'))
  assert run.load_npz('r/0.npz', 0) is None
  assert 'holds index 1, expected 0' in warnings[-1]
  assert not os.path.exists(run.file('r/0.npz'))
  assert len(os.listdir(run.file(rundir.CORRUPT))) == 1
  # Another run's record (same index): refused by its manifest digest.
  with RunDir.open(str(tmp_path / 'other'), {'a': 2}) as other:
    other.save_npz('x.npz', 0, x=np.arange(3))
  os.replace(other.file('x.npz'), run.file('r/0.npz'))
  assert run.load_npz('r/0.npz', 0) is None
  assert 'written by a run of other settings' in warnings[-1]
  # The caller's own check.
  run.save_npz('r/0.npz', 0, x=np.arange(3))
  assert run.load_npz('r/0.npz', 0, lambda a: 'too short'
                      if a['x'].size < 5 else None) is None
  assert warnings[-1].endswith('too short; moved to '
                               f'{warnings[-1].split("moved to ")[1]}')
  run.close()


def test_checkpoints_keep_the_newest_two_and_skip_damaged_ones(tmp_path):
  warnings = []
  with RunDir.open(str(tmp_path), {}, warn=warnings.append) as run:
    for i in (1, 2, 3):
      run.save_checkpoint(i, v=np.asarray(i))
    assert sorted(os.listdir(run.file(rundir.CHECKPOINTS))) == [
        '000000002.npz', '000000003.npz']
    with open(run.file(rundir.CHECKPOINTS, '000000003.npz'), 'wb') as f:
      f.write(b'\0' * 10)
    index, arrays = run.latest_checkpoint()
    assert index == 2 and int(arrays['v']) == 2
    assert '000000003.npz: unreadable' in warnings[0]


def test_files_get_the_usual_mode_and_stale_temporaries_go(tmp_path):
  umask = os.umask(0o022)
  os.umask(umask)
  rundir.write_text(str(tmp_path / 'a.txt'), 'x')
  # What open() gives (0644 under umask 022), not mkstemp's 0600.
  assert stat.S_IMODE(os.stat(tmp_path / 'a.txt').st_mode) == 0o666 & ~umask
  os.makedirs(tmp_path / 'run' / 'chunks')
  (tmp_path / 'run' / 'chunks' / '.tmp-dead').write_bytes(b'half')
  RunDir.open(str(tmp_path / 'run'), {}).close()
  assert os.listdir(tmp_path / 'run' / 'chunks') == []


def test_resume_in_another_environment_is_recorded(tmp_path, monkeypatch):
  RunDir.open(str(tmp_path), {}).close()
  env = rundir.environment()
  monkeypatch.setattr(rundir, 'environment', lambda: {
      **env, 'versions': {**env['versions'], 'jax': '99.0'}})
  warnings = []
  RunDir.open(str(tmp_path), {}, warn=warnings.append).close()
  assert 'versions.jax' in warnings[0]
  manifest = json.loads((tmp_path / rundir.MANIFEST).read_text())
  assert manifest['history'][0]['environment']['versions']['jax'] == '99.0'
  assert manifest['settings'] == {}


def test_read_only_view_raises_instead_of_moving(tmp_path):
  with RunDir.open(str(tmp_path), {'a': 1}) as run:
    run.save_npz('p.npz', 3, w=np.ones(2))
  view = RunDir.read(str(tmp_path))
  assert view.digest == run.digest
  np.testing.assert_array_equal(view.load_npz('p.npz', 3)['w'], np.ones(2))
  with pytest.raises(RefusedError, match='holds index 3, expected 4'):
    view.load_npz('p.npz', 4)
  assert os.path.exists(tmp_path / 'p.npz')
  with pytest.raises(RefusedError, match='not a run directory'):
    RunDir.read(str(tmp_path / 'nothing'))
