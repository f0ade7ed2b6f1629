r"""The bifurcation experiment (Bertoin et al., NeurIPS 2021, Figure 1).

Three copies of an MLP start from the same weights (PyTorch's default
initialisation) and train with plain SGD on the same MNIST minibatches, in
lockstep inside one jitted, vmapped step: ReLU'(0) = s0, ReLU'(0) = s1, and
a second s0 copy as a control. The L1 distance between the s0 and s1 weights
stays exactly 0 until a hidden pre-activation is exactly 0 on the current
minibatch; the control's distance stays 0 throughout.

Setting of the reference notebook (``deel-ai/relu-prime``,
``introduction_experiment/expeSurprise.ipynb``): 784-2000-128-10, minibatch
128 in file order (no shuffling), inputs scaled to [0, 1] only, mean
cross-entropy, SGD with learning rate drawn uniformly in [0.01, 0.012].
``--activation=relu6`` gives Figure 8 (784-4000-256-10, both ReLU6 kinks at
s0 vs s1).

Run::

  jaxkink-bifurcation --data_dir=../shared/data \
      --precision=float32 --steps=3000 --seeds=0,1,2,3,4 --out=runs/bif32

Each seed writes ``<out>/seed_<k>/``: ``records.npz`` (per step: distances,
losses, min |pre-activation| and kink hits per layer and member),
``summary.json`` (the parting step and which layer / sample / neuron hit the
kink), ``parting_params.npz`` (the weights just before the parting update,
for ``zero_map.py``), ``parting_weights/`` (the same weights as an orbax
checkpoint of ``{'params': ...}``; see ``jaxkink.weights``),
``bifurcation.png``, and a checkpoint from which an interrupted run resumes
to the same numbers. ``<out>/summary.json`` and
``<out>/parting.png`` gather the seeds.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import jaxkink
from jaxkink import cli
from jaxkink import data
from jaxkink import lockstep
from jaxkink import models
from jaxkink import rundir
from jaxkink import weights
from jaxkink.experiments import progress

FLAGS = flags.FLAGS


MEMBERS = ('s0', 's1', 's0 control')
BATCH_SIZE = 128
# One epoch of MNIST's 60000 training images in minibatches of 128:
# minibatch_order drops the last partial batch (96 images), so 468 steps.
# (The reference notebook's DataLoader keeps it: its epoch is 469.)
EPOCH_STEPS = 60000 // BATCH_SIZE
DEFAULT_WIDTHS = {'relu': (2000, 128, 10), 'relu6': (4000, 256, 10)}


def learning_rate(seed: int) -> float:
  """The reference code's step: ``0.01 * (U[0, 1) / 5 + 1)``, seeded."""
  u = jax.random.uniform(jax.random.fold_in(jax.random.key(seed), 1))
  return float(0.01 * (u / 5 + 1))


def init_params(model, seed: int, dim: int, policy) -> Any:
  params = model.init(jax.random.fold_in(jax.random.key(seed), 0),
                      jnp.zeros((1, dim)), jaxkink.Kinks())['params']
  return policy.cast_params(params)


