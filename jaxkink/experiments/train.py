r"""Training sweeps over kink values: a (seed x kink) grid in one program.

Every member of the grid trains the same model from its seed's weights on its
seed's minibatches; only the kink value (ReLU'(0), the ReLU6 kinks,
LeakyReLU'(0), the MaxPool beta) differs between members of one seed. The
whole grid is one jitted, vmapped program (``jaxkink.training``). After every
epoch the per-member metrics are written to ``<out>/metrics.json`` and a
checkpoint to ``<out>/checkpoints/`` (the newest two kept); re-running the
same command resumes. ``<out>/manifest.json`` holds every setting that can
change a number: a re-run with other settings is refused (exit status 2) and
changes nothing.

Presets hold the papers' settings (``--preset=relu_mlp_mnist``, ``--reduced``
for a CPU-sized version; explicit flags override the preset)::

  jaxkink-train --preset=relu_mlp_mnist --reduced \
      --data_dir=../shared/data --compare_legacy --out=runs/train_mnist
  jaxkink-train --preset=tmlr_vgg11_beta --reduced \
      --data_dir=../shared/data --epochs=1 --out=runs/train_tmlr

``--compare_legacy`` runs the sweep twice, with the 2021 reference code's
ReLU'(0) assignment (``legacy_relu_grad``) and with the multiplication, into
``<out>/legacy_off`` and ``<out>/legacy_on``, and plots both (the 2023
erratum comparison).

The last line printed is JSON, of one shape with or without
``--compare_legacy``: the final test accuracy (mean over seeds) per ReLU'(0)
rule and member label, e.g. ``{"final_test_acc_mean": {"legacy_off": {"s=0":
0.9712, "s=1": 0.9705}}}``; ``legacy_on`` for ``--legacy_relu_grad``, both
keys with ``--compare_legacy``.

Outputs: ``manifest.json``, ``flags.json``, ``environment.json``, ``policy.json``,
``data.json``, ``metrics.json`` (per epoch and member: train loss, train
and test accuracy, test loss, L1 / L2 distance to the first kink value of the
member's seed, divergence), ``summary.json`` (final test accuracy per kink
value, mean and std over seeds), ``test_accuracy.png`` (test accuracy against
the kink value, boxes over seeds), ``train_loss.png`` (training loss per
epoch per kink value, mean and std over seeds), ``weight_distance.png``
(TMLR Fig. 6's ``||theta_beta - theta_0||_1`` per epoch), and
``weights/member_<m>/``: each member's final variables as an orbax
checkpoint (``orbax.checkpoint.StandardCheckpointer().restore(path)`` gives
``{'params': ...}``, plus ``'batch_stats'`` with batch norm), with the
member table in ``weights/members.json`` (see ``jaxkink.weights``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from typing import Any, Callable, NamedTuple, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

import jaxkink
from jaxkink import cli
from jaxkink import data
from jaxkink import models
from jaxkink import rundir
from jaxkink import training
from jaxkink import weights
from jaxkink.data import cifar_sample
from jaxkink.experiments import progress
from jaxkink.experiments import tensorboard

FLAGS = flags.FLAGS

DATASETS = ('mnist', 'fashion_mnist', 'cifar10', 'svhn', 'cifar10_sample')
ACTIVATIONS = ('relu', 'relu6', 'leaky_relu')
SAMPLE_FILE = cifar_sample.FILE
SAMPLE_TEST = 1000  # the sample's last images, held out as its test set

# Flag defaults when neither a preset nor the command line sets them.
DEFAULTS: dict[str, Any] = dict(
    model='mlp', dataset='mnist', optimizer='sgd', lr=0.01, momentum=0.0,
    weight_decay=0.0, schedule='constant', epochs=1, batch_size=128,
    precision='float32', batch_norm=False, dropout=0.0, activation='relu',
    kink_values=(0.0,), pool_betas=(0.0,), seeds=1, augment=None,
    widths=None)


def _finite_nonnegative(text: Any, what: str) -> bool:
  return cli.finite_float(text, what) >= 0


def define_flags(flag_values=FLAGS) -> None:
  """Defines the script's flags (only when run as a script, so that tests
  can import it beside other experiments). Flags left at None take the
  preset's value, else ``DEFAULTS``."""
  flags.DEFINE_enum('preset', None, sorted(training.PRESETS), "A paper's "
                    'training setting (jaxkink.training.PRESETS; each '
                    "preset's source is in jaxkink/training/presets.py).",
                    flag_values=flag_values)
  flags.DEFINE_boolean('reduced', False, "The preset's CPU-sized version.",
                       flag_values=flag_values)
  flags.DEFINE_string('out', 'runs/train', 'Run directory.',
                      flag_values=flag_values)
  tensorboard.define_flag(flag_values)
  flags.DEFINE_string('data_dir', None, 'Data directory (default '
                      '$JAXKINK_DATA_DIR; MNIST falls back to the bundled '
                      'sample; with --data_source=tfds: the '
                      'tensorflow-datasets data directory).',
                      flag_values=flag_values)
  cli.define_data_flags(flag_values)
  flags.DEFINE_string('model', None, 'Model name (jaxkink.models.names()), '
                      'or package.module:factory for a flax module defined '
                      'outside jaxkink (run through jaxkink.kinkify).',
                      flag_values=flag_values)
  flags.DEFINE_list('widths', None, 'MLP widths, e.g. 512,512,512,10.',
                    flag_values=flag_values)
  flags.DEFINE_string('dataset', None, f'One of {", ".join(DATASETS)}.',
                      flag_values=flag_values)
  flags.DEFINE_string('optimizer', None, 'sgd or adam.',
                      flag_values=flag_values)
  flags.DEFINE_float('lr', None, 'Learning rate (one for every member).',
                     flag_values=flag_values)
  flags.DEFINE_float('momentum', None, 'SGD momentum.', flag_values=flag_values)
  flags.DEFINE_float('weight_decay', None, 'L2 weight decay (PyTorch-style).',
                     flag_values=flag_values)
  flags.DEFINE_string('schedule', None, 'constant or cosine.',
                      flag_values=flag_values)
  flags.DEFINE_integer('epochs', None, 'Epochs.', flag_values=flag_values)
  flags.DEFINE_integer('batch_size', None, 'Minibatch size.',
                       flag_values=flag_values)
  flags.DEFINE_string('precision', None, 'Precision policy (float32, ...).',
                      flag_values=flag_values)
  flags.DEFINE_boolean('batch_norm', None, 'Batch norm where the model has it.',
                       flag_values=flag_values)
  flags.DEFINE_float('dropout', None, 'Dropout rate (MLP).',
                     flag_values=flag_values)
  flags.DEFINE_string('activation', None, 'relu, relu6 or leaky_relu.',
                      flag_values=flag_values)
  flags.DEFINE_list('kink_values', None, "Activation kink values, e.g. "
                    "0,0.1,0.5 (ReLU'(0); both ReLU6 kinks; LeakyReLU'(0)).",
                    flag_values=flag_values)
  flags.DEFINE_list('pool_betas', None, 'MaxPool betas, e.g. 0,1,10,100.',
                    flag_values=flag_values)
  flags.DEFINE_integer('seeds', None, 'Number of seeds (0 .. seeds - 1).',
                       flag_values=flag_values)
  flags.DEFINE_integer('first_seed', 0, 'The first seed.',
                       flag_values=flag_values)
  flags.DEFINE_boolean('augment', None, 'Random crop and flip (default: on '
                       'for CIFAR-10).', flag_values=flag_values)
  flags.DEFINE_boolean('legacy_relu_grad', False, "The 2021 reference code's "
                       "assignment of ReLU'(0) (see jaxkink.Kinks).",
                       flag_values=flag_values)
  flags.DEFINE_boolean('compare_legacy', False, 'Run with legacy_relu_grad '
                       'off and on (into <out>/legacy_off and '
                       '<out>/legacy_on), and plot both. The last line '
                       'printed is JSON of the same shape either way: '
                       '{"final_test_acc_mean": {rule: {label: accuracy}}}, '
                       'rule legacy_off and/or legacy_on.',
                       flag_values=flag_values)
  flags.DEFINE_boolean('blended_pool_forward', False, 'The TMLR reference '
                       "code's pooled forward.", flag_values=flag_values)
  flags.DEFINE_boolean('shared_batch', False, 'Vmap over kinks with the '
                       'minibatch unbatched (faster; see '
                       'jaxkink.training.make_train_step).',
                       flag_values=flag_values)
  flags.DEFINE_enum('batching', 'auto',
                    ['auto', 'vmap', 'unroll', 'separate'],
                    "How the members run: 'vmap' (one batched program), "
                    "'unroll' (one copy of the step per member in the "
                    "program; long compiles), 'separate' (one one-member "
                    'program called per member: each member bit for bit a '
                    "one-member training); 'auto': what measured fastest "
                    '(separate for convnets on CPUs, else vmap: '
                    'jaxkink.training.auto_batching). The choice is '
                    'recorded in the run settings.', flag_values=flag_values)
  flags.DEFINE_integer('train_examples', None, 'Use only the first N '
                       'training examples.', flag_values=flag_values)
  flags.DEFINE_integer('test_examples', None, 'Evaluate on the first N test '
                       'examples only.', flag_values=flag_values)
  flags.DEFINE_integer('eval_batch_size', 1000, 'Test batch size.',
                       flag_values=flag_values)

  def check(flag: str, predicate: Callable[[Any], Any], message: str) -> None:
    cli.check(flag, predicate, message, flag_values=flag_values)

  cli.check_positive(('epochs', 'batch_size', 'seeds', 'eval_batch_size',
                      'train_examples', 'test_examples'),
                     flag_values=flag_values)
  cli.check_policies('precision', flag_values=flag_values)
  cli.check_choice('dataset', DATASETS, flag_values=flag_values)
  cli.check_choice('optimizer', training.OPTIMIZERS, flag_values=flag_values)
  cli.check_choice('schedule', training.SCHEDULES, flag_values=flag_values)
  cli.check_choice('activation', ACTIVATIONS, flag_values=flag_values)
  check('model', lambda v: models.options(v) is not None, 'unknown model')
  check('widths', lambda v: cli.positive_ints(v, '--widths'), 'integers >= 1')
  for name in ('kink_values', 'pool_betas'):
    check(name, functools.partial(cli.finite_floats, what=f'--{name}'),
          'finite numbers')
  check('lr', lambda v: cli.finite_float(v, '--lr') > 0,
        '--lr must be a finite number > 0')
  for name in ('momentum', 'weight_decay'):
    check(name, functools.partial(_finite_nonnegative, what=f'--{name}'),
          f'--{name} must be a finite number >= 0')
  check('dropout', lambda v: 0 <= cli.finite_float(v, '--dropout') < 1,
        '--dropout must be in [0, 1)')
  check('first_seed', lambda v: v >= 0, '--first_seed must be >= 0')


