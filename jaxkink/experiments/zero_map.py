r"""The bifurcation zone in a random plane (NeurIPS 2021, Figures 1 and 6, right).

Takes the weights of a ``bifurcation.py`` run at the iteration where the
s = 0 and s = 1 runs part, and the minibatch of that iteration. Through those
weights it draws a random 2D plane (uniform among 2D subspaces: two Gaussian
directions, orthonormalised) in the parameter space of the first-layer
neuron that hit the kink (its weights and bias), and evaluates that neuron's
pre-activations on the minibatch over a grid of the plane, vmapped. Each
pixel shows ``min_i |z_i|`` over the minibatch's samples ``i``; white pixels
are exact zeros, i.e. weights in the bifurcation zone of this minibatch.
In float32 the zero set is a band of visible width; in float64 it is much
thinner at the same scale.

The centre of the plane is the parting weights themselves, and the script
prints ``min_i |z_i|`` there per precision, with what it means
(:func:`centre_note`). In the run's precision it need not be 0 although the
training step found an exact zero there: this map computes the one neuron
as its own matrix-vector product, in its own program, and exact zeros depend
on the arithmetic (the summation order XLA picks), not only on the weights
(DESIGN.md, section 4). In a wider precision it is close to the exact
pre-activation, i.e. how far the weights really were from the kink.

Run (after ``bifurcation.py``)::

  jaxkink-zero-map --run=runs/bif_f32/seed_0 \
      --data_dir=../shared/data --precisions=float32,float64

Writes ``<run>/zero_map/zero_map.png``, ``zero_map.npz`` and ``summary.json``.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import jaxkink
from jaxkink import cli
from jaxkink import data
from jaxkink import rundir

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The flags of the zero_map command, in absl's global FLAGS."""
  flags.DEFINE_string('run', None, 'A bifurcation.py seed directory (with '
                      'parting_params.npz and summary.json).')
  flags.DEFINE_string('data_dir', None, 'MNIST directory.')
  cli.define_data_flags()
  flags.DEFINE_list('precisions', ['float32', 'float64'],
                    'Precision policies to map.')
  flags.DEFINE_integer('grid', 201, 'Grid points per axis (odd: the middle '
                       'point is then the parting weights, whose value is '
                       'printed).')
  flags.DEFINE_float('radius', 2e-7, 'Half-width of the grid, in parameter '
                     'units along each direction.')
  flags.DEFINE_integer('seed', 0, 'Seed of the random plane.')
  flags.DEFINE_string('out', None, 'Output directory (default '
                      '<run>/zero_map).')


def define_checks() -> None:
  """Parse-time flag checks (only when run as a script)."""
  flags.mark_flag_as_required('run')
  cli.check('run', os.path.isdir, '--run must be a bifurcation.py seed '
            'directory')
  cli.check_policies('precisions')
  cli.check('grid', lambda v: v >= 3, '--grid must be >= 3')
  cli.check('radius', lambda v: cli.finite_float(v, '--radius') > 0,
            '--radius must be a finite number > 0')
  cli.check('seed', lambda v: v >= 0, '--seed must be >= 0')


def random_plane(key: jax.Array, dim: int) -> np.ndarray:
  """Two orthonormal directions spanning a uniformly random 2D subspace.

  The span of two independent standard Gaussian vectors is uniformly
  distributed on the Grassmannian (rotation invariance); QR gives an
  orthonormal basis of it.
  """
  g = np.asarray(jax.random.normal(key, (dim, 2)), np.float64)
  q, _ = np.linalg.qr(g)
  return q.T


def neuron_map(w: np.ndarray, b: float, x: np.ndarray, plane: np.ndarray,
               coords: np.ndarray, dtype) -> jax.Array:
  """``min_i |x_i . w' + b'|`` for ``(w', b') = (w, b) + a u + c v``.

  Args:
    w: the neuron's input weights ``(d,)``; b its bias.
    x: the minibatch ``(n, d)``.
    plane: ``(2, d + 1)`` orthonormal directions in (weights, bias) space.
    coords: ``(m, 2)`` plane coordinates ``(a, c)``.
    dtype: the dtype everything is cast to before the evaluation.

  Returns:
    ``(m,)`` the distance of the neuron to its kink over the minibatch.
  """
  theta = jnp.asarray(np.append(w, b), dtype)
  u, v = jnp.asarray(plane, dtype)
  xs = jnp.asarray(x, dtype)

  def one(ac):
    t = theta + ac[0] * u + ac[1] * v
    return jnp.min(jnp.abs(xs @ t[:-1] + t[-1]))

  return jax.jit(jax.vmap(one))(jnp.asarray(coords, dtype))


