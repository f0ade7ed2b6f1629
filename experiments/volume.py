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
  # Keyed by the directory in force ($JAXKINK_DATA_DIR when data_dir is
  # None), so that a change of the environment is not served stale data.
  key = (name, data_lib.resolve_data_dir(data_dir))
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


def run_header(cfg: dict[str, Any], prepared: Prepared,
               summary: dict[str, Any]) -> dict[str, Any]:
  """What a reader needs to trust one run's numbers, from its true settings
  (the prepared engine and data, and the records' shape): one row of the
  summary's settings table."""
  engine, data = prepared.engine, prepared.settings['data']
  n, batch = data['num_examples_used'], int(cfg['batch_size'])
  last = n - (-(-n // batch) - 1) * batch
  return {
      'model': cfg['model'],
      'init': getattr(engine.model, 'init_scheme', None),
      'kinks': cfg['kinks'],
      'rule': ('assigns the kink value (legacy_relu_grad)'
               if engine.pair.legacy_relu_grad else 'kink value x upstream'),
      'test': ("first layer's kernel" if cfg['first_layer_only']
               else 'full gradient'),
      'samples': int(summary['samples']),
      'minibatches': int(summary['minibatches']),
      'batch_size': batch, 'last_batch': last,
      'examples': n, 'dataset_examples': data['num_examples'],
      'dataset': f'{data["name"]} {data["split"]}',
      'normalize': bool(cfg['normalize']),
      'source': prepared.source['source'],
      'sample': prepared.source['source'].startswith('sample:'),
      'policy': str(engine.policy), 'theta_loop': engine.theta_loop,
      'seed': int(cfg['seed']),
  }


def _settings_lines(headers: Sequence[dict[str, Any]],
                    env: dict[str, Any]) -> list[str]:
  lines = ['Settings (from each run\'s prepared engine, data and records):',
           '']
  for source in dict.fromkeys(h['source'] for h in headers):
    used = sorted({(h['dataset'], h['examples'], h['dataset_examples'])
                   for h in headers if h['source'] == source})
    what = ', '.join(f'{d}: {n} of {total} examples' for d, n, total in used)
    kind = ('**the bundled sample**' if source.startswith('sample:')
            else 'full data set')
    lines.append(f'- data: {what} ({kind}); source `{source}`')
  if any(h['sample'] for h in headers):
    lines.append('- **WARNING: the bundled MNIST sample (a few thousand '
                 'digits) was used, not the full data set: a smoke test, not '
                 "the paper's experiment. Pass --data_dir (or set "
                 f'{data_lib.ENV_VAR}) for real numbers.**')
  versions = env.get('versions', {})
  lines.append(
      f'- backend: {env.get("backend")} ({env.get("device_count")} x '
      f'{env.get("device_kind")}), {env.get("process_count")} process(es); '
      f'jax {versions.get("jax")}, jaxlib {versions.get("jaxlib")}, '
      f'jaxkink {versions.get("jaxkink")}; x64 '
      f'{"on" if env.get("jax_enable_x64") else "off"}')
  lines += ['', '| run | model (init) | kinks | backward at the kink | '
            '"differs" on | M | R (batch, last) | inputs | precision policy '
            '| theta loop | seed |', '|---|---|---|---|---|---|---|---|---|'
            '---|---|']
  for h in headers:
    lines.append(
        f'| {h["label"]} | {h["model"]} ({h["init"]}) | {h["kinks"]} | '
        f'{h["rule"]} | {h["test"]} | {h["samples"]} | {h["minibatches"]} '
        f'({h["batch_size"]}, {h["last_batch"]}) | '
        f'{"normalised" if h["normalize"] else "[0, 1]"} | {h["policy"]} | '
        f'{h["theta_loop"]} | {h["seed"]} |')
  return lines


def _paper_cell(value: volume_presets.PaperValue | None, kind: str) -> str:
  if value is None:
    return '-'
  if value.value is None:
    return f'({value.printed}) as printed'
  if kind == 'quartiles':
    return zones.format_quartiles(value.value)
  if value.margin is None:
    shown = f'{zones.percent(value.value)}%'
  else:
    shown = zones.format_interval(
        {'p': value.value, 'low': value.value - value.margin,
         'high': value.value + value.margin})
  return (shown if shown.startswith(value.printed)
          else f'{shown} (printed {value.printed})')


def _paper_row(paper: volume_presets.Paper) -> str:
  return (f'| paper: {paper.source} | {paper.samples} | {paper.minibatches} '
          f'| {_paper_cell(paper.theta_in_zone, "p")} | '
          f'{_paper_cell(paper.impacted_pairs, "p")} | - | '
          f'{_paper_cell(paper.rel_l2_first_quartiles, "quartiles")} | - |')


def summary_markdown(title: str, runs: Sequence[volume_presets.Run],
                     headers: Sequence[dict[str, Any]],
                     summaries: Sequence[dict[str, Any]],
                     env: dict[str, Any]) -> str:
  """The preset's ``summary.md``: the settings header (and a warning when
  the bundled sample was used), our numbers with clipped intervals next to
  the paper's, as its authors' scripts compute them, and one line per
  metric."""
  headers = [{'label': r.label, **h} for r, h in zip(runs, headers)]
  lines = [f'# {title}', ''] + _settings_lines(headers, env)
  lines += ['', '## Results', '', zones.TABLE_HEADER]
  papers = list(dict.fromkeys(r.paper for r in runs if r.paper))
  for paper in papers + [None]:
    for r, s in zip(runs, summaries):
      if r.paper == paper:
        lines.append(zones.format_summary(r.label, s))
    if paper is not None:
      lines.append(_paper_row(paper))
  lines += ['', 'What each column is:', '']
  lines += [f'- **{name}**: {text}' for name, text in zones.METRICS]
  notes = [(p.source, m, getattr(p, m)) for p in papers
           for m in volume_presets.Paper.METRICS
           if getattr(p, m) is not None and getattr(p, m).note]
  if notes:
    lines += ['', "The paper's values, as its authors' scripts compute "
              'them:', '']
    lines += [f'- {source}, {metric}: {v.note}.' for source, metric, v
              in notes]
  scripts = sorted({p.script for p in papers if p.script})
  if scripts:
    lines += ['', f'## As {", ".join(scripts)} computes them', '',
              'Our records put through the script\'s own formulas (its '
              "\"differs\" is on the first layer's weight gradient, for every "
              'run), next to what the paper prints:', '',
              zones.MKPLOT_HEADER]
    for paper in papers:
      for r, s in zip(runs, summaries):
        if r.paper == paper:
          lines.append(zones.format_mkplot(r.label, s))
      printed = ['-' if v is None else v.printed for v in (
          getattr(paper, m) for m in volume_presets.Paper.METRICS)]
      printed[2] = f'Q1, median, Q3: {printed[2]}'   # all the paper prints
      lines.append(f'| paper: {paper.source} | {paper.samples} | '
                   + ' | '.join(printed) + ' |')
  return '\n'.join(lines) + '\n'


def plot_title(name: str, headers: Sequence[dict[str, Any]]) -> str:
  """The figure's title: models, data, M and kinks of the runs."""
  def values(key):
    return ', '.join(str(v) for v in dict.fromkeys(h[key] for h in headers))
  data = values('dataset')
  sizes = values('examples')
  sample = ' (bundled sample)' if any(h['sample'] for h in headers) else ''
  return (f'{name}: {values("model")}\n{data}, {sizes} examples{sample}; '
          f'M = {values("samples")}; kinks {values("kinks")}')


def _clipped_err(intervals: Sequence[dict[str, float]]) -> np.ndarray:
  """Matplotlib's asymmetric ``yerr`` (percent) of intervals clipped to
  [0, 100%]."""
  return np.array([[100 * (z['p'] - max(0.0, z['low'])) for z in intervals],
                   [100 * (min(1.0, z['high']) - z['p']) for z in intervals]])


def _paper_interval(value: volume_presets.PaperValue) -> dict[str, float]:
  margin = value.margin or 0.0
  return {'p': value.value, 'low': value.value - margin,
          'high': value.value + margin}


def plot(preset: volume_presets.Preset | None, runs, summaries,
         out: str, title: str = '',
         headers: Sequence[dict[str, Any]] = ()) -> None:
  """The preset's figure: bars, a sweep, a curve, or histograms of D.

  ``curve`` (ReLU'(0) Figure 2's sample-size panel) draws, per run, the
  proportion of thetas with a difference within the first examples, from
  the records and the runs' ``headers`` (:func:`run_header`).

  Intervals are clipped to [0, 100%]; paper values (``Run.paper``) are drawn
  as markers beside ours.
  """
  plt = rundir.pyplot()
  kind = preset.plot if preset else 'bars'
  if kind == 'histogram':
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 3.8),
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
    fig, ax = plt.subplots(figsize=(6, 4.2))
    _sweep_panel(ax, preset.x, runs, summaries)
  elif kind == 'curve':
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, run in enumerate(runs):
      rec = montecarlo.load_records(os.path.join(out, run.label),
                                    -(-run.flags['samples']
                                      // run.flags['chunk']))
      h = headers[i]
      sizes = [h['batch_size']] * (h['minibatches'] - 1) + [h['last_batch']]
      c = zones.first_difference_curve(
          rec.differs_first if run.flags['first_layer_only']
          else rec.differs, sizes)
      ax.plot(c['examples'], 100 * c['p'], label=run.flags['precision'])
      ax.fill_between(c['examples'], 100 * c['low'], 100 * c['high'],
                      alpha=0.2)
    ax.set_xlabel('examples seen (minibatches in file order)')
    ax.set_ylabel('theta in S so far (%), 95% Hoeffding')
    ax.set_ylim(-3, 103)
    ax.legend(title='precision')
  else:
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(runs)), 4.5))
    xs = np.arange(len(runs))
    zs = [s['theta_in_zone'] for s in summaries]
    ax.bar(xs, [100 * z['p'] for z in zs], width=0.6,
           yerr=_clipped_err(zs), capsize=3,
           label='jaxkink (95% Hoeffding)')
    marked = [(x, r.paper.theta_in_zone) for x, r in zip(xs, runs)
              if r.paper and r.paper.theta_in_zone
              and r.paper.theta_in_zone.value is not None]
    if marked:
      ax.errorbar([x + 0.38 for x, _ in marked],
                  [100 * v.value for _, v in marked],
                  yerr=_clipped_err([_paper_interval(v) for _, v in marked]),
                  fmt='D', color='tab:red', capsize=3,
                  label="paper (printed HCI)")
    ax.set_xticks(xs, [r.label for r in runs], rotation=45, ha='right',
                  fontsize=8)
    ax.set_xlabel('run')
    ax.set_ylabel('theta in S (%), 95% interval')
    ax.set_ylim(-2, 118)
    ax.legend(fontsize=8, loc='upper center', ncol=2)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'volume.png'), dpi=120)
  plt.close(fig)


