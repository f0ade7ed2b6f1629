r"""Monte Carlo volume of the bifurcation zone (ReLU'(0) Table 1, TMLR Table 2).

Draws ``--samples`` weight vectors, runs every minibatch of the data set
through the model under two kink settings, and reports the proportion of
weights whose gradients differ on some minibatch, the proportion of impacted
(weights, minibatch) pairs, with confidence intervals, and the size of the
differences. A run directory holds the flags, the precision policy, the
versions, the raw per-chunk records, ``summary.json``, ``summary.md`` and the
plots; a re-run with the same flags resumes where it stopped.

One run::

  jaxkink-volume --model=mlp --kinks=relu:0,1 \
      --precision=float32 --samples=100 --data_dir=../shared/data \
      --out=runs/volume_f32

A paper preset (several runs, one plot), at reduced size on the bundled
MNIST sample::

  jaxkink-volume --preset=table1 --samples=16 --out=runs/table1

Flags given on the command line override the preset's values for every run
of the preset (e.g. ``--samples``); ``--precision`` restricts the preset to
those precisions.

On CPUs the command splits the machine into one JAX device per core (each
device computes its own chunk of thetas: 1.4-1.5x the pairs per second of
one device on 2 cores, BUILD_NOTES.md); ``XLA_FLAGS=
--xla_force_host_platform_device_count=N`` or ``JAX_NUM_CPU_DEVICES=N``
chooses another count. The records are the same bits whatever the count.
"""

from __future__ import annotations

import contextlib
import json
import os
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
from jaxkink.data import cifar_sample
from jaxkink.experiments import progress as progress_lib
from jaxkink.experiments import tensorboard
from jaxkink.experiments import volume_presets

FLAGS = flags.FLAGS

# Flags that a run takes from a preset unless given on the command line.
RUN_FLAGS = ('model', 'model_opt', 'kinks', 'legacy_relu_grad', 'precision',
             'samples', 'chunk', 'batch_size', 'dataset', 'train_size',
             'normalize', 'screen', 'seed', 'tau', 'first_layer_only',
             'batch_norm_mode', 'theta_loop')
# Flags a run also takes from a preset, recorded in the run directory's
# settings only when set (so that run directories written before they
# existed still resume): their default leaves every record unchanged.
OPTIONAL_RUN_FLAGS = ('augment',)

# The CIFAR-10 sample of the data directory (jaxkink.data.cifar_sample).
CIFAR10_SAMPLE = cifar_sample.NAME
CIFAR10_SAMPLE_FILE = cifar_sample.FILE
DATASETS = tuple(data_lib.DATASETS) + (CIFAR10_SAMPLE,)

# The key of the augmentation draw: fold_in(key(seed), AUGMENT_INDEX); the
# thetas use fold_in(key(seed), m) with m < M, far below it.
AUGMENT_INDEX = 2**31 - 1