def centre_note(precision: str, value: float, run_precision: str | None,
                hit_here: bool, finer: bool) -> str:
  """What ``min_i |z_i|`` at the centre (the parting weights) means.

  Args:
    precision: the policy of this map.
    value: its value at the centre.
    run_precision: the policy the bifurcation run trained in.
    hit_here: whether training's kink hit was this neuron's (a first-layer
      hit), i.e. training's forward had an exact zero at these weights.
    finer: whether this map's compute dtype is finer than the run's.
  """
  if not hit_here:
    return ('the kink hit that parted the runs was in a deeper layer; this is '
            'the first-layer neuron that came closest to 0, not a hit')
  if precision == run_precision:
    if value == 0:
      return ('an exact zero, as in the training step: the parting weights '
              f'are in the {precision} zone of this minibatch')
    return ('not an exact zero, although the training step found one at '
            'these very weights (that hit parted the runs): this map '
            'recomputes the neuron alone, one matrix-vector product per grid '
            'point in its own program, whose rounding can differ from that '
            "of the layer's matrix product in the training step; exact "
            'zeros depend on the arithmetic, not only on the weights '
            '(DESIGN.md, section 4)')
  if value == 0:
    return f'an exact zero in {precision} as well'
  if not finer:
    return (f'{precision} is not finer than the run\'s {run_precision}: its '
            'own rounding, not a distance to the kink')
  return (f'the pre-activation in {precision} at the {run_precision} parting '
          f'weights: roughly how far they were from the kink, which '
          f'{run_precision} rounded to exactly 0 in training')


