"""The TMLR zero program (Tables 1 and 3) and its script."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np

from jaxkink.experiments import zero_program

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NONZERO_T = [t for t in zero_program.T_GRID if t != 0]


def test_table1_max_program_float32():
  values = zero_program.compute_table('max', 'float32', zero_program.T_GRID)
  x1 = dict(zip(zero_program.T_GRID, values['x1']))
  assert x1[0.0] == -1.5  # the paper's Table 1
  assert all(x1[t] == 0.0 for t in NONZERO_T)
  # x2 ties at every t: the paper reports 5.96e-8 = 2^-24 (rounded to 1e-7
  # in its table) everywhere; the sign is not in the paper.
  assert all(abs(v) == 2.0 ** -24 for v in values['x2'])


def test_table3_relu_program_float32():
  values = zero_program.compute_table('relu', 'float32', zero_program.T_GRID)
  x1 = dict(zip(zero_program.T_GRID, values['x1']))
  assert x1[0.0] == 1.5  # the paper's Table 3
  assert all(x1[t] == 0.0 for t in NONZERO_T)
  assert all(0 < abs(v) < 1e-6 for v in values['x2'])


def test_the_residue_scales_with_the_precision():
  for program in zero_program.PROGRAMS:
    f16 = zero_program.compute_table(program, 'float16', [1.0])['x2'][0]
    f32 = zero_program.compute_table(program, 'float32', [1.0])['x2'][0]
    with jax.enable_x64(True):
      f64 = zero_program.compute_table(program, 'float64', [1.0])['x2'][0]
    eps = [np.finfo(d).eps for d in (np.float16, np.float32, np.float64)]
    for v, e in zip((f16, f32, f64), eps):
      assert 0 < abs(v) <= 4 * e
    # Independent check in numpy: x . (1 - 1/4, -1/4, -1/4, -1/4), rounded
    # in float16 step by step, is the float16 residue.
    if program == 'max':
      c = np.float16(1.4)
      want = (c * np.float16(0.75) + c * np.float16(-0.25)
              + c * np.float16(-0.25) + c * np.float16(-0.25))
      assert abs(f16) == abs(float(want))


def test_script_writes_the_run_directory(tmp_path):
  out = tmp_path / 'run'
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'zero_program.py'),
       f'--out={out}', '--plot_points=5', '--t=0,10'],
      capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '| x1 = (1, 2, 3, 4) | -1.5 | 0 |' in proc.stdout
  results = json.loads((out / 'results.json').read_text())
  assert len(results) == 2 * 3 * 2 * 2  # programs x precisions x xs x ts
  env = json.loads((out / 'environment.json').read_text())
  assert env['jax_enable_x64'] and env['versions']['jax']
  assert (out / 'zero_program.png').stat().st_size > 1000
  assert (out / 'table.md').read_text().count('###') == 6


def test_script_rejects_an_unknown_precision(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'experiments', 'zero_program.py'),
       f'--out={tmp_path}', '--precisions=float8'],
      capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
  assert proc.returncode != 0
  assert 'unknown precision policy' in proc.stderr
  assert 'Traceback' not in proc.stderr