def define_flags() -> None:
  """Defines the script's flags (only when run as a script)."""
  flags.DEFINE_enum('preset', None, sorted(volume_presets.PRESETS),
                    'A paper experiment (several runs); see volume_presets.py.')
  flags.DEFINE_string('model', 'mlp', f'Model: {", ".join(models.names())}; '
                      'or package.module:factory, a flax module defined '
                      'outside jaxkink (run through jaxkink.kinkify).')
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
                      ', '.join(DATASETS) + f' ({CIFAR10_SAMPLE}: '
                      f'{CIFAR10_SAMPLE_FILE} in --data_dir, all 4000 '
                      'images).')
  flags.DEFINE_bool('augment', False, 'RandomCrop(32, padding=4) and '
                    'RandomHorizontalFlip() on the training images, drawn '
                    'once from the seed, the same for every theta (the TMLR '
                    "volume notebook's CIFAR-10 loader draws them anew for "
                    'every theta).')
  flags.DEFINE_list('only', None, "Run only these labels of the preset's "
                    'runs.')
  flags.DEFINE_string('data_dir', None, 'Directory with the native dataset '
                      f'files (default ${data_lib.ENV_VAR}, else the bundled '
                      'MNIST sample), or the tensorflow-datasets data '
                      'directory with --data_source=tfds.')
  cli.define_data_flags()
  flags.DEFINE_integer('train_size', None, 'Use the first N training '
                       'examples (default: all).')
  flags.DEFINE_bool('normalize', False, 'Normalise inputs with the '
                    "dataset's mean/std (False: ToTensor's [0, 1] only, as "
                    "the ReLU'(0) volume notebook).")
  flags.DEFINE_bool('screen', True, 'Skip the backward passes of the '
                    '(theta, minibatch) pairs whose forward pass hit no kink '
                    '(exact; whole chunks with --theta_loop=vmap; below 32 '
                    'bits the map loop computes them and records them as '
                    'screened out, as fast as --screen=false).')
  flags.DEFINE_integer('seed', 0, 'Seed of the weight samples.')
  flags.DEFINE_float('tau', 0.0, 'Threshold on the L1 difference D (TMLR '
                     'Criteria 1); 0: any exact difference.')
  flags.DEFINE_bool('first_layer_only', False, "Decide 'differs' on the "
                    "first layer's kernel gradient (the reference notebook).")
  flags.DEFINE_enum('batch_norm_mode', 'batch', ['batch', 'running'],
                    'Batch norm statistics: the minibatch\'s (PyTorch '
                    'training mode) or the running averages.')
  flags.DEFINE_enum('theta_loop', 'auto', ['auto', 'vmap', 'map',
                                           'programs'],
                    'Thetas of a chunk: vmapped (GPUs), looped inside the '
                    'program (CPUs), or one program per (theta, minibatch) '
                    "looped on the host (convolutional networks on CPUs); "
                    "'auto' picks by backend and model "
                    '(jaxkink.montecarlo.auto_theta_loop).')
  flags.DEFINE_string('out', 'runs/volume', 'Run directory.')
  flags.DEFINE_bool('distributed', False, 'One process of a multi-process '
                    'run: jax.distributed.initialize() before any JAX '
                    'computation. Each process computes every N-th chunk '
                    'into --out, which must be on a filesystem all the '
                    'processes share; process 0 gathers and writes the '
                    'summaries (the same bits as one process). Unset '
                    '--coordinator_address, --num_processes and '
                    '--process_id are detected by JAX (SLURM, Open MPI, '
                    '...).')
  flags.DEFINE_string('coordinator_address', None, 'With --distributed: '
                      'host:port of process 0 (default: '
                      '$JAX_COORDINATOR_ADDRESS, else detected).')
  flags.DEFINE_integer('num_processes', None, 'With --distributed: the '
                       'number of processes (default: detected).')
  flags.DEFINE_integer('process_id', None, 'With --distributed: this '
                       "process's index, 0 to --num_processes - 1 "
                       '(default: detected).')
  tensorboard.define_flag()
  cli.check_policies('precision')
  cli.check_positive(('samples', 'chunk', 'batch_size', 'train_size',
                      'num_processes'))
  cli.check_together(
      ('distributed', 'coordinator_address', 'num_processes', 'process_id'),
      lambda v: v['distributed'] or all(
          v[k] is None for k in ('coordinator_address', 'num_processes',
                                 'process_id')),
      '--coordinator_address, --num_processes and --process_id need '
      '--distributed')
  cli.check('process_id', lambda v: v is None or v >= 0,
            '--process_id must be >= 0')
  cli.check('kinks', parse_kinks, 'see --helpfull')
  cli.check('model', lambda v: models.options(v) is not None,
            'see --helpfull')
  cli.check_choice('dataset', DATASETS)
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


def theta_loop(choice: str, model: Any, x: Any) -> str:
  """``'auto'``: :func:`jaxkink.montecarlo.auto_theta_loop` (``'vmap'`` on
  accelerators; on CPUs ``'programs'`` for convolutional networks,
  ``'map'`` otherwise)."""
  if choice == 'auto':
    return montecarlo.auto_theta_loop(model, x[:1])
  return choice


_DATA_CACHE: dict[Any, Any] = {}

