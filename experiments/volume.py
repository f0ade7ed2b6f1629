r"""Monte Carlo volume of the bifurcation zone (ReLU'(0) Table 1, TMLR Table 2).

Draws ``--samples`` weight vectors, runs every minibatch of the data set
through the model under two kink settings, and reports the proportion of
weights whose gradients differ on some minibatch, the proportion of impacted
(weights, minibatch) pairs, with confidence intervals, and the size of the
differences. A run directory holds the flags, the precision policy, the
versions, the raw per-chunk records, ``summary.json``, ``summary.md`` and the
plots; a re-run with the same flags resumes where it stopped.

One run::

  python experiments/volume.py --model=mlp --kinks=relu:0,1 \
      --precision=float32 --samples=100 --data_dir=../shared/data \
      --out=runs/volume_f32

A paper preset (several runs, one plot), at reduced size on the bundled
MNIST sample::

  python experiments/volume.py --preset=table1 --samples=16 --out=runs/table1

Flags given on the command line override the preset's values for every run
of the preset (e.g. ``--samples``); ``--precision`` restricts the preset to
those precisions.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from typing import Any, NamedTuple, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import jaxkink
from jaxkink import cli
from jaxkink import data as data_lib
from jaxkink import models
from jaxkink import montecarlo
from jaxkink import rundir
from jaxkink import zones

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import volume_presets  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS

# Flags that a run takes from a preset unless given on the command line.
RUN_FLAGS = ('model', 'model_opt', 'kinks', 'legacy_relu_grad', 'precision',
             'samples', 'chunk', 'batch_size', 'dataset', 'train_size',
             'normalize', 'screen', 'seed', 'tau', 'first_layer_only',
             'batch_norm_mode', 'theta_loop')


def define_flags() -> None:
  """Defines the script's flags (only when run as a script)."""
  flags.DEFINE_enum('preset', None, sorted(volume_presets.PRESETS),
                    'A paper experiment (several runs); see volume_presets.py.')
  flags.DEFINE_string('model', 'mlp', f'Model: {", ".join(models.names())}.')
  flags.DEFINE_multi_string('model_opt', [], 'Model option key=value, e.g. '
                            'widths=256,256,10 or batch_norm=true; repeatable.')
  flags.DEFINE_string('kinks', 'relu:0,1', 'The two kink settings compared: '
                      'KIND:V0,V1 with KIND in relu, relu6, leaky_relu, pool '
                      '(pool: 0 native, 1 minimal).')
  flags.DEFINE_bool('legacy_relu_grad', False, "The 2021 reference code's "
                    'assigning ReLU backward.')
  flags.DEFINE_list('precision', ['float32'], 'Precision policies, one run '
                    'each: ' + ', '.join(jaxkink.POLICIES) + '.')
  flags.DEFINE_integer('samples', 100, 'M, the number of weight samples.')
  flags.DEFINE_integer('chunk', 16, 'Weight samples per device per program '
                       'call (memory: chunk x batch x activations).')
  flags.DEFINE_integer('batch_size', 256, 'Minibatch size (the last partial '
                       'minibatch is kept, as PyTorch DataLoader does).')
  flags.DEFINE_string('dataset', 'mnist', 'Dataset: ' +
                      ', '.join(data_lib.DATASETS) + '.')
  flags.DEFINE_string('data_dir', None, 'Directory with the native dataset '
                      f'files (default ${data_lib.ENV_VAR}, else the bundled '
                      'MNIST sample).')
  flags.DEFINE_integer('train_size', None, 'Use the first N training '
                       'examples (default: all).')
  flags.DEFINE_bool('normalize', False, 'Normalise inputs with the '
                    "dataset's mean/std (False: ToTensor's [0, 1] only, as "
                    "the ReLU'(0) volume notebook).")
  flags.DEFINE_bool('screen', True, 'Skip the backward passes of chunks '
                    'whose forward pass hit no kink (exact).')
  flags.DEFINE_integer('seed', 0, 'Seed of the weight samples.')
  flags.DEFINE_float('tau', 0.0, 'Threshold on the L1 difference D (TMLR '
                     'Criteria 1); 0: any exact difference.')
  flags.DEFINE_bool('first_layer_only', False, "Decide 'differs' on the "
                    "first layer's kernel gradient (the reference notebook).")
  flags.DEFINE_enum('batch_norm_mode', 'batch', ['batch', 'running'],
                    'Batch norm statistics: the minibatch\'s (PyTorch '
                    'training mode) or the running averages.')
  flags.DEFINE_enum('theta_loop', 'auto', ['auto', 'vmap', 'map'],
                    'Thetas of a chunk: vmapped (GPUs) or looped inside the '
                    "program (CPUs); 'auto' picks by backend.")
  flags.DEFINE_string('out', 'runs/volume', 'Run directory.')
  cli.check_policies('precision')
  cli.check_positive(('samples', 'chunk', 'batch_size', 'train_size'))
  cli.check('kinks', parse_kinks, 'see --helpfull')
  cli.check('model', lambda v: models.options(v) is not None,
            'see --helpfull')
  cli.check_choice('dataset', data_lib.DATASETS)
  cli.check('model_opt', lambda v: parse_model_opts(v) is not None,
            'expected key=value')
  cli.check('tau', lambda v: cli.finite_float(v, '--tau') >= 0,
            '--tau must be a finite number >= 0')


