"""Shared test helpers."""

from __future__ import annotations

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every command a test starts (the scripts, ``python -c``) compiles its
# programs through one persistent compilation cache: most of them compile
# the same small programs as another test's command, and compiling is about
# half of such a command's time. It changes no number (a cached executable
# is the one XLA would compile again; its key holds the program, the jax
# and XLA versions, the devices and ``XLA_FLAGS``, so the AVX2 re-run of CI
# compiles its own). Set by a fixture, in the process that runs the tests
# (a pytest-xdist worker) after its JAX has read its configuration: the
# tests' own JAX does not use it, so no test reads an entry that another
# process is still writing (jax writes them in place). Commands running at
# the same time may still; jax then warns and compiles.
COMPILE_CACHE = os.path.join(
    os.environ.get('PYTEST_TMPDIR', '/tmp'),
    f'jaxkink-test-compile-cache-{os.getuid()}')


@pytest.fixture(autouse=True, scope='session')
def _commands_share_a_compilation_cache():
  values = {'JAX_COMPILATION_CACHE_DIR': COMPILE_CACHE,
            'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
            'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}
  saved = {name: os.environ.get(name) for name in values}
  for name, value in values.items():
    os.environ.setdefault(name, value)
  yield
  for name, value in saved.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value


def script_env(*drop: str, **values: str) -> dict[str, str]:
  """The environment of an experiment command run by a test: this
  checkout on ``PYTHONPATH``, JAX on the CPU, and no ``JAXKINK_DATA_DIR``
  (the bundled MNIST sample); the variables ``drop`` removed too, then
  ``values`` set."""
  env = dict(os.environ, PYTHONPATH=_ROOT, JAX_PLATFORMS='cpu')
  for name in ('JAXKINK_DATA_DIR', *drop):
    env.pop(name, None)
  env.update(values)
  return env


def run_on_host_devices(script: str, devices: int = 4) -> str:
  """Runs ``python -c script`` on ``devices`` forced CPU devices; its stdout.

  The device count is added to the caller's ``XLA_FLAGS`` (e.g.
  ``--xla_cpu_max_isa``), not put instead of them; the script fails the
  test with its stderr's tail if it exits non-zero.
  """
  flags = os.environ.get('XLA_FLAGS', '')
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=_ROOT,
             XLA_FLAGS=f'{flags} --xla_force_host_platform_device_count='
                       f'{devices}')
  proc = subprocess.run([sys.executable, '-c', script], env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def bits(a) -> np.ndarray:
  """The raw bits of a float array, so -0.0 and +0.0 (and NaNs) differ."""
  a = np.asarray(a)
  return a.view(np.dtype(f'u{a.dtype.itemsize}'))


def assert_bits_equal(a, b) -> None:
  a, b = np.asarray(a), np.asarray(b)
  assert a.dtype == b.dtype, (a.dtype, b.dtype)
  assert a.shape == b.shape, (a.shape, b.shape)
  diff = np.flatnonzero(bits(a) != bits(b))
  assert diff.size == 0, (
      f'{diff.size} of {a.size} elements differ in their bits, first at flat '
      f'index {diff[:5]}: {a.ravel()[diff[:5]]} vs {b.ravel()[diff[:5]]}')


# Bit-equality is guaranteed only for one compiled program (or one op on the
# same shapes, or exact arithmetic). Two programs of different shapes or
# structure (vmapped vs unbatched, model A vs model B, other batch sizes) may
# get other GEMM / convolution / reduction kernels from XLA's CPU backend,
# which picks them by CPU and by shape: compare those in ulps instead.

def ulp(x, dtype) -> np.ndarray:
  """The spacing of ``dtype``'s floats at ``|x|`` (float64 array).

  For ``|x|`` in ``[2^e, 2^(e+1))`` this is ``2^(e - nmant)``; below the
  smallest normal it is the smallest subnormal.
  """
  info = jnp.finfo(dtype)
  x = np.abs(np.asarray(x, np.float64))
  e = np.floor(np.log2(np.maximum(x, float(info.tiny))))
  return np.exp2(np.maximum(e, info.minexp) - info.nmant)


def ulp_distance(a, b, scale=None) -> np.ndarray:
  """``|a - b|`` per element in ulps of ``a``'s dtype, counted at
  ``max(|a|, |b|, scale)``.

  ``scale='max'`` counts every element in ulps of the largest magnitude of
  ``b``: the natural unit for sums whose order changed, whose error is a
  few ulps of the summed terms, not of a small result left by
  cancellation. Elements that are both NaN, or the same infinity, are at
  distance 0; a NaN or infinity against anything else at ``inf``.
  """
  a, b = np.asarray(a), np.asarray(b)
  assert a.dtype == b.dtype, (a.dtype, b.dtype)
  assert a.shape == b.shape, (a.shape, b.shape)
  a64, b64 = a.astype(np.float64), b.astype(np.float64)
  finite = np.isfinite(a64) & np.isfinite(b64)
  if scale == 'max':
    scale = float(np.max(np.abs(b64[finite]), initial=0.0))
  ref = np.maximum(np.abs(a64), np.abs(b64))
  if scale is not None:
    ref = np.maximum(ref, scale)
  with np.errstate(invalid='ignore'):
    dist = np.where(finite, np.abs(a64 - b64) / ulp(np.where(finite, ref, 1),
                                                    a.dtype), np.inf)
  same = (np.isnan(a64) & np.isnan(b64)) | (~finite & (a64 == b64))
  return np.where(same, 0.0, dist)


def assert_close_ulps(a, b, ulps, scale=None) -> None:
  """Every element of ``a`` within ``ulps`` ulps of ``b`` (same dtype and
  shape; see :func:`ulp_distance` for ``scale``). Justify ``ulps`` where it
  is used."""
  dist = ulp_distance(a, b, scale)
  bad = np.flatnonzero(dist > ulps)
  a, b = np.asarray(a), np.asarray(b)
  assert bad.size == 0, (
      f'{bad.size} of {a.size} elements more than {ulps} ulps apart '
      f'(scale={scale}; worst {dist.max():.3g} ulps), first at flat index '
      f'{bad[:5]}: {a.ravel()[bad[:5]]} vs {b.ravel()[bad[:5]]}')


@pytest.fixture
def rng() -> np.random.Generator:
  return np.random.default_rng(20211206)


def file_bytes(directory):
  """Every file under ``directory`` (relative path) and its bytes."""
  out = {}
  for d, _, files in os.walk(directory):
    for f in files:
      with open(os.path.join(d, f), 'rb') as fh:
        out[os.path.relpath(os.path.join(d, f), directory)] = fh.read()
  return out