# Thresholds of the summary's ``tau_table``: 0 and 1e-16 .. 1.
TAU_LADDER = (0.0,) + tuple(10.0 ** k for k in range(-16, 1))


def _dataset(name: str, data_dir: str | None, source: str = 'auto',
             order: str = 'stored'):
  # Keyed by the directory in force ($JAXKINK_DATA_DIR when data_dir is
  # None), so that a change of the environment is not served stale data.
  key = (name, data_lib.resolve_data_dir(data_dir), source, order)
  if key not in _DATA_CACHE:
    if name == CIFAR10_SAMPLE:
      if source not in ('auto', 'native'):
        raise cli.UsageValueError(
            f'--dataset={CIFAR10_SAMPLE} is read from {CIFAR10_SAMPLE_FILE}; '
            f'--data_source={source} does not apply')
      _DATA_CACHE[key] = data_lib.read_cifar10_sample(data_dir)
    else:
      _DATA_CACHE[key] = data_lib.load(name, 'train', data_dir=data_dir,
                                       source=source, order=order)
  return _DATA_CACHE[key]


class Prepared(NamedTuple):
  """One run, ready to open its run directory and compute."""
  engine: montecarlo.Engine
  x: jax.Array
  y: jax.Array
  settings: dict[str, Any]
  source: dict[str, Any]


def prepare(cfg: dict[str, Any], data_dir: str | None,
            data_source: str = 'auto', data_order: str = 'stored'
            ) -> Prepared:
  """The engine, inputs and run-directory settings of one run.

  The settings are every value that can change a record: the run's flags
  (after the preset), the theta loop in force, the data (its description
  and a hash of the examples used), the precision policy and the model;
  and ``data_source`` / ``data_order`` when not at their defaults
  (:func:`jaxkink.data.requested`: run directories written before they
  existed still resume).

  Raises:
    cli.UsageValueError: settings that do not fit the data or the model.
  """
  policy = jaxkink.get_policy(cfg['precision'])
  kind, values = parse_kinks(cfg['kinks'])
  dataset = _dataset(cfg['dataset'], data_dir, data_source, data_order)
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
  images = dataset.images[:n]
  if cfg.get('augment', False):
    images = augmented(images, cfg['seed'])
  x = data_lib.preprocess(images, dataset.info,
                          normalize=cfg['normalize'],
                          dtype=policy.input_dtype)
  y = jnp.asarray(dataset.labels[:n])
  pair = montecarlo.kink_pair(kind, values,
                              legacy_relu_grad=cfg['legacy_relu_grad'])
  engine = montecarlo.Engine(model, policy, pair, samples=cfg['samples'],
                             chunk=cfg['chunk'], seed=cfg['seed'],
                             screen=cfg['screen'],
                             batch_norm_mode=cfg['batch_norm_mode'],
                             theta_loop=theta_loop(cfg['theta_loop'],
                                                   model, x))
  described = dataset.describe()
  source = {'source': described.pop('source')}  # where, not what: recorded
  settings = {'flags': run_flags(cfg),
              'theta_loop': engine.theta_loop,
              **engine.screen_settings(),
              'data': {**described, 'num_examples_used': n,
                       'sha256': _data_digest(dataset, n),
                       **data_lib.requested(data_source, data_order)},
              'policy': policy.to_dict(), 'model': repr(model)}
  return Prepared(engine, x, y, settings, source)


def augmented(images: np.ndarray, seed: int) -> np.ndarray:
  """``images`` through :func:`jaxkink.data.random_crop_flip` (zero padding
  4, crop, flip) with the key ``fold_in(key(seed), AUGMENT_INDEX)``."""
  key = jax.random.fold_in(jax.random.key(seed), AUGMENT_INDEX)
  return np.asarray(data_lib.random_crop_flip(key, jnp.asarray(images)))


def run_flags(cfg: dict[str, Any]) -> dict[str, Any]:
  """The flags of a run as recorded: every ``RUN_FLAGS`` entry, and the
  ``OPTIONAL_RUN_FLAGS`` that are set."""
  out = {k: cfg[k] for k in RUN_FLAGS}
  out.update({k: cfg[k] for k in OPTIONAL_RUN_FLAGS if cfg.get(k)})
  return out