def settings_from_flags(flag_values=None) -> dict[str, Any]:
  """The run's settings: preset, then explicit flags, then ``DEFAULTS``."""
  fv = flag_values or FLAGS
  s = dict(DEFAULTS)
  if fv.preset:
    try:
      s.update(training.get_preset(fv.preset).resolve(fv.reduced))
    except ValueError as e:
      raise app.UsageError(str(e)) from e
  elif fv.reduced:
    raise app.UsageError('--reduced needs --preset')
  for name in DEFAULTS:
    if fv[name].present:
      s[name] = fv[name].value
  return s


def _floats(values, what: str) -> tuple[float, ...]:
  try:
    out = tuple(float(v) for v in values)
  except ValueError as e:
    raise app.UsageError(f'--{what}: {e}') from e
  if not out:
    raise app.UsageError(f'--{what} is empty')
  return out


def load_data(dataset: str, data_dir: str | None,
              train_examples: int | None, test_examples: int | None = None,
              source: str = 'auto', order: str = 'stored'):
  """``(train, test, description, normalisation name)``."""
  if dataset not in DATASETS:
    raise app.UsageError(f'unknown dataset {dataset!r}; valid: '
                         f'{", ".join(DATASETS)}')
  if dataset == 'cifar10_sample':
    if source not in ('auto', 'native'):
      raise app.UsageError(f'cifar10_sample is read from {SAMPLE_FILE}; '
                           f'--data_source={source} does not apply')
    sample = data.read_cifar10_sample(data_dir)
    x, y = sample.images, sample.labels
    if len(y) <= SAMPLE_TEST:
      raise data.DataError(f'{sample.source}: {len(y)} images, but its last '
                           f'{SAMPLE_TEST} are held out as the test set')
    train = (x[:-SAMPLE_TEST], y[:-SAMPLE_TEST])
    test = (x[-SAMPLE_TEST:], y[-SAMPLE_TEST:])
    desc = {'name': dataset, 'source': SAMPLE_FILE,
            'train': len(train[1]), 'test': len(test[1])}
    norm = 'cifar10'
  else:
    tr = data.load(dataset, 'extra' if dataset == 'svhn' else 'train',
                   data_dir=data_dir, source=source, order=order)
    te = data.load(dataset, 'test', data_dir=data_dir, source=source,
                   order=order)
    train, test = (tr.images, tr.labels), (te.images, te.labels)
    desc = {'name': dataset, 'train': tr.describe(), 'test': te.describe()}
    norm = dataset
  if train_examples is not None:
    if train_examples < 1:
      raise app.UsageError('--train_examples must be positive')
    train = (train[0][:train_examples], train[1][:train_examples])
    desc['train_examples'] = len(train[1])
  if test_examples is not None:
    if test_examples < 1:
      raise app.UsageError('--test_examples must be positive')
    test = (test[0][:test_examples], test[1][:test_examples])
    desc['test_examples'] = len(test[1])
  return train, test, desc, norm


