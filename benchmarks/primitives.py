r"""Cost of jaxkink's kink primitives against JAX's own, as ratios.

Each case times a jaxkink primitive and its JAX/Flax equivalent in the same
run, on the same input, and reports the ratio of their median times:

* ``jaxkink.relu(x, s)`` vs ``jax.nn.relu(x)``;
* ``jaxkink.relu6(x, a, b)`` vs ``jax.nn.relu6(x)``;
* ``jaxkink.max_pool(x, (2, 2), (2, 2), beta=b)`` vs
  ``flax.linen.max_pool(x, (2, 2), (2, 2))``, and the overlapping
  ``(3, 3)`` window, stride ``(2, 2)``, padding ``((1, 1), (1, 1))``;
* the same two ``max_pool`` cases against the reverse-only ``custom_vjp``
  that ``jaxkink.max_pool`` was before it gained forward mode (issue 14):
  the same forward and the same pullback, without the ``custom_jvp`` and
  ``lax.custom_linear_solve`` that now carry it.

Each is timed forward only, forward+backward (``jax.vjp`` with a random
cotangent, returning the output and the input cotangent) and, against
JAX/Flax, in forward mode (``jax.jvp`` with a random tangent), each a single
jitted program compiled once. Kink values are traced arguments (0.5, so the
kink paths are live), and the input is integer-valued so that ReLU kinks
and pooling ties actually occur. A last case per primitive vmaps the jaxkink
forward+backward over 4 kink values in one program against 4 sequential
calls of the baseline's, to show what a sweep over kink values costs.

Run::

  python benchmarks/primitives.py --shape=64,32,32,64

Flags: ``--shape`` (NHWC), ``--dtype`` (float32, float16, bfloat16),
``--repeats`` (timed calls after one warm-up call) and ``--out`` (a JSON
path for the table and the environment).
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp

import jaxkink
from jaxkink import cli
from jaxkink import pooling
from jaxkink import rundir

_SHAPE = flags.DEFINE_list('shape', ['64', '32', '32', '64'],
                           'Input shape, NHWC.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32',
                           ['float32', 'float16', 'bfloat16'], 'Input dtype.')
_REPEATS = flags.DEFINE_integer('repeats', 20,
                                'Timed calls per measurement, after a warm-up.')
_OUT = flags.DEFINE_string('out', None,
                           'Optional JSON path for the results.')


def parse_shape(values: Sequence[str]) -> tuple[int, int, int, int]:
  """``--shape`` as NHWC integers, all >= 1 and H, W >= 2 (a 2x2 window).

  Raises:
    ValueError: naming the flag and what is allowed.
  """
  shape = cli.positive_ints(values, '--shape', count=4)
  if min(shape[1:3]) < 2:
    raise ValueError(f'--shape must be NHWC with H, W >= 2, got {shape}')
  return shape


cli.check('shape', parse_shape, '--shape must be NHWC with H, W >= 2')
cli.check_positive(['repeats'])
cli.check_output_file('out')

KINK = 0.5  # kink value of the single cases: neither 0 nor 1, so all live
SWEEP = (0.0, 0.5, 1.0, 2.0)  # kink values of the vmapped sweep

Fn = Callable[..., jax.Array]

@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _previous_max_pool(x, beta, geom):
  return pooling.reduce_max(x, geom)


def _previous_fwd(x, beta, geom):
  return pooling.reduce_max(x, geom), (x, beta)


def _previous_bwd(geom, res, g):
  x, beta = res
  return pooling._pool_pullback(x, beta, g, geom), None  # pylint: disable=protected-access


_previous_max_pool.defvjp(_previous_fwd, _previous_bwd)


def previous_max_pool(x, window, strides, padding, beta):
  """``jaxkink.max_pool`` as it was up to issue 14: a reverse-only custom_vjp."""
  geom = pooling.window_geometry(x.shape, window, strides, padding)
  return _previous_max_pool(x, jnp.asarray(beta, x.dtype), geom)


def _pool(window, strides, padding='VALID'):
  return (lambda x, k: nn.max_pool(x, window, strides, padding),
          lambda x, k: jaxkink.max_pool(x, window, strides, padding, beta=k),
          lambda x, k: previous_max_pool(x, window, strides, padding, k))


_POOL_2 = _pool((2, 2), (2, 2))
_POOL_3 = _pool((3, 3), (2, 2), ((1, 1), (1, 1)))

# name: (baseline(x, kink), jaxkink(x, kink), whether the baseline's sweep is
# vmapped too). The JAX/Flax baselines ignore the kink value (jit drops the
# unused argument), so their sweep is sequential calls; the previous
# max_pool takes it, so both sweeps are one vmapped program.
PRIMITIVES: dict[str, tuple[Fn, Fn, bool]] = {
    'relu': (lambda x, k: jax.nn.relu(x), jaxkink.relu, False),
    'relu6': (lambda x, k: jax.nn.relu6(x),
              lambda x, k: jaxkink.relu6(x, k, k), False),
    'max_pool 2x2/2': (*_POOL_2[:2], False),
    'max_pool 3x3/2 pad 1': (*_POOL_3[:2], False),
    'max_pool 2x2/2 vs previous custom_vjp': (_POOL_2[2], _POOL_2[1], True),
    'max_pool 3x3/2 pad 1 vs previous custom_vjp': (_POOL_3[2], _POOL_3[1],
                                                    True),
}


def fwd_bwd(f: Fn) -> Fn:
  """``(x, g, *args) -> (f(x, *args), g^T df/dx)``."""

  def run(x, g, *args):
    y, pullback = jax.vjp(lambda x: f(x, *args), x)
    return y, pullback(g)[0]

  return run


def jvp(f: Fn) -> Fn:
  """``(x, t, *args) -> (f(x, *args), df/dx t)`` (forward mode)."""

  def run(x, t, *args):
    return jax.jvp(lambda x: f(x, *args), (x,), (t,))

  return run


def time_ms(call: Callable[[], Any], repeats: int) -> tuple[float, float]:
  """Median and min wall time of ``call()`` in ms, after one warm-up call."""
  jax.block_until_ready(call())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append((time.perf_counter() - start) * 1e3)
  return statistics.median(times), min(times)


def benchmark(shape: Sequence[int], dtype: Any,
              repeats: int) -> list[dict[str, Any]]:
  """Times every (primitive, mode) pair; one row per case."""
  kx, kg, kt = jax.random.split(jax.random.key(0), 3)
  x = jnp.round(3 * jax.random.normal(kx, shape)).astype(dtype)
  kink = jnp.asarray(KINK, dtype)
  sweep = jnp.asarray(SWEEP, dtype)
  rows = []
  for name, (base, kinked, vmap_base) in PRIMITIVES.items():
    y_shape = jax.eval_shape(base, x, kink).shape
    g = jax.random.normal(kg, y_shape).astype(dtype)
    base_fwd, kinked_fwd = jax.jit(base), jax.jit(kinked)
    base_bwd, kinked_bwd = jax.jit(fwd_bwd(base)), jax.jit(fwd_bwd(kinked))
    kinked_sweep = jax.jit(jax.vmap(fwd_bwd(kinked), in_axes=(None, None, 0)))
    base_sweep = jax.jit(jax.vmap(fwd_bwd(base), in_axes=(None, None, 0)))
    cases = {
        'fwd': (lambda: base_fwd(x, kink), lambda: kinked_fwd(x, kink)),
        'fwd+bwd': (lambda: base_bwd(x, g, kink),
                    lambda: kinked_bwd(x, g, kink)),
        f'fwd+bwd sweep {len(SWEEP)}': (
            (lambda: base_sweep(x, g, sweep)) if vmap_base else
            (lambda: [base_bwd(x, g, k) for k in sweep]),
            lambda: kinked_sweep(x, g, sweep)),
    }
    if not vmap_base:  # forward mode (the previous max_pool had none)
      t_in = jax.random.normal(kt, x.shape).astype(dtype)
      base_jvp, kinked_jvp = jax.jit(jvp(base)), jax.jit(jvp(kinked))
      cases['jvp'] = (lambda: base_jvp(x, t_in, kink),
                      lambda: kinked_jvp(x, t_in, kink))
    for mode, (base_call, kinked_call) in cases.items():
      base_med, base_min = time_ms(base_call, repeats)
      kink_med, kink_min = time_ms(kinked_call, repeats)
      rows.append({'case': f'{name} {mode}',
                   'baseline_ms_median': base_med, 'baseline_ms_min': base_min,
                   'jaxkink_ms_median': kink_med, 'jaxkink_ms_min': kink_min,
                   'ratio': kink_med / base_med})
      print(f'  {rows[-1]["case"]}: ratio {rows[-1]["ratio"]:.2f}', flush=True)
  return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
  """A markdown table of ``rows`` (times as median / min)."""
  lines = ['| case | baseline ms (median / min) | jaxkink ms (median / min) '
           '| ratio |', '|---|---:|---:|---:|']
  for r in rows:
    lines.append(f'| {r["case"]} '
                 f'| {r["baseline_ms_median"]:.3f} / {r["baseline_ms_min"]:.3f} '
                 f'| {r["jaxkink_ms_median"]:.3f} / {r["jaxkink_ms_min"]:.3f} '
                 f'| {r["ratio"]:.2f} |')
  return '\n'.join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  shape = parse_shape(_SHAPE.value)  # checked while parsing
  repeats = _REPEATS.value

  device = jax.devices()[0]
  print(f'device: {device.device_kind} ({device.platform}), '
        f'jax {jax.__version__}, jaxkink {jaxkink.__version__}')
  print(f'shape {shape}, {_DTYPE.value}, median / min of {repeats} calls; '
        f'ratio = jaxkink median / baseline median\n', flush=True)
  rows = benchmark(shape, jnp.dtype(_DTYPE.value), repeats)
  print('\n' + format_table(rows))
  if _OUT.value:
    rundir.write_json(_OUT.value, {
        'shape': shape, 'dtype': _DTYPE.value, 'repeats': repeats,
        'kink': KINK, 'sweep': SWEEP, 'rows': rows,
        'environment': rundir.environment()})
    print(f'\nwrote {_OUT.value}')


if __name__ == '__main__':
  app.run(cli.main(main))