def _data_digest(dataset, n: int) -> str:
  key = (id(dataset), n)
  if key not in _DIGESTS:
    _DIGESTS[key] = rundir.array_digest(dataset.images[:n],
                                        dataset.labels[:n])
  return _DIGESTS[key]


_DIGESTS: dict[Any, str] = {}


class _Reporter(progress_lib.Reporting):
  """The progress of one run (a bar, or log lines) and, with a run path,
  TensorBoard scalars per chunk: the share of thetas in the zone and of
  impacted pairs so far (any difference, tau = 0), against thetas done.
  With several processes each reports its own chunks; only process 0
  writes TensorBoard files."""

  def __init__(self, name: str, tensorboard_path: str | None):
    super().__init__(tensorboard.Writer(tensorboard_path)
                     if tensorboard_path and jax.process_index() == 0
                     else None)
    self.name = name
    self.batches = self.thetas = self.in_zone = self.impacted = 0

  def _count(self, record: montecarlo.PairRecord) -> None:
    differs = np.asarray(record.differs)
    self.thetas += differs.shape[0]
    self.in_zone += int(differs.any(axis=1).sum())
    self.impacted += int(differs.sum())

  def _postfix(self) -> str:
    return f'theta in zone {self.in_zone}/{self.thetas}'

  def start(self, thetas: int, batches: int,
            resumed: Sequence[montecarlo.PairRecord]) -> None:
    self.batches = batches
    for record in resumed:
      self._count(record)
    self.bar = progress_lib.Bar(thetas * batches, self.name, 'pair',
                                initial=self.thetas * batches)
    if resumed:
      logging.info('[%s] resumed %d of %d thetas from disk (%s)', self.name,
                   self.thetas, thetas, self._postfix())

  def chunk(self, index: int, record: montecarlo.PairRecord) -> None:
    del index  # the counts do not depend on the order
    before = self.thetas
    self._count(record)
    assert self.bar is not None
    self.bar.update((self.thetas - before) * self.batches, self._postfix())
    if self.writer is not None:
      self.writer.scalars(self.thetas, {
          'zone/theta_in_zone': self.in_zone / self.thetas,
          'zone/impacted_pairs': self.impacted / (self.thetas * self.batches),
      })