def build(s: dict[str, Any], legacy: bool, flag_values=None):
  """``(model, policy, grid, config)`` from the settings."""
  fv = flag_values or FLAGS
  policy, = jaxkink.policies_for_program([s['precision']])
  opts: dict[str, Any] = {}
  name = s['model']
  try:
    fields = models.options(name)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if 'batch_norm' in fields:
    opts['batch_norm'] = bool(s['batch_norm'])
  if 'activation' in fields:
    opts['activation'] = s['activation']
  if s['dropout']:
    if 'dropout' not in fields:
      raise app.UsageError(f'model {name} has no dropout option')
    opts['dropout'] = float(s['dropout'])
  if s['widths']:
    if 'widths' not in fields:
      raise app.UsageError(f'model {name} has no widths option')
    opts['widths'] = tuple(int(w) for w in s['widths'])
  try:
    model = models.get(name, policy=policy, **opts)
    grid = training.make_grid(
        range(fv.first_seed, fv.first_seed + int(s['seeds'])),
        _floats(s['kink_values'], 'kink_values'),
        _floats(s['pool_betas'], 'pool_betas'),
        activation=s['activation'], legacy_relu_grad=legacy,
        blended_pool_forward=fv.blended_pool_forward,
        dtype=policy.compute_dtype)
    optimizer = training.OptimizerConfig(
        s['optimizer'], lr=float(s['lr']), momentum=float(s['momentum']),
        weight_decay=float(s['weight_decay']), schedule=s['schedule'])
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  if int(s['seeds']) < 1:
    raise app.UsageError('--seeds must be >= 1')
  return model, policy, grid, optimizer


