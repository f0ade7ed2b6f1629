r"""The zero program of Boustany's TMLR paper (Tables 1 and 3), in JAX.

Two programs that compute the same function ``max(x_1, ..., x_4)`` but pick
different derivatives at ties give, by difference, a program that computes 0
everywhere, ``zero(t) = max_1(t x) - max_2(t x)``. Its autodiff derivative
``zero'(t)`` should be 0; in floating point it is not always.

* ``max`` (Table 1): ``max_1`` is :func:`jaxkink.max_pool` with the native
  Jacobian (beta = 0, the whole cotangent to the first maximum) and ``max_2``
  the minimal one (beta = 1, split equally over the maxima), over one window
  of 4.
* ``relu`` (Table 3): the maximum built from ReLUs,
  ``max(a, b) = (a + b)/2 + relu((a - b)/2) + relu((b - a)/2)``, applied as a
  tree ``max(max(x_1, x_2), max(x_3, x_4))``; ``max_1`` uses ReLU'(0) = 0 in
  both ReLUs, ``max_2`` uses ReLU'(0) = 1 in the first (the paper's
  ``where(x >= 0, x, 0)``) and 0 in the second.

For ``x1 = (1, 2, 3, 4)`` ties happen only at ``t = 0``, where ``zero'(0)`` is
``-1.5`` (max) or ``+1.5`` (relu). For ``x2 = (1.4, 1.4, 1.4, 1.4)`` every t
gives a tie, and ``zero'(t)`` is a rounding residue of the order of the
precision's epsilon (``1.4 - 4 * 0.35`` computed in floating point).

Run::

  jaxkink-zero-program --out=runs/zero_program

It prints one table per (program, precision), and writes ``results.json``,
``table.md``, ``environment.json`` and ``zero_program.png`` into ``--out``.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Callable, Mapping, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import jaxkink
from jaxkink import cli
from jaxkink import rundir

FLAGS = flags.FLAGS

# The paper's grid of t (Tables 1 and 3) and its two vectors.
T_GRID = (-1e-3, -1e-2, -1e-1, 0.0, 1e1, 1e2, 1e3)
XS = {'x1': (1.0, 2.0, 3.0, 4.0), 'x2': (1.4, 1.4, 1.4, 1.4)}
PRECISIONS = ('float16', 'float32', 'float64')


def max_pooled(z: jax.Array, beta: float) -> jax.Array:
  """``max(z)`` over one window of 4 with MaxPool tie rule ``beta``."""
  return jaxkink.max_pool(z[:, None], (z.shape[0],), beta=beta)[0, 0]


def _max2_relu(a: jax.Array, b: jax.Array, s: float) -> jax.Array:
  """``max(a, b)`` from ReLUs; ``s`` is ReLU'(0) of the first ReLU."""
  return ((a + b) / 2 + jaxkink.relu((a - b) / 2, s)
          + jaxkink.relu((b - a) / 2, 0.0))


def max_relu(z: jax.Array, s: float) -> jax.Array:
  """``max(z_1..z_4)`` as a tree of ReLU-built pairwise maxima."""
  return _max2_relu(_max2_relu(z[0], z[1], s), _max2_relu(z[2], z[3], s), s)


PROGRAMS: dict[str, tuple[Callable[[jax.Array], jax.Array],
                          Callable[[jax.Array], jax.Array]]] = {
    'max': (functools.partial(max_pooled, beta=0.0),
            functools.partial(max_pooled, beta=1.0)),
    'relu': (functools.partial(max_relu, s=0.0),
             functools.partial(max_relu, s=1.0)),
}


def zero_derivative(program: str, dtype) -> Callable:
  """A jitted ``(t, x) -> zero'(t)`` for ``program`` in ``dtype``."""
  max_1, max_2 = PROGRAMS[program]

  def zero(t, x):
    z = t * x
    return max_1(z) - max_2(z)

  grad = jax.jit(jax.grad(zero))
  return lambda t, x: grad(jnp.asarray(t, dtype), jnp.asarray(x, dtype))


def compute_table(program: str, precision: str, ts: Sequence[float],
                  xs: Mapping[str, Sequence[float]] = XS) -> dict[str, list[float]]:
  """``{x name: [zero'(t) for t in ts]}`` under the named precision policy."""
  policy = jaxkink.get_policy(precision)
  deriv = zero_derivative(program, policy.compute_dtype)
  with policy.scope():
    return {name: [float(deriv(t, x)) for t in ts] for name, x in xs.items()}