def minibatch_order(num_examples: int, batch_size: int, steps: int,
                    seed: int, shuffle: bool) -> np.ndarray:
  """Example indices per step ``(steps, batch_size)``, epoch after epoch."""
  per_epoch = num_examples // batch_size
  if per_epoch == 0:
    raise app.UsageError(f'batch size {batch_size} exceeds the {num_examples} '
                         'training examples')
  rows = []
  for epoch in range(-(-steps // per_epoch)):
    order = data.epoch_order(num_examples, seed if shuffle else None, epoch)
    rows.append(order[:per_epoch * batch_size].reshape(per_epoch, batch_size))
  return np.concatenate(rows)[:steps]


def named_arrays(params) -> dict[str, np.ndarray]:
  """``{'Dense_0/kernel': array, ...}`` for saving a parameter tree."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {'/'.join(str(k.key) for k in path): np.asarray(a)
          for path, a in flat}


def _checkpoint_arrays(step: int, params, records) -> dict[str, Any]:
  arrays = {f'param_{i}': np.asarray(a)
            for i, a in enumerate(jax.tree.leaves(params))}
  arrays.update({f'record_{k}': v for k, v in records.items()})
  return {'step': np.int64(step), **arrays}


def _restore(arrays: dict[str, np.ndarray], params):
  """``(step, params, records)`` from a checkpoint's arrays (raises
  ValueError if they do not fit ``params``' tree)."""
  leaves, treedef = jax.tree.flatten(params)
  try:
    restored = [arrays[f'param_{i}'] for i in range(len(leaves))]
    step = int(arrays['step'])
  except KeyError as e:
    raise ValueError(f'lacks {e}') from None
  bad = [i for i, (a, b) in enumerate(zip(leaves, restored))
         if a.shape != b.shape or a.dtype != b.dtype]
  records = {k[len('record_'):]: v for k, v in arrays.items()
             if k.startswith('record_')}
  if bad or any(len(v) != step for v in records.values()):
    raise ValueError("shapes differ from the run's parameters or steps")
  return step, jax.tree.unflatten(treedef, [jnp.asarray(a) for a in restored]
                                  ), records


def run_seed(seed: int, run: rundir.RunDir, *, images, labels, model, policy,
             activation: str, kink_values: Sequence[float], steps: int,
             batch_size: int, lr: float | None, shuffle: bool,
             checkpoint_every: int) -> dict[str, Any]:
  """Trains the three copies for one seed into ``run``; returns the seed's
  summary. Resumes from the newest good checkpoint (the newest two are
  kept; a damaged one is moved aside with a warning)."""
  lr = learning_rate(seed) if lr is None else lr
  order = minibatch_order(len(labels), batch_size, steps, seed, shuffle)
  params = lockstep.replicate(init_params(model, seed, images.shape[1],
                                          policy), len(MEMBERS))
  s0, s1 = kink_values
  kinks = lockstep.kinks_for(activation, jnp.asarray([s0, s1, s0],
                                                     policy.compute_dtype))
  step_fn = lockstep.make_step(model, policy, activation=activation)

  start, records = 0, {}
  restored = []

  def fits(arrays):
    try:
      restored.append(_restore(arrays, params))
    except ValueError as e:
      return str(e)
    return None
  if run.latest_checkpoint(fits) is not None:
    start, params, records = restored[-1]
    logging.info('seed %d: resuming at step %d', seed, start)
  chunks = {k: [v] for k, v in records.items()}
  parting = _parting(records)
  bar = progress.Bar(steps, f'seed {seed}', 'step', initial=start)
  for k in range(start, steps):
    batch = order[k]
    x, y = images[batch], labels[batch]
    before = params
    params, rec = step_fn(params, kinks, x, y, lr)
    rec = jax.tree.map(np.asarray, rec._asdict())
    for key, v in rec.items():
      chunks.setdefault(key, []).append(v[None])
    if parting is None and rec['l1_to_first'][1] > 0:
      parting = k
      parting_params = jax.tree.map(lambda a: a[0], before)
      run.save_npz('parting_params.npz', k, step=k, batch=batch,
                   **named_arrays(parting_params))
      # The same weights for orbax users (zero_map reads the .npz).
      weights.save_tree(run, weights.PARTING, {'params': parting_params})
    done = k + 1
    if done % checkpoint_every == 0 or done == steps:
      records = {key: np.concatenate(v) for key, v in chunks.items()}
      chunks = {key: [v] for key, v in records.items()}
      run.save_checkpoint(done, **_checkpoint_arrays(done, params, records))
    bar.update(1, f'|theta_s0 - theta_s1|_1 = {rec["l1_to_first"][1]:.3g}, '
                  f'control {rec["l1_to_first"][2]:.3g}')
  bar.close()
  records = {key: np.concatenate(v) for key, v in chunks.items()}
  run.save_npz('records.npz', steps, **records)
  summary = _summarise(records, seed=seed, lr=lr, order=order)
  run.write_json('summary.json', summary)
  plot_seed(run.file('bifurcation.png'), records, summary, activation)
  return summary


def _parting(records: dict[str, np.ndarray]) -> int | None:
  if not records:
    return None
  parted = np.flatnonzero(records['l1_to_first'][:, 1] > 0)
  return int(parted[0]) if parted.size else None


def _summarise(records, *, seed: int, lr: float,
               order: np.ndarray) -> dict[str, Any]:
  parting = _parting(records)
  steps = len(records['loss'])
  summary = {
      'seed': seed, 'lr': lr, 'steps': steps,
      'parting_iteration': None if parting is None else parting + 1,
      'control_max_l1': float(records['l1_to_first'][:, 2].max()),
      'final_l1': float(records['l1_to_first'][-1, 1]),
      'steps_with_hits': int(np.sum(records['hits'][:, 0].sum(axis=1) > 0)),
      'min_distance_overall': records['min_distance'][:, 0].min(
          axis=0).tolist(),
  }
  if parting is not None:
    hits = records['hits'][parting, 0]
    layer = int(np.flatnonzero(hits)[0]) if hits.any() else None
    summary['parting'] = {
        'hits_per_layer': hits.tolist(),
        'layer': layer,
        'sample_in_batch': (int(records['closest'][parting, 0, layer, 0])
                            if layer is not None else None),
        'neuron': (int(records['closest'][parting, 0, layer, 1])
                   if layer is not None else None),
    }
    if layer is not None:
      summary['parting']['example_index'] = int(
          order[parting][summary['parting']['sample_in_batch']])
  return summary


def plot_seed(path: str, records, summary, activation: str) -> None:
  """Figure 1 (left, center): L1 distances and min distance to the kink."""
  plt = rundir.pyplot()

  steps = np.arange(1, len(records['loss']) + 1)
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
  l1 = records['l1_to_first']
  ax1.plot(steps, l1[:, 1], label=r'$\|\theta_{k,s_0} - \theta_{k,s_1}\|_1$')
  ax1.plot(steps, l1[:, 2], ls='--',
           label=r'control $\|\theta_{k,s_0} - \tilde\theta_{k,s_0}\|_1$'
           f' (max {l1[:, 2].max():g})')
  # Linear around 0 so that the exact zeros before the parting show.
  ax1.set_yscale('symlog', linthresh=1e-8)
  ax1.set_ylim(bottom=0)
  kink = 'the kink' if activation == 'relu' else 'a kink (0 or 6)'
  dist = records['min_distance'][:, 0]
  for layer in range(dist.shape[1]):
    d = dist[:, layer]
    ax2.semilogy(steps, np.where(d > 0, d, np.nan), lw=0.8,
                 label=f'hidden layer {layer + 1}')
    zero = steps[d == 0]
    ax2.plot(zero, np.full(zero.shape, np.nanmin(np.where(dist > 0, dist,
                                                          np.nan)) / 10),
             'v', ms=6, label=f'layer {layer + 1}: exactly on {kink}'
             if zero.size else None)
  parting = summary['parting_iteration']
  for ax in (ax1, ax2):
    if parting is not None:
      ax.axvline(parting, color='red', lw=0.8, ls='--',
                 label=f'runs part at iteration {parting}')
    ax.set_xlabel('iteration')
    ax.legend(fontsize=8)
  ax1.set_title(f'weight distance (seed {summary["seed"]}, lr '
                f'{summary["lr"]:.5f})')
  ax2.set_title(f'min distance of a pre-activation to {kink} (s0 run)')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_partings(path: str, summaries: Sequence[dict[str, Any]],
                  steps: int) -> None:
  """The parting iteration of every seed (never = beyond the last step)."""
  plt = rundir.pyplot()

  fig, ax = plt.subplots(figsize=(6, 3))
  seeds = [s['seed'] for s in summaries]
  parts = [np.nan if s['parting_iteration'] is None else s['parting_iteration']
           for s in summaries]
  ax.bar(np.arange(len(seeds)), np.nan_to_num(parts, nan=steps),
         color=['C0' if p == p else 'lightgray' for p in parts])
  ax.set_xticks(np.arange(len(seeds)), [str(s) for s in seeds])
  ax.set_xlabel('seed')
  ax.set_ylabel('parting iteration (gray: none)')
  ax.set_title(f'first iteration where the s0 and s1 runs differ ({steps} '
               'steps)')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def define_flags() -> None:
  """Defines the script's flags (only when it runs as a script, so that tests
  can import it beside other experiments)."""
  flags.DEFINE_string('out', 'runs/bifurcation', 'Run directory.')
  flags.DEFINE_string('precision', 'float32',
                      'Precision policy (float32, float64, ...).')
  flags.DEFINE_enum('activation', 'relu', ['relu', 'relu6'],
                    'Hidden activation.')
  flags.DEFINE_list('widths', None, 'Layer widths after the input, e.g. '
                    '2000,128,10 (default: 2000,128,10 for relu, '
                    '4000,256,10 for relu6).')
  flags.DEFINE_list('kink_values', ['0', '1'],
                    'The two kink values s0,s1 (the control is s0).')
  flags.DEFINE_integer('steps', EPOCH_STEPS, 'SGD iterations. The default '
                       'is one epoch of full MNIST at --batch_size=128: '
                       '60000 // 128 = 468 steps, as the last partial batch '
                       '(96 images) is dropped (the reference notebook keeps '
                       'it: 469). On the bundled 2000-image sample an epoch '
                       'is 15 steps; more steps continue epoch after epoch.')
  flags.DEFINE_integer('batch_size', BATCH_SIZE, 'Minibatch size.')
  flags.DEFINE_list('seeds', ['0'], 'Seeds (initialisation and lr).')
  flags.DEFINE_float('lr', None, 'Step size; default: drawn uniformly in '
                     '[0.01, 0.012] from the seed, as the reference code.')
  flags.DEFINE_boolean('shuffle', False, 'Shuffle each epoch (the reference '
                       'code visits the file order).')
  flags.DEFINE_string('data_dir', None, 'MNIST directory (default '
                      '$JAXKINK_DATA_DIR, else the bundled sample; with '
                      '--data_source=tfds: the tensorflow-datasets data '
                      'directory).')
  cli.define_data_flags()
  flags.DEFINE_integer('checkpoint_every', 250,
                       'Steps between checkpoints (resume points).')
  cli.check_policies('precision')
  cli.check('widths', lambda v: cli.positive_ints(v, '--widths'),
            'integers >= 1')
  cli.check('kink_values',
            lambda v: cli.finite_floats(v, '--kink_values', count=2),
            'two finite numbers s0,s1')
  cli.check_positive(('steps', 'batch_size', 'checkpoint_every'))
  cli.check('seeds', _seed_list, 'integers >= 0')
  cli.check('lr', lambda v: cli.finite_float(v, '--lr') > 0,
            '--lr must be a finite number > 0')


def _seed_list(values) -> list[int]:
  try:
    seeds = [int(v) for v in values]
  except ValueError:
    raise ValueError(f'--seeds: {values} are not integers') from None
  if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
    raise ValueError(f'--seeds must be distinct integers >= 0, got {values}')
  return seeds


@cli.main
def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  policy, = jaxkink.policies_for_program([FLAGS.precision])
  widths = tuple(int(w) for w in (FLAGS.widths or
                                  DEFAULT_WIDTHS[FLAGS.activation]))
  kink_values = [float(v) for v in FLAGS.kink_values]
  seeds = _seed_list(FLAGS.seeds)

  ds = data.load('mnist', 'train', data_dir=FLAGS.data_dir,
                 source=FLAGS.data_source, order=FLAGS.data_order)
  if FLAGS.batch_size > len(ds):
    raise app.UsageError(f'--batch_size={FLAGS.batch_size} exceeds the '
                         f'{len(ds)} training examples')
  logging.info('MNIST train: %d examples from %s', len(ds), ds.source)
  logging.info('precision policy: %s', policy)
  images = data.preprocess(jnp.asarray(ds.images), 'mnist', normalize=False,
                           flatten=True, dtype=policy.input_dtype)
  labels = jnp.asarray(ds.labels)
  model = models.MLP(widths=widths, activation=FLAGS.activation,
                     dtype=policy.compute_dtype,
                     param_dtype=policy.param_dtype,
                     precision=policy.jax_precision)

  out = FLAGS.out
  described = ds.describe()
  source = described.pop('source')  # where, not what: not compared
  flag_values = {'precision': policy.name, 'activation': FLAGS.activation,
                 'widths': widths, 'kink_values': kink_values,
                 'steps': FLAGS.steps, 'batch_size': FLAGS.batch_size,
                 'seeds': seeds, 'lr': FLAGS.lr, 'shuffle': FLAGS.shuffle,
                 # Only when not at their defaults (older run directories
                 # still resume).
                 **data.requested(FLAGS.data_source, FLAGS.data_order)}
  common = {**{k: v for k, v in flag_values.items() if k != 'seeds'},
            'data': {**described, 'sha256': rundir.array_digest(
                ds.images, ds.labels)},
            'policy': policy.to_dict(), 'model': repr(model)}
  top = {**common, 'seeds': seeds}
  seed_dirs = {seed: (os.path.join(out, f'seed_{seed}'),
                      {**common, 'seed': seed}) for seed in seeds}
  # Every directory is checked before any is written.
  rundir.RunDir.check(out, top)
  for path, settings in seed_dirs.values():
    rundir.RunDir.check(path, settings)
  summaries = []
  with rundir.RunDir.open(out, top) as run, policy.scope():
    run.write_json('flags.json', {**flag_values,
                                  'data': {**described, 'source': source}})
    run.write_json('environment.json', rundir.environment())
    run.write_json('policy.json', policy.to_dict())
    for seed in seeds:
      with rundir.RunDir.open(*seed_dirs[seed]) as seed_run:
        summaries.append(run_seed(
            seed, seed_run, images=images, labels=labels, model=model,
            policy=policy, activation=FLAGS.activation,
            kink_values=kink_values, steps=FLAGS.steps,
            batch_size=FLAGS.batch_size, lr=FLAGS.lr, shuffle=FLAGS.shuffle,
            checkpoint_every=FLAGS.checkpoint_every))
      s = summaries[-1]
      where = s.get('parting', {})
      print(f'seed {seed}: parting iteration {s["parting_iteration"]}'
            f' (layer {where.get("layer")}, sample '
            f'{where.get("sample_in_batch")}, neuron {where.get("neuron")});'
            f' control max L1 {s["control_max_l1"]:g}', flush=True)
    parts = [s['parting_iteration'] for s in summaries]
    run.write_json('summary.json', {
        'parting_iterations': parts,
        'parted': sum(p is not None for p in parts), 'seeds': len(parts),
        'control_max_l1': max(s['control_max_l1'] for s in summaries),
        'per_seed': summaries})
    plot_partings(run.file('parting.png'), summaries, FLAGS.steps)
  print(json.dumps({'parting_iterations': parts}))


def run() -> None:
  """Runs the ``jaxkink-bifurcation`` command."""
  define_flags()
  cli.run(main, __doc__)


if __name__ == '__main__':
  run()