def run_one(cfg: dict[str, Any], prepared: Prepared, run: rundir.RunDir,
            log=logging.info, write_tensorboard: bool = False
            ) -> dict[str, Any]:
  """Runs (or resumes) one prepared setting into ``run``; returns its
  summary (empty on processes other than 0). Progress goes to a bar on a
  terminal, else to absl INFO lines; ``write_tensorboard``: also
  TensorBoard scalars per chunk into ``<run>/tensorboard/``."""
  name = os.path.basename(run.path)
  if jax.process_index() == 0:  # one writer of the shared directory
    run.write_json('environment.json', rundir.environment())
    run.write_json('data.json', {**prepared.settings['data'],
                                 **prepared.source})
  engine = prepared.engine
  log(f'[{name}] {engine.policy}; {cfg["model"]} on '
      f'{prepared.settings["data"]["num_examples_used"]} {cfg["dataset"]} '
      f'examples, {cfg["kinks"]}, M={cfg["samples"]}')
  t0 = time.perf_counter()
  with _Reporter(name, run.path if write_tensorboard else None) as reporter:
    records = montecarlo.run(engine, prepared.x, prepared.y,
                             cfg['batch_size'], run, reporter=reporter)
  if records is None:  # another process gathers
    return {}
  summary = zones.summarize(records, tau=cfg['tau'],
                            first_layer_only=cfg['first_layer_only'])
  # The zone at every power of ten (TMLR's thresholds among them), from the
  # same records.
  summary['tau_table'] = zones.tau_table(records, TAU_LADDER)
  summary['d_decades'] = zones.decade_histogram(records.l1, -18, 1)
  summary['seconds'] = time.perf_counter() - t0
  summary['config'] = run_flags(cfg)
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
      'augment': bool(cfg.get('augment', False)),
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
    kind = ('full data set' if not source.startswith('sample:') else
            '**a sample, not the full data set**'
            if CIFAR10_SAMPLE_FILE in source else '**the bundled sample**')
    lines.append(f'- data: {what} ({kind}); source `{source}`')
  if any(h['sample'] and h['dataset'].startswith('mnist') for h in headers):
    lines.append('- **WARNING: the bundled MNIST sample (a few thousand '
                 'digits) was used, not the full data set: a smoke test, not '
                 "the paper's experiment. Pass --data_dir (or set "
                 f'{data_lib.ENV_VAR}) for real numbers.**')
  for h in headers:
    if h['sample'] and not h['dataset'].startswith('mnist'):
      lines.append(f'- **WARNING ({h["label"]}): a sample of {h["dataset"]} '
                   f'({h["examples"]} examples, R = {h["minibatches"]}) was '
                   "used, not the full data set: fewer minibatches than the "
                   "paper's, so a theta has fewer chances to enter S.**")
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
        f'{"normalised" if h["normalize"] else "[0, 1]"}'
        f'{", crop+flip once" if h.get("augment") else ""} | {h["policy"]} | '
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
  lines += tmlr_lines(runs, summaries)
  lines += ['', 'What each column is:', '']
  lines += [f'- **{name}**: {text}' for name, text in zones.METRICS]
  notes = [(p.source, m, getattr(p, m)) for p in papers
           for m in (volume_presets.Paper.METRICS
                     + volume_presets.Paper.TMLR_METRICS)
           if getattr(p, m) is not None and getattr(p, m).note]
  if notes:
    lines += ['', "The paper's values, as its authors' scripts compute "
              'them:', '']
    lines += [f'- {source}, {metric}: {v.note}.' for source, metric, v
              in notes]
  scripts = sorted({p.script for p in papers if p.script
                    and p.script.startswith('deel-ai/')})
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


TMLR_HEADER = ('| setting | M x R pairs | tau | D = 0 (no variation) | minor: 0 '
               '< D <= tau | major: D > tau | max D (tau1 of a control) | '
               'min nonzero D (tau2) |\n|---|---|---|---|---|---|---|---|')


def _share(iv: dict[str, Any]) -> str:
  return (f'{zones.format_interval(iv)} (+-'
          f'{zones.percent(iv["margin_hoeffding_pairs"])} i.i.d.)')


def _sci(v: float) -> str:
  return '0' if v == 0 else f'{v:.3g} (~1e{round(np.log10(v))})'


def _tmlr_paper_cell(value: volume_presets.PaperValue | None) -> str:
  if value is None:
    return '-'
  return value.printed if value.printed.endswith('%') else (
      f'{value.printed} (= {value.value:g})')