@cli.main
def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  policies = jaxkink.policies_for_program(FLAGS.precisions)
  source = rundir.RunDir.read(FLAGS.run)
  path = source.file('parting_params.npz')
  if not os.path.exists(path):
    raise app.UsageError(f'{path} not found: that run never parted (or is not '
                         'a bifurcation.py seed directory)')
  with open(source.file('summary.json')) as f:
    summary = json.load(f)
  parting = summary.get('parting') or {}
  z = source.load_npz('parting_params.npz', int(summary['parting_iteration'])
                      - 1)
  if z is None:
    raise app.UsageError(f'{path} is not the record of that run\'s parting '
                         'iteration (see the warning above)')
  kernel, bias, batch = z['Dense_0/kernel'], z['Dense_0/bias'], z['batch']
  ds = data.load('mnist', 'train', data_dir=FLAGS.data_dir,
                 source=FLAGS.data_source, order=FLAGS.data_order)
  if source.settings['data']['sha256'] != rundir.array_digest(ds.images,
                                                              ds.labels):
    raise cli.UsageValueError(
        f'the MNIST files found ({ds.source}) are not the data {FLAGS.run} '
        'was trained on; pass the same --data_dir, --data_source and '
        '--data_order')
  x = np.asarray(data.preprocess(jnp.asarray(ds.images[batch]), 'mnist',
                                 normalize=False, flatten=True))
  hit_here = parting.get('layer') == 0
  if hit_here:
    neuron = parting['neuron']
  else:  # the hit was deeper: map the first-layer neuron closest to 0
    neuron = int(np.argmin(np.min(np.abs(x @ kernel + bias), axis=0)))
  w, b = kernel[:, neuron].astype(np.float64), float(bias[neuron])
  plane = random_plane(jax.random.key(FLAGS.seed), w.size + 1)
  axis = np.linspace(-FLAGS.radius, FLAGS.radius, FLAGS.grid)
  # Exactly symmetric, so that an odd grid's middle is exactly 0 (linspace
  # gives -2.6e-23 there for 201 points) and its pixel the parting weights.
  axis = (axis - axis[::-1]) / 2
  coords = np.stack(np.meshgrid(axis, axis, indexing='xy'), -1).reshape(-1, 2)

  run_precision = source.settings.get('precision')
  run_eps = (jnp.finfo(jaxkink.get_policy(run_precision, check=False)
                       .compute_dtype).eps if run_precision else None)
  print(f'{FLAGS.run}: trained in {run_precision}, parted at iteration '
        f"{summary['parting_iteration']}; mapping first-layer neuron {neuron} "
        f'over a plane of half-width {FLAGS.radius:g} around its weights')
  settings = {'source_run': source.digest, 'neuron': neuron,
              'precisions': [p.to_dict() for p in policies],
              'radius': FLAGS.radius, 'grid': FLAGS.grid,
              'seed': FLAGS.seed,
              # Only when not at their defaults (older run directories
              # still resume); the data itself is checked by its digest.
              **data.requested(FLAGS.data_source, FLAGS.data_order)}
  with rundir.RunDir.open(FLAGS.out or source.file('zero_map'),
                          settings) as out_dir:
    out = out_dir.path
    maps, stats = {}, {}
    for policy in policies:
      with policy.scope():
        values = np.asarray(neuron_map(w, b, x, plane, coords,
                                       policy.compute_dtype), np.float64)
      maps[policy.name] = values.reshape(FLAGS.grid, FLAGS.grid)
      line = (f'{policy.name}: exact zeros at {np.mean(values == 0):.2%} of '
              'the grid')
      centre, note = None, None
      if FLAGS.grid % 2:  # the middle point is the parting weights
        centre = float(maps[policy.name][FLAGS.grid // 2,
                                         FLAGS.grid // 2])
        finer = run_eps is not None and bool(
            jnp.finfo(policy.compute_dtype).eps < run_eps)
        note = centre_note(policy.name, centre, run_precision, hit_here,
                           finer)
        line += (f'; at the centre (the parting weights) min_i |z_i| = '
                 f'{centre:g}:\n  {note}')
      else:
        line += ' (an even --grid has no point at the parting weights)'
      stats[policy.name] = {'zero_fraction': float(np.mean(values == 0)),
                            'center_value': centre, 'center_note': note}
      print(line, flush=True)
    out_dir.save_npz('zero_map.npz', 0, axis=axis, **maps)
    out_dir.write_json('summary.json', {
        'run': FLAGS.run, 'neuron': neuron, 'parting': parting,
        'radius': FLAGS.radius, 'grid': FLAGS.grid, 'seed': FLAGS.seed,
        'maps': stats})
    plot(os.path.join(out, 'zero_map.png'), axis, maps, neuron,
         summary.get('parting_iteration'))
  print(f'wrote {out}/zero_map.png')


def plot(path: str, axis: np.ndarray, maps: dict[str, np.ndarray],
         neuron: int, iteration: int | None) -> None:
  plt = rundir.pyplot()

  fig, axes = plt.subplots(1, len(maps), figsize=(5.5 * len(maps), 4.6),
                           squeeze=False)
  # The axes in units of a power of ten named in their labels: with raw
  # values (+-2e-7) matplotlib puts a "1e-7" offset above the axes, over
  # the panel titles.
  exponent = int(np.floor(np.log10(axis[-1])))
  scaled = axis / 10.0 ** exponent
  extent = [scaled[0], scaled[-1], scaled[0], scaled[-1]]
  unit = rf'($\times 10^{{{exponent}}}$)'
  for ax, (name, m) in zip(axes[0], maps.items()):
    cmap = plt.get_cmap('viridis').copy()
    cmap.set_bad('white')
    img = ax.imshow(np.log10(np.where(m > 0, m, np.nan)), origin='lower',
                    extent=extent, cmap=cmap, aspect='equal')
    fig.colorbar(img, ax=ax, label=r'$\log_{10} \min_i |z_i|$')
    ax.set_title(f'{name}: exact zeros (white) {np.mean(m == 0):.1%}')
    ax.set_xlabel(f'direction 1 {unit}')
    ax.set_ylabel(f'direction 2 {unit}')
  fig.suptitle(f'first-layer neuron {neuron} on the minibatch of iteration '
               f'{iteration}, random plane through the weights')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run() -> None:
  """Runs the ``jaxkink-zero-map`` command."""
  define_flags()
  define_checks()
  cli.run(main, __doc__)


if __name__ == '__main__':
  run()