def summarise(history: list[dict[str, Any]],
              members: list[dict[str, Any]]) -> dict[str, Any]:
  """Final test accuracy and train loss per kink configuration."""
  last = history[-1]
  by_kink: dict[int, list[int]] = {}
  for row in members:
    by_kink.setdefault(row['kink_index'], []).append(row['member'])
  out = []
  for k, ms in sorted(by_kink.items()):
    acc = np.asarray([last['test_acc'][m] for m in ms])
    loss = np.asarray([last['train_loss'][m] for m in ms])
    div = [last['diverged'][m] for m in ms]
    out.append({
        'label': members[ms[0]]['label'],
        'kink_value': members[ms[0]]['kink_value'],
        'pool_beta': members[ms[0]]['pool_beta'],
        'test_acc_mean': float(acc.mean()), 'test_acc_std': float(acc.std()),
        'test_acc_per_seed': acc.tolist(),
        'train_loss_mean': float(np.nanmean(loss)) if not all(div) else None,
        'train_loss_std': float(np.nanstd(loss)) if not all(div) else None,
        'diverged': int(sum(div)),
        'l1_to_first_mean': float(np.mean(
            [last['l1_to_first_kink'][m] for m in ms])),
    })
  return {'epochs': last['epoch'], 'per_kink': out}