def tmlr_lines(runs: Sequence[volume_presets.Run],
               summaries: Sequence[dict[str, Any]]) -> list[str]:
  """The TMLR paper's quantities (Figure 1's split, Table 4's thresholds,
  the zone at the authors' thresholds) beside the paper's values, for the
  runs that are compared with a TMLR column (empty otherwise)."""
  tmlr = [(r, s) for r, s in zip(runs, summaries)
          if r.paper and (any(getattr(r.paper, m) is not None
                              for m in volume_presets.Paper.TMLR_METRICS)
                          or r.paper.taus or 'TMLR' in r.paper.source)]
  if not tmlr:
    return []
  lines = ['', '## TMLR quantities', '',
           'D is the L1 norm of the difference of the full parameter '
           'gradients (Definition 7). Shares are over all M x R pairs with '
           "McDiarmid's 95% interval, and Hoeffding's margin with n = M R "
           "(Appendix A.6.3's formula, pairs taken as i.i.d.).", '',
           TMLR_HEADER]
  for r, s in tmlr:
    split, thr = s.get('variation_split'), s.get('thresholds')
    if split is None or thr is None:
      continue
    lines.append(f'| {r.label} | {split["pairs"]} | {split["tau"]:g} | '
                 f'{_share(split["none"])} | {_share(split["minor"])} | '
                 f'{_share(split["major"])} | {_sci(thr["max"])} | '
                 f'{_sci(thr["min_nonzero"])} |')
    p = r.paper
    if p is not None and any(getattr(p, m) is not None
           for m in volume_presets.Paper.TMLR_METRICS):
      lines.append(f'| paper: {p.source} | {p.samples} x {p.minibatches} | '
                   f'| - | {_tmlr_paper_cell(p.minor_pairs)} | '
                   f'{_tmlr_paper_cell(p.major_pairs)} | '
                   f'{_tmlr_paper_cell(p.tau_max)} | '
                   f'{_tmlr_paper_cell(p.tau_min_nonzero)} |')
  zoned = [(r, s) for r, s in tmlr
           if r.paper is not None and r.paper.taus and s.get('tau_table')]
  if zoned:
    lines += ['', 'The zone at other thresholds (same records; theta in '
              "S(tau): 95% Hoeffding, impacted pairs: 95% McDiarmid):", '',
              '| setting | threshold | tau | theta in S(tau) | impacted '
              'pairs |', '|---|---|---|---|---|']
    for r, s in zoned:
      table = {row['tau']: row for row in s['tau_table']}
      for what, tau in (('exact (any difference)', 0.0),
                        ('this run', float(r.flags.get('tau', 0.0))),
                        *(r.paper.taus if r.paper else ())):
        row = table.get(float(tau))
        if row is None:
          continue
        lines.append(f'| {r.label} | {what} | {tau:g} | '
                     f'{zones.format_interval(row["theta_in_zone"])} | '
                     f'{zones.format_interval(row["impacted_pairs"])} |')
  return lines


def plot_title(name: str, headers: Sequence[dict[str, Any]]) -> str:
  """The figure's title: models, data, M and kinks of the runs."""
  def values(key):
    return ', '.join(str(v) for v in dict.fromkeys(h[key] for h in headers))
  data = values('dataset')
  sizes = values('examples')
  sample = ''
  if any(h['sample'] for h in headers):
    sample = (' (bundled sample)' if any(
        h['sample'] and h['dataset'].startswith('mnist') for h in headers)
              else ' (a sample, not the full set)')
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
    fig, axes = plt.subplots(1, len(runs), figsize=(4.6 * len(runs), 4.0),
                             squeeze=False)
    for ax, run, s in zip(axes[0], runs, summaries):
      rec = montecarlo.load_records(os.path.join(out, run.label),
                                    -(-run.flags['samples']
                                      // run.flags['chunk']))
      _histogram_panel(ax, run, s, np.asarray(rec.l1, np.float64).ravel())
    axes[0][0].set_ylabel('share of (theta, minibatch) pairs (%)')
  elif kind == 'thresholds':
    fig, ax = plt.subplots(figsize=(max(6, 0.75 * len(runs)), 4.5))
    _thresholds_panel(ax, runs, summaries)
  elif kind == 'sweep':
    fig, ax = plt.subplots(figsize=(6, 4.2))
    assert preset is not None and preset.x is not None
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
  elif kind == 'bars_pairs':
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.8 * len(runs)), 4.5))
    _bars_panel(axes[0], runs, [s['theta_in_zone'] for s in summaries],
                [r.paper and r.paper.theta_in_zone for r in runs],
                'theta in S(tau) (%), 95% Hoeffding', 'jaxkink')
    _bars_panel(axes[1], runs, [s['impacted_pairs'] for s in summaries],
                [r.paper and r.paper.impacted_pairs for r in runs],
                'impacted minibatches (%), 95% McDiarmid', 'jaxkink')
  else:
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(runs)), 4.5))
    _bars_panel(ax, runs, [s['theta_in_zone'] for s in summaries],
                [r.paper and r.paper.theta_in_zone for r in runs],
                'theta in S (%), 95% interval', 'jaxkink (95% Hoeffding)')
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'volume.png'), dpi=100)
  plt.close(fig)