def parse_kinks(text: str) -> tuple[str, tuple[float, float]]:
  """``'relu:0,1'`` -> ``('relu', (0.0, 1.0))``, with a clear error."""
  kind, sep, values = str(text).partition(':')
  try:
    pair = cli.finite_floats(values.split(','), f'--kinks={text!r}')
  except ValueError:
    pair = ()
  if not sep or len(pair) != 2 or kind not in montecarlo.KINDS:
    raise ValueError(f'--kinks={text!r}: expected KIND:V0,V1 with KIND in '
                     f'{", ".join(montecarlo.KINDS)} and finite numbers '
                     'V0, V1, e.g. relu:0,1')
  return kind, pair


def parse_model_opts(items: Sequence[str]) -> dict[str, str]:
  opts = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep or not key:
      raise ValueError(f'--model_opt={item!r}: expected key=value')
    opts[key.strip()] = value
  return opts


def theta_loop(choice: str) -> str:
  """``'auto'``: ``'map'`` on CPUs (plain matrix products are faster
  there), ``'vmap'`` elsewhere."""
  if choice == 'auto':
    return 'map' if jax.default_backend() == 'cpu' else 'vmap'
  return choice


_DATA_CACHE: dict[Any, Any] = {}


def _dataset(name: str, data_dir: str | None):
  key = (name, data_dir)
  if key not in _DATA_CACHE:
    _DATA_CACHE[key] = data_lib.load(name, 'train', data_dir=data_dir)
  return _DATA_CACHE[key]


class Prepared(NamedTuple):
  """One run, ready to open its run directory and compute."""
  engine: montecarlo.Engine
  x: jax.Array
  y: jax.Array
  settings: dict[str, Any]
  source: dict[str, Any]


