"""A plain (non-editable) install: the experiments are commands on the PATH.

The package is built into a wheel and installed, without its dependencies,
into a fresh virtual environment; the dependencies are those of the
environment running the tests, seen through a path entry (so the test costs
a wheel build, not a download of JAX). Every command then answers
``--helpfull`` from a directory outside the checkout, importing jaxkink
from the fresh environment, not from the checkout.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# command -> (its module, a flag of its own)
COMMANDS = {
    'jaxkink-volume': ('volume', '--samples'),
    'jaxkink-train': ('train', '--kink_values'),
    'jaxkink-bifurcation': ('bifurcation', '--steps'),
    'jaxkink-zero-program': ('zero_program', '--plot_points'),
    'jaxkink-zero-map': ('zero_map', '--radius'),
}


def _run(cmd, **kw) -> subprocess.CompletedProcess:
  return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                        check=False, **kw)


@pytest.fixture(scope='module')
def venv(tmp_path_factory) -> pathlib.Path:
  """A fresh venv holding the wheel of the checkout and nothing else."""
  tmp = tmp_path_factory.mktemp('install')
  # A copy of what the wheel is built from: setuptools builds in the source
  # tree (build/, *.egg-info), which would leave files in the checkout.
  src = tmp / 'src'
  src.mkdir()
  for f in ('pyproject.toml', 'README.md'):
    shutil.copy(ROOT / f, src / f)
  shutil.copytree(ROOT / 'jaxkink', src / 'jaxkink',
                  ignore=shutil.ignore_patterns('__pycache__'))
  built = _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q',
                '-w', str(tmp / 'dist'), str(src)])
  assert built.returncode == 0, built.stderr
  (wheel,) = (tmp / 'dist').glob('jaxkink-*.whl')
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
  for f in ('jaxkink/experiments/volume.py',
            'jaxkink/experiments/volume_presets.py',
            'jaxkink/data/mnist_sample.npz', 'jaxkink/py.typed'):
    assert f in names, f'{f} is not in the wheel'
  env_dir = tmp / 'venv'
  made = _run([sys.executable, '-m', 'venv', '--without-pip', str(env_dir)])
  assert made.returncode == 0, made.stderr
  python = env_dir / 'bin' / 'python'
  site = pathlib.Path(_run([str(python), '-c', 'import sysconfig; print('
                            'sysconfig.get_paths()["purelib"])'])
                      .stdout.strip())
  # Plain path lines: the .pth files there (the checkout's editable
  # install among them) are not processed, so jaxkink is not seen twice.
  deps = {sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib']}
  (site / 'test_dependencies.pth').write_text(
      ''.join(f'{d}\n' for d in sorted(deps)))
  installed = _run([sys.executable, '-m', 'pip', '--python', str(python),
                    'install', '--no-deps', '-q', str(wheel)])
  assert installed.returncode == 0, installed.stderr
  return env_dir


def _env(venv: pathlib.Path) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if k not in ('PYTHONPATH', 'VIRTUAL_ENV')}
  env['PATH'] = f'{venv / "bin"}{os.pathsep}{env.get("PATH", "")}'
  return env


def test_jaxkink_comes_from_the_fresh_venv(venv, tmp_path):
  out = _run([str(venv / 'bin' / 'python'), '-c',
              'import jaxkink.experiments.volume as v; print(v.__file__)'],
             cwd=tmp_path, env=_env(venv))
  assert out.returncode == 0, out.stderr
  path = pathlib.Path(out.stdout.strip()).resolve()
  assert path.is_relative_to(venv.resolve()), path
  assert not path.is_relative_to(ROOT), path


@pytest.mark.parametrize('command', sorted(COMMANDS))
def test_command_answers_helpfull_outside_the_checkout(venv, tmp_path,
                                                       command):
  executable = venv / 'bin' / command
  assert executable.exists(), f'{command} was not installed'
  out = _run([str(executable), '--helpfull'], cwd=tmp_path, env=_env(venv))
  # absl ends --help and --helpfull with exit status 1, after the text.
  assert out.returncode == 1, out.stderr
  module, flag = COMMANDS[command]
  # The help text starts with the module's docstring (absl prints that of
  # __main__, which for a console command is pip's launcher).
  doc = importlib.import_module(f'jaxkink.experiments.{module}').__doc__
  assert out.stdout.startswith(doc.strip().splitlines()[0]), out.stdout[:300]
  assert flag in out.stdout
  assert 'Traceback' not in out.stderr, out.stderr
  assert 'libtpu' not in out.stderr, out.stderr