def format_table(program: str, precision: str, ts: Sequence[float],
                 values: dict[str, list[float]]) -> str:
  head = f"zero'(t), {program} program, {precision}"
  cols = ['x'] + [f'{t:g}' for t in ts]
  lines = [f'### {head}', '', '| ' + ' | '.join(cols) + ' |',
           '|' + '---|' * len(cols)]
  for name, row in values.items():
    x = ', '.join(f'{v:g}' for v in XS.get(name, ()))
    label = f'{name} = ({x})' if x else name
    lines.append('| ' + ' | '.join([label] + [f'{v:.3g}' for v in row]) + ' |')
  return '\n'.join(lines)


def plot(path: str, precisions: Sequence[str], points: int) -> None:
  """|zero'(1)| for x = (c, c, c, c) against c, per (program, precision).

  All four entries tie for every t, so zero'(t) does not depend on t; what
  it depends on is the tied value c, through the rounding of ``c * 3/4 -
  c/4 - c/4 - c/4``. The plot shows how often that residue is exactly 0.
  """
  plt = rundir.pyplot()

  cs = np.linspace(0.5, 2.0, points)
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  for ax, program in zip(axes, PROGRAMS):
    for precision in precisions:
      policy = jaxkink.get_policy(precision)
      deriv = zero_derivative(program, policy.compute_dtype)
      with policy.scope():
        vals = np.array([abs(float(deriv(1.0, (c,) * 4))) for c in cs])
      eps = float(jnp.finfo(policy.compute_dtype).eps)
      line, = ax.semilogy(cs, np.where(vals > 0, vals, np.nan), '.', ms=3,
                          label=f'{precision}: exactly 0 at '
                          f'{int(np.sum(vals == 0))}/{len(cs)} values of c')
      ax.axhline(eps, color=line.get_color(), lw=0.6, ls='--')
    ax.set_title(f'{program} program, x = (c, c, c, c), t = 1')
    ax.set_xlabel('c')
    ax.grid(True, which='major', alpha=0.3)
    ax.legend(fontsize=8)
  axes[0].set_ylabel("|zero'(t)| (dashed: machine epsilon)")
  fig.suptitle('Autodiff of a program that computes 0, at ties: the residue '
               'is rounding error (points at 0 are not drawn)')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def define_flags() -> None:
  """Defines the script's flags (only when it runs as a script, so that tests
  can import it beside other experiments)."""
  flags.DEFINE_string('out', 'runs/zero_program',
                      'Run directory for the table, raw values and plot.')
  flags.DEFINE_list('precisions', list(PRECISIONS), 'Precision policies to '
                    'run (float16, float32, float64, bfloat16, ...).')
  flags.DEFINE_list('t', [repr(t) for t in T_GRID], 'Values of t.')
  flags.DEFINE_integer('plot_points', 301, 'Values of c in [0.5, 2] for the '
                       "plot of |zero'(1)| at x = (c, c, c, c) (0: no plot).")
  cli.check_output_dir('out')
  cli.check_policies('precisions')
  cli.check('t', lambda v: cli.finite_floats(v, '--t'),
            '--t must be a list of finite numbers')
  cli.check('plot_points', lambda v: v >= 0,
            '--plot_points must be >= 0 (0: no plot)')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    policies = jaxkink.policies_for_program(FLAGS.precisions)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  precisions = [p.name for p in policies]
  try:
    ts = list(cli.finite_floats(FLAGS.t, '--t'))
  except ValueError as e:
    raise app.UsageError(str(e)) from e

  out = FLAGS.out
  os.makedirs(out, exist_ok=True)
  results, tables = [], []
  for program in PROGRAMS:
    for precision in precisions:
      values = compute_table(program, precision, ts)
      tables.append(format_table(program, precision, ts, values))
      print(tables[-1], end='\n\n', flush=True)
      for name, row in values.items():
        results += [{'program': program, 'precision': precision, 'x': name,
                     't': t, 'derivative': v} for t, v in zip(ts, row)]

  rundir.write_json(os.path.join(out, 'flags.json'), {
      'precisions': precisions, 't': ts, 'plot_points': FLAGS.plot_points})
  rundir.write_json(os.path.join(out, 'environment.json'), rundir.environment())
  rundir.write_json(os.path.join(out, 'policies.json'),
                    [jaxkink.POLICIES[p].to_dict() for p in precisions])
  rundir.write_text(os.path.join(out, 'results.json'),
                    json.dumps(results, indent=1) + '\n')
  rundir.write_text(os.path.join(out, 'table.md'), '\n\n'.join(tables) + '\n')
  if FLAGS.plot_points > 0:
    plot(os.path.join(out, 'zero_program.png'), precisions, FLAGS.plot_points)
  print(f'wrote {out}/table.md, results.json, environment.json'
        + (', zero_program.png' if FLAGS.plot_points > 0 else ''))


def run() -> None:
  """Runs the ``jaxkink-zero-program`` command."""
  define_flags()
  cli.run(cli.main(main), __doc__)


if __name__ == '__main__':
  run()