def _bars_panel(ax, runs, intervals, papers, ylabel: str, label: str) -> None:
  """Bars of ``intervals`` (clipped error bars) with the paper's values
  (``papers``, PaperValue or None per run) as red markers beside them."""
  xs = np.arange(len(runs))
  ax.bar(xs, [100 * z['p'] for z in intervals], width=0.6,
         yerr=_clipped_err(intervals), capsize=3, label=label)
  marked = [(x, v) for x, v in zip(xs, papers)
            if v and v.value is not None]
  if marked:
    ax.errorbar([x + 0.38 for x, _ in marked],
                [100 * v.value for _, v in marked],
                yerr=_clipped_err([_paper_interval(v) for _, v in marked]),
                fmt='D', color='tab:red', capsize=3,
                label='paper (printed HCI)')
  ax.set_xticks(xs, [r.label for r in runs], rotation=45, ha='right',
                fontsize=8)
  ax.set_xlabel('run')
  ax.set_ylabel(ylabel)
  ax.set_ylim(-2, 118)
  ax.legend(fontsize=8, loc='upper center', ncol=2)


def _histogram_panel(ax, run, summary, d: np.ndarray) -> None:
  """TMLR Figures 1-3: the share of pairs per decade of D (the authors'
  ``plot_histogram`` bins), D = 0 as its own bar, tau as a dashed line, our
  minor / major shares and the paper's as markers."""
  h = zones.decade_histogram(d, -18, 1)
  used = [k for k, v in h['decades'] if v > 0]
  lo, hi = (min(used) - 1, max(used) + 2) if used else (-9, -6)
  ks = [k for k, _ in h['decades'] if lo <= k < hi]
  shares = dict(h['decades'])
  zero_x = lo - 1.5
  floor = 100 * 0.5 / max(h['n'], 1)
  ax.bar([zero_x], [100 * h['zero']], width=0.8, color='tab:gray',
         label='D = 0')
  ax.bar([k + 0.5 for k in ks], [100 * shares[k] for k in ks], width=0.9,
         color='tab:blue', label='0 < D, per decade')
  ax.set_yscale('log')
  ax.set_ylim(floor, 200)
  ax.set_xticks([zero_x] + list(range(lo, hi + 1)),
                ['0'] + [str(k) for k in range(lo, hi + 1)], fontsize=7)
  ax.set_xlabel('log10 D (L1 backprop variation); left bar: D = 0')
  split = summary.get('variation_split')
  tau = split['tau'] if split else 0.0
  if tau > 0:
    ax.axvline(np.log10(tau), color='k', ls='--', lw=0.8,
               label=f'tau = {tau:g}')
  groups = []
  if split:
    for name in ('minor', 'major'):
      mask = ((d > 0) & (d <= tau)) if name == 'minor' else (d > tau)
      if mask.any():
        x = float(np.median(np.log10(d[mask])))
        groups.append((name, x, split[name]['p']))
  if groups:
    ax.plot([x for _, x, _ in groups], [100 * p for _, _, p in groups], 'o',
            mfc='none', color='tab:blue', ms=8,
            label='ours: minor / major share')
  paper = run.paper
  if paper and (paper.minor_pairs or paper.major_pairs):
    # Where the paper puts them: minor in [1e-8, 1e-7], major near 1e-3.
    pts = [(x, v.value) for x, v in ((-7.5, paper.minor_pairs),
                                     (-3.0, paper.major_pairs))
           if v is not None and v.value]
    if pts:
      ax.plot([x for x, _ in pts], [100 * v for _, v in pts], 'D',
              color='tab:red', label='paper: minor / major share')
  text = ', '.join(f'{n} {zones.percent(p)}%' for n, _, p in groups)
  ax.set_title(f'{run.label}, {run.flags["precision"]}\n'
               f'D = 0 in {zones.percent(h["zero"])}% of {h["n"]} pairs'
               + (f'; {text}' if text else ''), fontsize=8)
  ax.legend(fontsize=6, loc='upper right')


_ZERO_LEVEL = -20   # where a threshold of 0 is drawn on the log10 axis