def _axis_values(members, summary):
  betas = {r['pool_beta'] for r in members}
  key = 'pool_beta' if len(betas) > 1 else 'kink_value'
  return key, [r[key] for r in summary['per_kink']]


def plot_run(out: str, history, members, summary, title: str) -> None:
  """Test accuracy vs kink value, training loss and weight distances."""
  plt = rundir.pyplot()
  key, xs = _axis_values(members, summary)
  xlabel = 'MaxPool beta' if key == 'pool_beta' else "kink value (ReLU'(0))"
  labels = [r['label'] for r in summary['per_kink']]
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.boxplot([np.asarray(r['test_acc_per_seed']) * 100
              for r in summary['per_kink']])
  ax.set_xticks(np.arange(1, len(xs) + 1), [f'{x:g}' for x in xs])
  ax.set_xlabel(xlabel)
  ax.set_ylabel('test accuracy (%)')
  ax.set_title(f'{title}\nepoch {summary["epochs"]}, boxes over seeds',
               fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(out, 'test_accuracy.png'), dpi=110)
  plt.close(fig)

  epochs = np.asarray([h['epoch'] for h in history])
  for name, metric, ylabel, log in (
      ('train_loss.png', 'train_loss', 'training loss (epoch mean)', True),
      ('weight_distance.png', 'l1_to_first_kink',
       r'$\|\theta_k - \theta_{k, first}\|_1$', False)):
    fig, ax = plt.subplots(figsize=(6, 4))
    values = np.asarray([h[metric] for h in history], np.float64)
    for k, label in enumerate(labels):
      ms = [r['member'] for r in members if r['kink_index'] == k]
      v = values[:, ms]
      if log:
        mean, std = np.nanmean(v, axis=1), np.nanstd(v, axis=1)
        ax.plot(epochs, mean, marker='.', label=label, color=f'C{k}')
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.2,
                        color=f'C{k}')
      else:  # one line per seed: most seeds may stay at exactly 0
        for j in range(v.shape[1]):
          ax.plot(epochs, v[:, j], marker='.', lw=0.8, color=f'C{k}',
                  label=label if j == 0 else None)
    if log:
      ax.set_yscale('log')
      spread = 'mean and std over seeds'
    else:
      ax.set_yscale('symlog', linthresh=1e-3)
      ax.set_ylim(bottom=0)
      spread = 'one line per seed'
    ax.set_xlabel('epoch')
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(ylabel)
    ax.set_title(f'{title}\n{spread}', fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, name), dpi=110)
    plt.close(fig)


def plot_erratum(path: str, summaries: dict[str, dict[str, Any]],
                 title: str) -> None:
  """Test accuracy vs ReLU'(0), legacy assignment vs multiplication."""
  plt = rundir.pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, (name, summary) in enumerate(summaries.items()):
    xs = np.asarray([r['kink_value'] for r in summary['per_kink']])
    mean = np.asarray([r['test_acc_mean'] for r in summary['per_kink']]) * 100
    std = np.asarray([r['test_acc_std'] for r in summary['per_kink']]) * 100
    ax.errorbar(xs + 0.01 * (i - 0.5), mean, yerr=std, marker='o',
                capsize=3, label=name)
  ax.set_xlabel("ReLU'(0)")
  ax.set_ylabel('test accuracy (%), mean +- std over seeds')
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


class Sweep(NamedTuple):
  """One sweep, ready to open its run directory and train."""
  model: Any
  policy: jaxkink.Policy
  grid: training.Grid
  config: training.SweepConfig
  settings: dict[str, Any]
  recorded: dict[str, Any]