def prepare(cfg: dict[str, Any], data_dir: str | None) -> Prepared:
  """The engine, inputs and run-directory settings of one run.

  The settings are every value that can change a record: the run's flags
  (after the preset), the theta loop in force, the data (its description
  and a hash of the examples used), the precision policy and the model.

  Raises:
    cli.UsageValueError: settings that do not fit the data or the model.
  """
  policy = jaxkink.get_policy(cfg['precision'])
  kind, values = parse_kinks(cfg['kinks'])
  dataset = _dataset(cfg['dataset'], data_dir)
  n = len(dataset) if cfg['train_size'] is None else int(cfg['train_size'])
  if not 1 <= n <= len(dataset):
    raise cli.UsageValueError(
        f'--train_size must be in 1..{len(dataset)} (the {cfg["dataset"]} '
        f'examples in {dataset.source}), got {n}')
  if not 1 <= cfg['batch_size'] <= n:
    raise cli.UsageValueError(
        f'--batch_size must be in 1..{n} (the examples used), got '
        f'{cfg["batch_size"]}')
  try:
    model = models.get(cfg['model'], policy=policy,
                       **parse_model_opts(cfg['model_opt']))
  except (TypeError, ValueError) as e:
    raise cli.UsageValueError(f'--model={cfg["model"]} --model_opt='
                              f'{",".join(cfg["model_opt"])}: {e}') from e
  x = data_lib.preprocess(dataset.images[:n], dataset.info,
                          normalize=cfg['normalize'],
                          dtype=policy.input_dtype)
  y = jnp.asarray(dataset.labels[:n])
  pair = montecarlo.kink_pair(kind, values,
                              legacy_relu_grad=cfg['legacy_relu_grad'])
  engine = montecarlo.Engine(model, policy, pair, samples=cfg['samples'],
                             chunk=cfg['chunk'], seed=cfg['seed'],
                             screen=cfg['screen'],
                             batch_norm_mode=cfg['batch_norm_mode'],
                             theta_loop=theta_loop(cfg['theta_loop']))
  described = dataset.describe()
  source = {'source': described.pop('source')}  # where, not what: recorded
  settings = {'flags': {k: cfg[k] for k in RUN_FLAGS},
              'theta_loop': engine.theta_loop,
              'data': {**described, 'num_examples_used': n,
                       'sha256': _data_digest(dataset, n)},
              'policy': policy.to_dict(), 'model': repr(model)}
  return Prepared(engine, x, y, settings, source)


def _data_digest(dataset, n: int) -> str:
  key = (id(dataset), n)
  if key not in _DIGESTS:
    _DIGESTS[key] = rundir.array_digest(dataset.images[:n],
                                        dataset.labels[:n])
  return _DIGESTS[key]


_DIGESTS: dict[Any, str] = {}


def run_one(cfg: dict[str, Any], prepared: Prepared, run: rundir.RunDir,
            log=logging.info) -> dict[str, Any]:
  """Runs (or resumes) one prepared setting into ``run``; returns its
  summary (empty on processes other than 0)."""
  name = os.path.basename(run.path)
  run.write_json('environment.json', rundir.environment())
  run.write_json('data.json', {**prepared.settings['data'],
                               **prepared.source})
  engine = prepared.engine
  log(f'[{name}] {engine.policy}; {cfg["model"]} on '
      f'{prepared.settings["data"]["num_examples_used"]} {cfg["dataset"]} '
      f'examples, {cfg["kinks"]}, M={cfg["samples"]}')
  t0 = time.perf_counter()
  records = montecarlo.run(engine, prepared.x, prepared.y, cfg['batch_size'],
                           run, progress=lambda s: log(f'[{name}] {s}'))
  if records is None:  # another process gathers
    return {}
  summary = zones.summarize(records, tau=cfg['tau'],
                            first_layer_only=cfg['first_layer_only'])
  summary['seconds'] = time.perf_counter() - t0
  summary['config'] = {k: cfg[k] for k in RUN_FLAGS}
  run.write_json('summary.json', summary)
  log(f'[{name}] theta in S: '
      f'{100 * summary["theta_in_zone"]["p"]:.1f}% '
      f'+- {100 * summary["theta_in_zone"]["margin"]:.1f}; impacted pairs '
      f'{100 * summary["impacted_pairs"]["p"]:.3f}%')
  return summary


