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

import json
import os
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import jaxkink
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


def parse_kinks(text: str) -> tuple[str, tuple[float, float]]:
  """``'relu:0,1'`` -> ``('relu', (0.0, 1.0))``, with a clear error."""
  kind, sep, values = str(text).partition(':')
  try:
    pair = tuple(float(v) for v in values.split(','))
  except ValueError:
    pair = ()
  if not sep or len(pair) != 2 or kind not in montecarlo.KINDS:
    raise ValueError(f'--kinks={text!r}: expected KIND:V0,V1 with KIND in '
                     f'{", ".join(montecarlo.KINDS)}, e.g. relu:0,1')
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


def run_one(cfg: dict[str, Any], out: str, data_dir: str | None,
            log=logging.info) -> dict[str, Any]:
  """Runs (or resumes) one setting into ``out``; returns its summary."""
  policy = jaxkink.get_policy(cfg['precision'])
  kind, values = parse_kinks(cfg['kinks'])
  dataset = _dataset(cfg['dataset'], data_dir)
  n = len(dataset) if cfg['train_size'] is None else int(cfg['train_size'])
  if not 1 <= n <= len(dataset):
    raise ValueError(f'train_size must be in 1..{len(dataset)}, got {n}')
  model = models.get(cfg['model'], policy=policy,
                     **parse_model_opts(cfg['model_opt']))
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
  config = {**cfg, 'theta_loop': engine.theta_loop, 'data': dataset.describe(), 'num_examples': n,
            'policy': policy.to_dict(), 'model_repr': repr(model)}
  montecarlo.check_resume(out, config)
  rundir.write_json(os.path.join(out, 'environment.json'),
                    rundir.environment())
  log(f'[{os.path.basename(out)}] {policy}; {cfg["model"]} on {n} '
      f'{cfg["dataset"]} examples, {cfg["kinks"]}, M={cfg["samples"]}')
  t0 = time.perf_counter()
  records = montecarlo.run(engine, x, y, cfg['batch_size'], out,
                           progress=lambda s: log(f'[{os.path.basename(out)}]'
                                                  f' {s}'))
  if records is None:  # another process gathers
    return {}
  summary = zones.summarize(records, tau=cfg['tau'],
                            first_layer_only=cfg['first_layer_only'])
  summary['seconds'] = time.perf_counter() - t0
  summary['config'] = {k: cfg[k] for k in RUN_FLAGS}
  rundir.write_json(os.path.join(out, 'summary.json'), summary)
  log(f'[{os.path.basename(out)}] theta in S: '
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


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  preset, runs = _runs_from_flags()
  for run in runs:
    jaxkink.get_policy(run.flags['precision'], check=False)  # name check
    parse_kinks(run.flags['kinks'])
  jaxkink.policies_for_program([r.flags['precision'] for r in runs])
  os.makedirs(FLAGS.out, exist_ok=True)
  rundir.write_json(os.path.join(FLAGS.out, 'flags.json'),
                    {'preset': FLAGS.preset,
                     'runs': [{'label': r.label, **r.flags} for r in runs]})
  summaries = []
  for run in runs:
    summaries.append(run_one(run.flags, os.path.join(FLAGS.out, run.label),
                             FLAGS.data_dir))
  if jax.process_index() != 0:
    return
  title = (volume_presets.PRESETS[FLAGS.preset].description if FLAGS.preset
           else 'volume')
  table = [f'# {title}', '', zones.TABLE_HEADER]
  table += [zones.format_summary(r.label, s) for r, s in zip(runs, summaries)]
  rundir.write_text(os.path.join(FLAGS.out, 'summary.md'),
                    '\n'.join(table) + '\n')
  rundir.write_text(os.path.join(FLAGS.out, 'summaries.json'),
                    json.dumps({r.label: s for r, s in zip(runs, summaries)},
                               indent=2, default=str) + '\n')
  plot(preset, runs, summaries, FLAGS.out)
  print('\n'.join(table))
  print(f'\nwritten to {FLAGS.out}/ (summary.md, volume.png, one directory '
        'per run)')


if __name__ == '__main__':
  define_flags()
  app.run(main)