def prepare(s: dict[str, Any], legacy: bool, train, test,
            norm: str) -> Sweep:
  """The model, grid, configuration and run-directory settings of a sweep:
  the flags after the preset, and every value derived from them and from
  the data that can change a number (:func:`training.sweep_settings`)."""
  model, policy, grid, optimizer = build(s, legacy)
  augment = s['augment']
  if augment is None:
    augment = norm == 'cifar10'
  if int(s['batch_size']) > len(train[1]):
    raise cli.UsageValueError(f'--batch_size {s["batch_size"]} exceeds the '
                              f'{len(train[1])} training examples')
  batching = FLAGS.batching
  if batching == 'auto':
    batching = ('vmap' if FLAGS.shared_batch else training.auto_batching(
        model, train[0][:1]))
  config = training.SweepConfig(
      dataset=norm, epochs=int(s['epochs']), batch_size=int(s['batch_size']),
      optimizer=optimizer, augment=bool(augment),
      eval_batch_size=FLAGS.eval_batch_size, shared_batch=FLAGS.shared_batch,
      batching=batching)
  recorded = {k: (list(v) if isinstance(v, tuple) else v)
              for k, v in s.items()}
  recorded.update(preset=FLAGS.preset, reduced=FLAGS.reduced,
                  legacy_relu_grad=legacy, augment=bool(augment),
                  seeds_list=list(grid.seeds), labels=list(grid.labels),
                  shared_batch=FLAGS.shared_batch, batching=batching,
                  blended_pool_forward=FLAGS.blended_pool_forward,
                  eval_batch_size=FLAGS.eval_batch_size,
                  train_examples=FLAGS.train_examples,
                  test_examples=FLAGS.test_examples,
                  first_seed=FLAGS.first_seed,
                  # Only when not at their defaults (older run directories
                  # still resume).
                  **data.requested(FLAGS.data_source, FLAGS.data_order))
  settings = {'flags': recorded, **training.sweep_settings(
      model, policy, grid, config, train, test)}
  return Sweep(model, policy, grid, config, settings, recorded)


class _Reporter(progress.Reporting):
  """The epochs of one sweep on a bar (or log lines), with the mean test
  accuracy per kink value; with a run path, TensorBoard scalars per epoch
  and member: ``<metric>/seed<seed>_<label>`` for the train and test loss
  and accuracy, and the weight distances to the seed's first kink value."""

  METRICS = ('train_loss', 'train_acc', 'test_loss', 'test_acc',
             'l1_to_first_kink', 'l2_to_first_kink')

  def __init__(self, name: str, grid: training.Grid,
               tensorboard_path: str | None):
    super().__init__(tensorboard.Writer(tensorboard_path)
                     if tensorboard_path else None)
    self.name, self.grid = name, grid
    self.tags = [f'seed{m["seed"]}_{m["label"]}'
                 for m in training.member_table(grid)]

  def start(self, epochs: int, resumed: Sequence[dict[str, Any]]) -> None:
    self.bar = progress.Bar(epochs, self.name, 'epoch', initial=len(resumed))

  def epoch(self, record: dict[str, Any]) -> None:
    acc = np.asarray(record['test_acc']).reshape(self.grid.num_seeds, -1)
    postfix = 'test acc ' + ', '.join(
        f'{label} {100 * acc[:, k].mean():.2f}%'
        for k, label in enumerate(self.grid.labels))
    assert self.bar is not None
    self.bar.set(record['epoch'], postfix)
    if self.writer is not None:
      self.writer.scalars(record['epoch'], {
          f'{metric}/{tag}': value
          for metric in self.METRICS
          for tag, value in zip(self.tags, record[metric])})