def plot(preset: volume_presets.Preset | None, runs, summaries,
         out: str) -> None:
  """The preset's figure: bars, a sweep, or histograms of D."""
  plt = rundir.pyplot()
  kind = preset.plot if preset else 'bars'
  if kind == 'histogram':
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.5),
                             squeeze=False)
    for ax, run in zip(axes[0], runs):
      rec = montecarlo.load_records(os.path.join(out, run.label),
                                    -(-run.flags['samples']
                                      // run.flags['chunk']))
      d = np.asarray(rec.l1, np.float64).ravel()
      zero = np.mean(d == 0)
      pos = d[d > 0]
      if pos.size:
        ax.hist(np.log10(pos), bins=50)
      ax.set_title(f'{run.label}\nD = 0 in {100 * zero:.1f}% of pairs',
                   fontsize=9)
      ax.set_xlabel('log10 D (L1 backprop variation), D > 0')
    axes[0][0].set_ylabel('(theta, minibatch) pairs')
  elif kind == 'sweep':
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for p in volume_presets.PRECISIONS:
      pts = [(r.x, s['theta_in_zone']) for r, s in zip(runs, summaries)
             if r.flags['precision'] == p]
      if pts:
        xs = [a for a, _ in pts]
        ax.errorbar(xs, [100 * z['p'] for _, z in pts],
                    yerr=[100 * z['margin'] for _, z in pts], marker='o',
                    capsize=3, label=p)
    ax.set_xlabel(preset.x)
    ax.set_ylabel('theta in S (%)')
    ax.legend()
  else:
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(runs)), 3.5))
    ps = [100 * s['theta_in_zone']['p'] for s in summaries]
    err = [100 * s['theta_in_zone']['margin'] for s in summaries]
    ax.bar(range(len(runs)), ps, yerr=err, capsize=3)
    ax.set_xticks(range(len(runs)), [r.label for r in runs], rotation=45,
                  ha='right', fontsize=8)
    ax.set_ylabel('theta in S (%), 95% Hoeffding')
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'volume.png'), dpi=120)
  plt.close(fig)


def _runs_from_flags() -> tuple[volume_presets.Preset | None, list]:
  given = {name for name in RUN_FLAGS if FLAGS[name].present}
  current = {name: FLAGS[name].value for name in RUN_FLAGS}
  if FLAGS.preset is None:
    return None, [volume_presets.Run(
        p, {**current, 'precision': p}) for p in FLAGS.precision]
  preset = volume_presets.PRESETS[FLAGS.preset]
  runs = []
  for run in preset.runs:
    if 'precision' in given and run.flags['precision'] not in FLAGS.precision:
      continue
    merged = {**current, **run.flags,
              **{k: current[k] for k in given if k != 'precision'}}
    runs.append(volume_presets.Run(run.label, merged, run.x))
  if not runs:
    raise app.UsageError(f'--precision={",".join(FLAGS.precision)} leaves no '
                         f'run of preset {FLAGS.preset}')
  return preset, runs


@cli.main
def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  preset, runs = _runs_from_flags()
  for run in runs:
    jaxkink.get_policy(run.flags['precision'], check=False)  # name check
    parse_kinks(run.flags['kinks'])
  jaxkink.policies_for_program([r.flags['precision'] for r in runs])
  prepared = [prepare(r.flags, FLAGS.data_dir) for r in runs]
  top = {'preset': FLAGS.preset,
         'runs': [{'label': r.label, **p.settings}
                  for r, p in zip(runs, prepared)]}
  paths = [os.path.join(FLAGS.out, r.label) for r in runs]
  # Every directory is checked before any is written.
  for path, settings in [(FLAGS.out, top)] + [
      (p, q.settings) for p, q in zip(paths, prepared)]:
    rundir.RunDir.check(path, settings)
  with contextlib.ExitStack() as stack:
    out = stack.enter_context(rundir.RunDir.open(FLAGS.out, top))
    dirs = [stack.enter_context(rundir.RunDir.open(p, q.settings))
            for p, q in zip(paths, prepared)]
    if jax.process_index() == 0:
      out.write_json('flags.json', {
          'preset': FLAGS.preset,
          'runs': [{'label': r.label, **r.flags} for r in runs]})
    summaries = [run_one(r.flags, p, d)
                 for r, p, d in zip(runs, prepared, dirs)]
    if jax.process_index() != 0:
      return
    title = (volume_presets.PRESETS[FLAGS.preset].description
             if FLAGS.preset else 'volume')
    table = [f'# {title}', '', zones.TABLE_HEADER]
    table += [zones.format_summary(r.label, s)
              for r, s in zip(runs, summaries)]
    out.write_text('summary.md', '\n'.join(table) + '\n')
    out.write_text('summaries.json', json.dumps(
        {r.label: s for r, s in zip(runs, summaries)}, indent=2,
        default=str) + '\n')
    plot(preset, runs, summaries, FLAGS.out)
  print('\n'.join(table))
  print(f'\nwritten to {FLAGS.out}/ (summary.md, volume.png, one directory '
        'per run)')


if __name__ == '__main__':
  define_flags()
  app.run(main)
