"""Hostile flag values end the scripts with one line, not a traceback.

Every case runs a script as a subprocess with one bad flag value (zero,
negative, not a number, NaN, infinite, unknown name, stray argument) and
checks that it exits non-zero, prints no Python traceback, and names the
problem on one line of stderr: absl's ``FATAL Flags parsing error: ...`` for
what the flag validators refuse while parsing, ``error: ...`` (from
``jaxkink.cli.main``) for what can only be found later.

Flag validation runs before JAX does any work, so a case costs about the
import of JAX and jaxkink. Outside pytest-xdist the selected cases run two
at a time in the background, so the table costs about half its serial time.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from typing import Sequence

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 120
WORKERS = 2

UNKNOWN_POLICY = 'unknown precision policy'
STRAY = 'unexpected arguments'

# (script relative to the repository root, arguments, substring of stderr).
# The scripts run with the repository root as working directory.
CASES: list[tuple[str, Sequence[str], str]] = [
    # experiments/zero_program.py
    ('experiments/zero_program.py', ['--precisions=float32,float17'],
     UNKNOWN_POLICY),
    ('experiments/zero_program.py', ['--t=1,nan'],
     "--t: 'nan' is not a finite number"),
    ('experiments/zero_program.py', ['--t=0,-inf'],
     "--t: '-inf' is not a finite number"),
    ('experiments/zero_program.py', ['--plot_points=-1'],
     '--plot_points must be >= 0'),
    ('experiments/zero_program.py', ['stray'], STRAY),
    # benchmarks/data.py
    ('benchmarks/data.py', ['--repeats=0'], '--repeats must be >= 1'),
    ('benchmarks/data.py', ['--batch_size=-5'], '--batch_size must be >= 1'),
    ('benchmarks/data.py', ['--data_dir=/nonexistent/jaxkink'],
     "data directory '/nonexistent/jaxkink'"),
    ('benchmarks/data.py', ['stray'], STRAY),
    # benchmarks/lockstep.py
    ('benchmarks/lockstep.py', ['--widths=256,x,10'],
     "--widths: 'x' is not an integer"),
    ('benchmarks/lockstep.py', ['--batch_size=0'], '--batch_size must be >= 1'),
    ('benchmarks/lockstep.py', ['--precision=float17'], UNKNOWN_POLICY),
    ('benchmarks/lockstep.py', ['stray'], STRAY),
    # benchmarks/montecarlo.py
    ('benchmarks/montecarlo.py', ['--samples=0'], '--samples must be >= 1'),
    ('benchmarks/montecarlo.py', ['--chunk=-5'], '--chunk must be >= 1'),
    ('benchmarks/montecarlo.py', ['--samples=4', '--chunk=8'],
     '--samples must be >= --chunk'),
    ('benchmarks/montecarlo.py', ['--torch_samples=many'], '--torch_samples'),
    ('benchmarks/montecarlo.py', ['--rounds=0'], '--rounds must be >= 1'),
    ('benchmarks/montecarlo.py', ['--float16_calls=-1'],
     '--float16_calls must be >= 0'),
    # benchmarks/primitives.py
    ('benchmarks/primitives.py', ['--shape=64,32,32'],
     '--shape takes exactly 4 values'),
    ('benchmarks/primitives.py', ['--shape=8,1,32,8'], 'H, W >= 2'),
    ('benchmarks/primitives.py', ['--dtype=float17'], '--dtype'),
    ('benchmarks/primitives.py', ['--out=benchmarks'],
     "--out='benchmarks' is a directory"),
    # benchmarks/train.py
    ('benchmarks/train.py', ['--members=2,4'], '--members must include 1'),
    ('benchmarks/train.py', ['--mlp_widths=512,inf'],
     "--mlp_widths: 'inf' is not an integer"),
    ('benchmarks/train.py', ['--models=mlp,resnet'],
     "--models: unknown 'resnet'"),
    ('benchmarks/train.py', ['--vgg_config=16,M'],
     '--vgg_config needs exactly 5 M'),
    # experiments/volume.py (the values the trust issue found raw)
    ('experiments/volume.py', ['--precision=float17'],
     "--precision: unknown precision policy 'float17'"),
    ('experiments/volume.py', ['--samples=0'], '--samples must be >= 1'),
    ('experiments/volume.py', ['--data_source=hdf5'],
     'flag --data_source=hdf5: value should be one of'),
    ('experiments/volume.py', ['--data_source=tfds', '--data_dir=tests'],
     "no prepared tensorflow-datasets 'mnist' in"),
    ('experiments/train.py', ['--data_order=idx'],
     'flag --data_order=idx: value should be one of <stored|native>'),
    ('experiments/volume.py', ['--samples=-5'], '--samples must be >= 1'),
    ('experiments/volume.py', ['--chunk=0'], '--chunk must be >= 1'),
    ('experiments/volume.py', ['--batch_size=0'], '--batch_size must be >= 1'),
    ('experiments/volume.py', ['--samples=1', '--batch_size=100000'],
     '--batch_size must be in 1..2000'),
    ('experiments/volume.py', ['--kinks=relu:a,b'], 'expected KIND:V0,V1'),
    ('experiments/volume.py', ['--kinks=relu:nan,1'], 'finite numbers'),
    ('experiments/volume.py', ['--kinks=relu:inf,1'], 'finite numbers'),
    ('experiments/volume.py', ['--model=nosuch'], "unknown model 'nosuch'"),
    ('experiments/volume.py', ['--train_size=0'], '--train_size must be >= 1'),
    ('experiments/volume.py', ['--samples=1', '--train_size=99999'],
     '--train_size must be in 1..2000'),
    ('experiments/volume.py', ['--tau=nan'], '--tau'),
    ('experiments/volume.py', ['--model_opt=widths'], 'expected key=value'),
    ('experiments/volume.py', ['stray'], STRAY),
    # experiments/train.py
    ('experiments/train.py', ['--lr=nan'], '--lr: nan is not a finite'),
    ('experiments/train.py', ['--lr=-1'], '--lr must be a finite number > 0'),
    ('experiments/train.py', ['--epochs=0'], '--epochs must be >= 1'),
    ('experiments/train.py', ['--kink_values=0,inf'],
     "--kink_values: 'inf' is not a finite number"),
    ('experiments/train.py', ['--precision=float17'], UNKNOWN_POLICY),
    ('experiments/train.py', ['--dataset=imagenet'], "unknown 'imagenet'"),
    ('experiments/train.py', ['--preset=nope'],
     'flag --preset=nope: value should be one of <relu_mlp_mnist|'),
    ('experiments/train.py', ['--dropout=1.5'], '--dropout must be in'),
    ('experiments/train.py', ['--train_examples=100', '--batch_size=500'],
     'exceeds the 100 training examples'),
    # experiments/bifurcation.py
    ('experiments/bifurcation.py', ['--kink_values=0,1,2'],
     'takes exactly 2 values'),
    ('experiments/bifurcation.py', ['--kink_values=0,nan'], 'finite number'),
    ('experiments/bifurcation.py', ['--steps=0'], '--steps must be >= 1'),
    ('experiments/bifurcation.py', ['--seeds=0,0'], 'distinct integers'),
    ('experiments/bifurcation.py', ['--widths=0,10'], '--widths'),
    ('experiments/bifurcation.py', ['--precision=float17'], UNKNOWN_POLICY),
    ('experiments/bifurcation.py', ['--batch_size=100000', '--steps=1'],
     'exceeds the 2000 training examples'),
    # experiments/zero_map.py
    ('experiments/zero_map.py', [], 'Flag --run must have a value'),
    ('experiments/zero_map.py', ['--run=/nonexistent/jaxkink'],
     '--run must be a bifurcation.py seed directory'),
    ('experiments/zero_map.py', ['--run=.', '--radius=0'],
     '--radius must be a finite number > 0'),
    ('experiments/zero_map.py', ['--run=.', '--grid=1'], '--grid must be >= 3'),
    ('experiments/zero_map.py', ['--run=.'], 'not a run directory'),
]


def _key(script: str, args: Sequence[str]) -> tuple[str, tuple[str, ...]]:
  return script, tuple(args)


def _run(script: str, args: Sequence[str]) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  env.pop('JAXKINK_DATA_DIR', None)  # the bundled sample, if data is read
  return subprocess.run([sys.executable, os.path.join(ROOT, script), *args],
                        capture_output=True, text=True, timeout=TIMEOUT_S,
                        cwd=ROOT, env=env, check=False)


@pytest.fixture(scope='module')
def outcomes(request):
  """Futures of the selected cases, started two at a time, keyed by
  :func:`_key`; empty under pytest-xdist (each test then runs its own)."""
  if os.environ.get('PYTEST_XDIST_WORKER'):
    yield {}
    return
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS)
  futures = {}
  for item in request.session.items:
    params = getattr(getattr(item, 'callspec', None), 'params', {})
    if (item.module is sys.modules[__name__] and 'script' in params
        and 'args' in params):
      key = _key(params['script'], params['args'])
      if key not in futures:
        futures[key] = pool.submit(_run, *key)
  yield futures
  pool.shutdown(wait=True, cancel_futures=True)


def _case_id(case: tuple[str, Sequence[str], str]) -> str:
  script, args, _ = case
  return f'{os.path.basename(script)}:{" ".join(args)}'


@pytest.mark.parametrize('script, args, expected', CASES,
                         ids=[_case_id(c) for c in CASES])
def test_hostile_flag_is_refused_on_one_line(outcomes, script, args,
                                             expected):
  future = outcomes.get(_key(script, args))
  proc = future.result() if future is not None else _run(script, args)
  output = proc.stderr + proc.stdout
  assert proc.returncode != 0, output[-2000:]
  assert 'Traceback' not in output, output[-2000:]
  lines = [line for line in proc.stderr.splitlines() if expected in line]
  assert lines, f'{expected!r} not in stderr:\n{proc.stderr[-2000:]}'
  assert lines[0].startswith(('FATAL Flags parsing error: ', 'error: ')), (
      proc.stderr[-2000:])