def _sweep_panel(ax, x_name: str, runs, summaries) -> None:
  """Theta in S against the swept value, one line per precision, the
  paper's values (``Run.paper``) as markers of the same colour."""
  for i, p in enumerate(volume_presets.PRECISIONS):
    pts = [(r, s['theta_in_zone']) for r, s in zip(runs, summaries)
           if r.flags['precision'] == p]
    if not pts:
      continue
    ax.errorbar([r.x for r, _ in pts], [100 * z['p'] for _, z in pts],
                yerr=_clipped_err([z for _, z in pts]), marker='o',
                capsize=3, color=f'C{i}', label=f'{p} (jaxkink)')
    paper = [(r.x, r.paper.theta_in_zone) for r, _ in pts
             if r.paper and r.paper.theta_in_zone
             and r.paper.theta_in_zone.value is not None]
    if paper:
      ax.plot([x for x, _ in paper], [100 * v.value for _, v in paper], 'D',
              mfc='none', color=f'C{i}', ls=':', label=f'{p} (paper)')
  ax.set_xlabel(x_name)
  if x_name in ('width', 'batch_size'):
    ax.set_xscale('log', base=2)
  ax.set_ylabel('theta in S (%), 95% Hoeffding')
  ax.set_ylim(-3, 103)
  ax.legend(fontsize=7)


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
    runs.append(volume_presets.Run(run.label, merged, run.x, run.paper))
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
    headers = [run_header(r.flags, p, s)
               for r, p, s in zip(runs, prepared, summaries)]
    text = summary_markdown(title, runs, headers, summaries,
                            rundir.environment())
    out.write_text('summary.md', text)
    out.write_text('summaries.json', json.dumps(
        {r.label: s for r, s in zip(runs, summaries)}, indent=2,
        default=str) + '\n')
    plot(preset, runs, summaries, FLAGS.out,
         plot_title(FLAGS.preset or 'volume',
                    [{'label': r.label, **h} for r, h in zip(runs, headers)]),
         headers)
  print(text, end='')
  print(f'\nwritten to {FLAGS.out}/ (summary.md, volume.png, one directory '
        'per run)')


if __name__ == '__main__':
  define_flags()
  app.run(main)