def run_one(run: rundir.RunDir, sweep: Sweep, train, test,
            data_desc, tensorboard_dir: bool = False) -> dict[str, Any]:
  """Trains one prepared sweep into ``run``; returns its summary.
  ``tensorboard_dir``: also write TensorBoard scalars into
  ``<run>/tensorboard/``."""
  s, policy, grid = sweep.recorded, sweep.policy, sweep.grid
  legacy = s['legacy_relu_grad']
  run.write_json('flags.json', s)
  run.write_json('environment.json', rundir.environment())
  run.write_json('policy.json', policy.to_dict())
  run.write_json('data.json', data_desc)
  logging.info('%s: %s on %s, %d members (%d seeds x %d kink values), '
               'legacy_relu_grad=%s; precision %s', run.path, s['model'],
               data_desc['name'], grid.members, grid.num_seeds,
               grid.num_kinks, legacy, policy)
  with policy.scope(), _Reporter(os.path.basename(run.path) or run.path,
                                 grid, run.path if tensorboard_dir else None
                                 ) as reporter:
    result = training.run_sweep(sweep.model, policy, grid, sweep.config,
                                train, test, out=run, log=logging.info,
                                reporter=reporter)
  members = training.member_table(grid)
  # The final weights, for orbax users (the .npz checkpoints resume).
  weights.save_members(run, result['state'], members,
                       epoch=result['history'][-1]['epoch'])
  summary = summarise(result['history'], members)
  run.write_json('summary.json', summary)
  title = (f'{s["model"]} {data_desc["name"]} {s["optimizer"]} lr {s["lr"]}'
           f' {policy.name}' + (' legacy ReLU grad' if legacy else ''))
  plot_run(run.path, result['history'], members, summary, title)
  return summary


LEGACY_RUNS = {'legacy_off': False, 'legacy_on': True}


def rule_name(legacy: bool) -> str:
  """``'legacy_on'`` (the 2021 code's assignment) or ``'legacy_off'``."""
  return next(k for k, v in LEGACY_RUNS.items() if v == legacy)


def final_line(summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
  """The line printed at the end: ``{'final_test_acc_mean': {rule:
  {label: accuracy}}}``, the same shape with or without
  ``--compare_legacy`` (which gives both rules)."""
  return {'final_test_acc_mean': {
      rule: {r['label']: round(r['test_acc_mean'], 4)
             for r in summary['per_kink']}
      for rule, summary in summaries.items()}}


@cli.main
def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  s = settings_from_flags()
  try:
    jaxkink.get_policy(s['precision'], check=False)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  train, test, desc, norm = load_data(s['dataset'], FLAGS.data_dir,
                                      FLAGS.train_examples,
                                      FLAGS.test_examples,
                                      FLAGS.data_source, FLAGS.data_order)
  logging.info('%d devices (%s); the member axis is sharded over them when '
               'they divide it', jax.device_count(),
               jax.devices()[0].device_kind)
  out = FLAGS.out
  if FLAGS.compare_legacy:
    sweeps = {name: prepare(s, legacy, train, test, norm)
              for name, legacy in LEGACY_RUNS.items()}
    paths = {name: os.path.join(out, name) for name in sweeps}
    top = {'compare_legacy': {n: w.settings for n, w in sweeps.items()}}
  else:
    sweeps = {'': prepare(s, FLAGS.legacy_relu_grad, train, test, norm)}
    paths = {'': out}
    top = None
  # Every directory is checked before any is written.
  if top is not None:
    rundir.RunDir.check(out, top)
  for name, sweep in sweeps.items():
    rundir.RunDir.check(paths[name], sweep.settings)
  with contextlib.ExitStack() as stack:
    if top is not None:
      top_dir = stack.enter_context(rundir.RunDir.open(out, top))
    summaries = {}
    for name, sweep in sweeps.items():
      run = stack.enter_context(rundir.RunDir.open(paths[name],
                                                   sweep.settings))
      summaries[name] = run_one(run, sweep, train, test, desc,
                                tensorboard_dir=FLAGS.tensorboard)
    if top is not None:
      top_dir.write_json('erratum.json', summaries)
      plot_erratum(top_dir.file('erratum.png'), {
          'multiplied (s * g, corrected)': summaries['legacy_off'],
          'assigned (s, 2021 code)': summaries['legacy_on']},
          f'{s["model"]} {desc["name"]} {s["precision"]}: ReLU\'(0) '
          'assigned vs multiplied')
  if top is None:  # the one sweep, under the name of its ReLU'(0) rule
    summaries = {rule_name(FLAGS.legacy_relu_grad): summaries['']}
  print(json.dumps(final_line(summaries)))


def run() -> None:
  """Runs the ``jaxkink-train`` command."""
  define_flags()
  cli.run(main, __doc__)


if __name__ == '__main__':
  run()
