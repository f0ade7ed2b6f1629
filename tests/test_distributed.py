"""A real two-process ``jax.distributed`` run of the volume command on
localhost (CPU, one device per process, gloo): the same run directory,
shared by both processes, ends with records bit-identical to a one-process
run of the same flags."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from jaxkink import montecarlo
from conftest import script_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'experiments', 'volume.py')
TIMEOUT = 240  # seconds; a hang fails the test instead of blocking CI

# 3 chunks of 2 thetas (process 0 computes chunks 0 and 2, process 1 chunk
# 1) over 4 minibatches, the last one partial.
_FLAGS = ('--model=mlp', '--model_opt=widths=16,10', '--precision=float32',
          '--samples=6', '--chunk=2', '--train_size=200', '--batch_size=64')
_RUN = 'float32'   # the run's sub-directory (its precision label)
_CHUNKS = 3


def _env():
  return script_env('XLA_FLAGS', 'JAX_COORDINATOR_ADDRESS',
                    JAX_NUM_CPU_DEVICES='1')


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _records(out: str):
  return montecarlo.load_records(os.path.join(out, _RUN), _CHUNKS)


def _summary(out: str) -> dict:
  with open(os.path.join(out, _RUN, 'summary.json')) as f:
    summary = json.load(f)
  summary.pop('seconds')
  return summary


def _chunk_arrays(out: str, index: int) -> dict[str, np.ndarray]:
  path = os.path.join(out, _RUN, 'chunks', f'chunk_{index:06d}.npz')
  with np.load(path, allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def _two_processes(out: str) -> None:
  address = f'127.0.0.1:{_free_port()}'
  procs = [subprocess.Popen(
      [sys.executable, SCRIPT, *_FLAGS, f'--out={out}', '--distributed',
       f'--coordinator_address={address}', '--num_processes=2',
       f'--process_id={i}'],
      env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outputs = []
  try:
    for proc in procs:
      outputs.append(proc.communicate(timeout=TIMEOUT))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  for i, (proc, (_, err)) in enumerate(zip(procs, outputs)):
    assert proc.returncode == 0, f'process {i}:\n{err[-3000:]}'
  # Process 0 gathers and prints the summary; process 1 prints nothing
  # (but for gloo's line on its connection, printed by its C++ code).
  own = [[l for l in out.splitlines() if not l.startswith('[Gloo]')]
         for out, _ in outputs]
  assert 'written to' in own[0][-1] and not own[1], own[1]


def _same_records(one: str, two: str) -> None:
  a, b = _records(one), _records(two)
  for name, x, y in zip(a._fields, a, b):
    assert x.dtype == y.dtype and x.shape == y.shape, name
    assert x.tobytes() == y.tobytes(), name   # bit-identical, NaNs included
  assert a.differs.shape[:2] == (6, 4)
  for i in range(_CHUNKS):   # every chunk file, tags included
    x, y = _chunk_arrays(one, i), _chunk_arrays(two, i)
    assert x.keys() == y.keys()
    for k in x:
      assert x[k].tobytes() == y[k].tobytes(), (i, k)
  assert _summary(one) == _summary(two)


def test_two_processes_give_the_records_of_one(tmp_path):
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  single = subprocess.run([sys.executable, SCRIPT, *_FLAGS, f'--out={one}'],
                          env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
  assert single.returncode == 0, single.stderr[-3000:]
  _two_processes(two)
  _same_records(one, two)

  # One writer of the shared directory: one manifest, no leftovers.
  env = json.load(open(os.path.join(two, _RUN, 'environment.json')))
  assert env['process_count'] == 2 and env['device_count'] == 2
  chunks = os.path.join(two, _RUN, 'chunks')
  names = [f'chunk_{i:06d}.npz' for i in range(_CHUNKS)]
  assert sorted(os.listdir(chunks)) == names

  # Resumed by two processes: a chunk of each is gone, and a killed writer
  # left a temporary file, which process 0 removes before either writes
  # (the barrier at the end of RunDir.open).
  os.remove(os.path.join(chunks, names[1]))
  os.remove(os.path.join(chunks, names[2]))
  with open(os.path.join(chunks, '.tmp-killed'), 'wb') as f:
    f.write(b'half a chunk')
  _two_processes(two)
  _same_records(one, two)
  assert sorted(os.listdir(chunks)) == names
  assert not os.path.exists(os.path.join(two, _RUN, 'corrupt'))
  for d, _, files in os.walk(two):
    assert not [f for f in files if f.startswith('.tmp-')], d


def test_distributed_flags_need_distributed(tmp_path):
  proc = subprocess.run(
      [sys.executable, SCRIPT, '--samples=2', '--process_id=1',
       f'--out={tmp_path}'], env=_env(), capture_output=True, text=True,
      timeout=TIMEOUT)
  assert proc.returncode != 0
  assert 'need --distributed' in proc.stderr


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