def _thresholds_panel(ax, runs, summaries) -> None:
  """TMLR Table 4: per run, max D (a control: tau1) or the smallest nonzero
  D (ReLU'(0) = 0 against 1: tau2), log10, with the paper's values."""
  xs = np.arange(len(runs))
  ours, papers = [], []
  for r, s in zip(runs, summaries):
    thr = s['thresholds']
    tau2 = bool(r.paper and r.paper.tau_min_nonzero is not None) or (
        'relu' in r.flags['kinks'])
    v = thr['min_nonzero'] if tau2 else thr['max']
    ours.append(np.log10(v) if v > 0 else _ZERO_LEVEL)
    pv = r.paper and (r.paper.tau_min_nonzero if tau2 else r.paper.tau_max)
    papers.append(None if not pv else (np.log10(pv.value) if pv.value > 0
                                       else _ZERO_LEVEL))
  bottom = _ZERO_LEVEL - 1
  ax.bar(xs, [o - bottom for o in ours], bottom=bottom, width=0.6,
         label='jaxkink: max D (tau1) or min nonzero D (tau2)')
  marked = [(x, p) for x, p in zip(xs, papers) if p is not None]
  if marked:
    ax.plot([x + 0.3 for x, _ in marked], [p for _, p in marked], 'D',
            color='tab:red', label='paper Table 4 (powers of 10)')
  ax.axhline(_ZERO_LEVEL, color='k', lw=0.5, ls=':')
  ax.text(-0.5, _ZERO_LEVEL + 0.2, 'threshold 0', fontsize=7)
  ax.set_xticks(xs, [r.label for r in runs], rotation=45, ha='right',
                fontsize=8)
  ax.set_xlabel('run (control: tau1; relu01: tau2)')
  ax.set_ylabel('log10 threshold')
  ax.set_ylim(bottom, 2)
  ax.legend(fontsize=8, loc='upper left')


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
  names = RUN_FLAGS + OPTIONAL_RUN_FLAGS
  given = {name for name in names if FLAGS[name].present}
  current = {name: FLAGS[name].value for name in names}
  if FLAGS.preset is None:
    if FLAGS.only:
      raise app.UsageError('--only selects runs of a --preset')
    return None, [volume_presets.Run(
        p, {**current, 'precision': p}) for p in FLAGS.precision]
  preset = volume_presets.PRESETS[FLAGS.preset]
  labels = {r.label for r in preset.runs}
  unknown = sorted(set(FLAGS.only or ()) - labels)
  if unknown:
    raise app.UsageError(f'--only: no run {", ".join(unknown)} in preset '
                         f'{FLAGS.preset}; its runs: {", ".join(sorted(labels))}')
  runs = []
  for run in preset.runs:
    if 'precision' in given and run.flags['precision'] not in FLAGS.precision:
      continue
    if FLAGS.only and run.label not in FLAGS.only:
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
  if FLAGS.distributed:  # before the first JAX computation
    jax.distributed.initialize(FLAGS.coordinator_address,
                               FLAGS.num_processes, FLAGS.process_id)
  preset, runs = _runs_from_flags()
  for run in runs:
    jaxkink.get_policy(run.flags['precision'], check=False)  # name check
    parse_kinks(run.flags['kinks'])
  jaxkink.policies_for_program([r.flags['precision'] for r in runs])
  prepared = [prepare(r.flags, FLAGS.data_dir, FLAGS.data_source,
                      FLAGS.data_order) for r in runs]
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
          'preset': FLAGS.preset, 'data_dir': FLAGS.data_dir,
          'data_source': FLAGS.data_source, 'data_order': FLAGS.data_order,
          'runs': [{'label': r.label, **r.flags} for r in runs]})
    summaries = [run_one(r.flags, p, d, write_tensorboard=FLAGS.tensorboard)
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


def run() -> None:
  """Runs the ``jaxkink-volume`` command: on CPUs with one JAX device per
  core unless ``XLA_FLAGS`` or ``JAX_NUM_CPU_DEVICES`` sets the count
  (:func:`jaxkink.cli.use_host_devices`; the records are the same bits
  whatever the count)."""
  cli.use_host_devices()
  define_flags()
  cli.run(main, __doc__)


if __name__ == '__main__':
  run()
