"""The papers' volume experiments as lists of runs of ``volume.py``.

A preset is a list of :class:`Run` (a label and the flag values it sets) and
how to plot them: each run writes ``<out>/<label>/``, and the preset's plot
puts the runs side by side (``sweep``: the proportion of thetas in the zone
against the swept value, one line per precision; ``histogram``: the L1
differences ``D`` of every pair, one panel per comparison).

Sources: Bertoin et al., NeurIPS 2021 (Table 1, Figure 2, Figures 5 and 16 of
the appendix); Boustany, TMLR (Table 2, Figures 1-4, Table 4). Settings the
papers do not state are recorded in BUILD_NOTES.md (issue 6).
"""

from __future__ import annotations

import dataclasses
from typing import Any

PRECISIONS = ('float16', 'float32', 'float64')


@dataclasses.dataclass(frozen=True)
class PaperValue:
  """A number a paper prints, read as its authors' script computes it.

  Attributes:
    printed: the value as the paper prints it, e.g. ``'0.0002%'``.
    value: what it is in the units of our summary (a proportion in [0, 1],
      or a ``(Q1, median, Q3)`` triple), after ``note``'s reading; None
      when no reading is settled.
    margin: the paper's interval half-width, in the units of ``value``.
    note: one line, when the printed value needs a reading: how the
      authors' script computes it.
  """
  printed: str
  value: Any = None
  margin: float | None = None
  note: str = ''


@dataclasses.dataclass(frozen=True)
class Paper:
  """One column of a paper's table: what a run is compared with.

  The metric fields are named as the keys of
  :func:`jaxkink.zones.summarize`'s result; None: not printed.

  Attributes:
    source: e.g. ``"ReLU'(0) Table 1, 16 bits"``.
    samples: M of the authors' run (their notebook, not the caption).
    minibatches: R of the authors' run.
    script: the authors' script that computes the printed numbers.
  """
  source: str
  samples: int
  minibatches: int
  theta_in_zone: PaperValue | None = None
  impacted_pairs: PaperValue | None = None
  rel_l2_first_quartiles: PaperValue | None = None
  script: str = ''

  METRICS = ('theta_in_zone', 'impacted_pairs', 'rel_l2_first_quartiles')


@dataclasses.dataclass(frozen=True)
class Run:
  """One run: ``label`` (its sub-directory), the flags it sets, for sweeps
  its value on the x axis, and the paper column it is compared with."""
  label: str
  flags: dict[str, Any]
  x: Any = None
  paper: Paper | None = None


@dataclasses.dataclass(frozen=True)
class Preset:
  """Runs and how to plot them.

  Attributes:
    runs: the runs, in order.
    plot: ``'bars'``, ``'sweep'`` or ``'histogram'``.
    x: for sweeps, the flag plotted on the x axis.
    description: one line for ``--helpshort`` and the run's summary.
  """
  runs: tuple[Run, ...]
  plot: str = 'bars'
  x: str | None = None
  description: str = ''


_MNIST = dict(dataset='mnist', normalize=False, batch_size=256,
              kinks='relu:0,1', samples=1000)


def _mlp(widths) -> dict[str, Any]:
  return dict(model='mlp', model_opt=(f'widths={",".join(map(str, widths))}',))


def widths_of(model_opt) -> tuple[int, ...] | None:
  """The ``widths=`` option of a run's ``model_opt``, as integers."""
  for opt in model_opt:
    key, _, value = opt.partition('=')
    if key == 'widths':
      return tuple(int(v) for v in value.split(','))
  return None


# deel-ai/relu-prime, notebooks/MNIST_volume_estimation.ipynb, the cell that
# writes norm_diff_estimation_MNIST.csv (cell 6): ``nb_experiments = 1000``,
# then ``if precision == 64: nb_experiments = 10``.
REFERENCE_SAMPLES = {'float16': 1000, 'float32': 1000, 'float64': 10}

# That cell, point for point (BUILD_NOTES.md, issue 13): the MLP builder
# with no activation after the first Linear; relu.py's ReLUAlpha, whose
# backward assigns the kink value at an exact zero; ToTensor() only;
# DataLoader(batch_size=256): file order, the last partial batch of 96 kept;
# torch.equal and the norms on net[0].weight.grad only.
REFERENCE = dict(model='mlp_reference', model_opt=(),
                 legacy_relu_grad=True, first_layer_only=True,
                 dataset='mnist', train_size=None, normalize=False,
                 batch_size=256, kinks='relu:0,1')

_MKPLOT = 'deel-ai/relu-prime paper_results/section_3/mkPlot.R'
_LINE2 = ('mkPlot.R prints 100 x (impacted pairs) / (M R), divided by M = '
          '1000 a second time: the printed {} is {} of the pairs')
_LINE3 = ('mkPlot.R prints summary(diff_L2 / net1_L2) over the pairs with '
          'same == "False": a plain ratio, of the first-layer weight gradient '
          "only; it is large because relu.py assigns ReLU'(0) = 1 in place "
          'of the upstream gradient')

# NeurIPS 2021, Table 1 (HCI: +-5% on line 1, +-0.3% on line 2).
TABLE1_PAPER = {
    'float16': Paper(
        "ReLU'(0) Table 1, 16 bits", 1000, 235,
        PaperValue('100%', 1.0, 0.05),
        PaperValue('0.05%', 0.5, 0.003, _LINE2.format('0.05%', '50%')),
        PaperValue('98, 117, 137', (98.0, 117.0, 137.0), None, _LINE3),
        _MKPLOT),
    'float32': Paper(
        "ReLU'(0) Table 1, 32 bits", 1000, 235,
        PaperValue('40%', 0.4, 0.05),
        PaperValue('0.0002%', 0.002, 0.003,
                   _LINE2.format('0.0002%', '0.2%')),
        PaperValue('19, 25, 47', (19.0, 25.0, 47.0), None, _LINE3),
        _MKPLOT),
    'float64': Paper(
        "ReLU'(0) Table 1, 64 bits", 10, 235,
        PaperValue('0%', 0.0, 0.05,
                   'mkPlot.R computes no 64-bit line; the notebook ran M = '
                   '10 thetas in 64 bits, so the HCI is +-43%, not +-5%'),
        PaperValue('0%', 0.0, 0.003),
        PaperValue('0, 0, 0', None, None,
                   'no impacted pair: the quartiles are undefined'), _MKPLOT),
}


def _table1() -> tuple[Run, ...]:
  runs = []
  for p in PRECISIONS:
    runs.append(Run(f'reference_{p}', {**_MNIST, **REFERENCE, 'precision': p,
                                       'samples': REFERENCE_SAMPLES[p]},
                    paper=TABLE1_PAPER[p]))
  for p in PRECISIONS:
    runs.append(Run(f'clean_{p}', {**_MNIST, **_mlp((256, 256, 256, 10)),
                                   'precision': p}, paper=TABLE1_PAPER[p]))
  return tuple(runs)


def _sweep(name: str, values, make) -> tuple[Run, ...]:
  return tuple(Run(f'{name}{v}_{p}', {**_MNIST, **make(v), 'precision': p},
                   x=v)
               for v in values for p in PRECISIONS)


def _vgg_resnet_bn() -> tuple[Run, ...]:
  runs = []
  for model in ('vgg11', 'resnet18'):
    for bn in (False, True):
      for p in PRECISIONS:
        runs.append(Run(f'{model}_bn{int(bn)}_{p}', dict(
            model=model, model_opt=(f'batch_norm={bn}',), dataset='cifar10',
            normalize=True, batch_size=128, kinks='relu:0,1', samples=100,
            precision=p)))
  return tuple(runs)


_CIFAR_POOL = dict(dataset='cifar10', normalize=True, batch_size=128,
                   kinks='pool:0,1', samples=1000)


def _tmlr_fig4() -> tuple[Run, ...]:
  runs = []
  for model in ('vgg11', 'vgg13', 'vgg16', 'vgg19'):
    for p in PRECISIONS:
      runs.append(Run(f'{model}_{p}', {**_CIFAR_POOL, 'model': model,
                                       'precision': p}))
  for b in (16, 32, 64, 128, 256):
    for p in PRECISIONS:
      runs.append(Run(f'vgg11_batch{b}_{p}', {**_CIFAR_POOL, 'model': 'vgg11',
                                              'batch_size': b,
                                              'precision': p}))
  for bn in (False, True):
    for p in PRECISIONS:
      runs.append(Run(f'vgg11_bn{int(bn)}_{p}', {
          **_CIFAR_POOL, 'model': 'vgg11', 'precision': p,
          'model_opt': (f'batch_norm={bn}',)}))
  return tuple(runs)


def _tmlr_table4() -> tuple[Run, ...]:
  runs = []
  for model, ds in (('lenet5', 'mnist'), ('vgg11', 'cifar10'),
                    ('resnet18', 'cifar10')):
    for p in PRECISIONS:
      common = dict(model=model, dataset=ds, normalize=True, batch_size=128,
                    samples=100, precision=p)
      # tau1: the same program twice (P against a copy of P).
      runs.append(Run(f'{model}_control_{p}', {**common, 'kinks': 'pool:1,1'}))
      # tau2: the smallest nonzero variation between ReLU'(0) = 0 and 1.
      runs.append(Run(f'{model}_relu01_{p}', {**common, 'kinks': 'relu:0,1'}))
  return tuple(runs)


# deel-ai/relu-prime, notebooks/volume_estimation_by_architecture.ipynb
# (Figure 2's width, depth and batch-size panels; BUILD_NOTES.md, issue 13):
# get_mlp_network puts a ReLU after every hidden Linear (unlike Table 1's
# builder); relu.py's assigning ReLUAlpha; the test is on the first layer's
# weight gradient; nb_experiments = 1000 for the paper (the CSV counts).
FIG2 = dict(legacy_relu_grad=True, first_layer_only=True, dataset='mnist',
            train_size=None, normalize=False, batch_size=256,
            kinks='relu:0,1', samples=1000)

_FIG2_SCRIPT = ('deel-ai/relu-prime paper_results/section_3/'
                'volume_estimation_by_{}_MNIST.csv (count / 1000)')
_NO_F64 = ("the notebook's layers cell breaks before the first minibatch in "
           '64 bits (`if precision == 64: break`): the 0 is not a '
           'measurement')

# The stored CSVs: thetas in S out of 1000, per precision, in sweep order.
FIG2_COUNTS = {
    'depth': ((1, 2, 3, 5, 6), 'number_of_layers', {
        'float16': (871, 999, 1000, 1000, 1000),
        'float32': (54, 258, 463, 647, 697),
        'float64': (0, 0, 0, 0, 0)}),
    'width': ((16, 64, 256, 512, 1024), 'number_of_neurons', {
        'float16': (333, 1000, 1000, 1000, 1000),
        'float32': (21, 163, 478, 582, 873),
        'float64': (0, 0, 0, 0, 0)}),
    'batch_size': ((16, 64, 256, 512, 1024), 'batch_size', {
        'float16': (1000,) * 5,
        'float32': (439, 453, 488, 351, 384)}),
}


def _fig2_paper(panel: str, precision: str, x: Any) -> Paper:
  values, csv, counts = FIG2_COUNTS[panel]
  k = counts[precision][values.index(x)]
  note = _NO_F64 if panel == 'depth' and precision == 'float64' else ''
  # The caption's +-5% is the Hoeffding margin at M = 1000 (4.3%).
  batch = x if panel == 'batch_size' else 256
  return Paper(f"ReLU'(0) Figure 2, {panel} {x}, {precision[5:]} bits", 1000,
               -(-60000 // batch),
               PaperValue(f'{k}/1000', k / 1000, 0.05, note),
               script=_FIG2_SCRIPT.format(csv))


def _fig2(panel: str, make) -> tuple[Run, ...]:
  values, _, counts = FIG2_COUNTS[panel]
  return tuple(Run(f'{panel}{v}_{p}', {**FIG2, **make(v), 'precision': p},
                   x=v, paper=_fig2_paper(panel, p, v))
               for v in values for p in PRECISIONS if p in counts)


def _fig2_train_size() -> tuple[Run, ...]:
  # MNIST_volume_estimation.ipynb cell 2: Table 1's network and loop,
  # recording the minibatch of each theta's first difference; cell 4 draws
  # the proportion of thetas whose first difference came by minibatch i.
  return tuple(Run(r.label, r.flags) for r in _table1()
               if r.label.startswith('reference_'))


PRESETS: dict[str, Preset] = {
    'table1': Preset(
        _table1(), 'bars',
        description="ReLU'(0) Table 1: MLP 784-256x3-10, MNIST, batch 256, "
        '16/32/64 bits; the reference notebook variant (no ReLU after layer '
        "1, assigning ReLU'(0), first-layer weight gradient, M = 1000 / 1000 "
        '/ 10) and the clean one (M = 1000)'),
    'fig2_train_size': Preset(
        _fig2_train_size(), 'curve', 'examples',
        "ReLU'(0) Figure 2, first panel (MNIST_volume_estimation.ipynb cells "
        "2, 4): Table 1's reference network; theta in S against the examples "
        'seen, from one run per precision'),
    'fig2_width': Preset(
        _fig2('width', lambda v: _mlp((v,) * 3 + (10,))), 'sweep', 'width',
        "ReLU'(0) Figure 2, second panel (architecture notebook): 3 hidden "
        "layers, ReLU after each, assigning ReLU'(0), first-layer weight "
        'gradient, varying the width'),
    'fig2_depth': Preset(
        _fig2('depth', lambda v: _mlp((256,) * v + (10,))), 'sweep', 'depth',
        "ReLU'(0) Figure 2, third panel (architecture notebook): width 256, "
        'varying the depth'),
    'fig2_batch_size': Preset(
        _fig2('batch_size', lambda v: {**_mlp((256,) * 3 + (10,)),
                                       'batch_size': v}),
        'sweep', 'batch_size',
        "ReLU'(0) Figure 2, fourth panel (architecture notebook): 3x256, "
        'varying the minibatch size, 16 and 32 bits'),
    # Our corrected setting (multiplying rule, full gradient), at the values
    # the caption suggests.
    'fig2_train_size_clean': Preset(
        _sweep('train_size', (1000, 5000, 10000, 30000, 60000),
               lambda v: {**_mlp((256,) * 4 + (10,)), 'train_size': v}),
        'sweep', 'train_size',
        "ReLU'(0) Figure 2, first panel, clean: 4 hidden layers of 256, "
        'varying the training-set size'),
    'fig2_width_clean': Preset(
        _sweep('width', (16, 32, 64, 128, 256, 512, 1024),
               lambda v: _mlp((v,) * 3 + (10,))), 'sweep', 'width',
        "ReLU'(0) Figure 2, second panel, clean: 3 hidden layers, varying "
        'the width'),
    'fig2_depth_clean': Preset(
        _sweep('depth', (1, 2, 3, 4, 5, 6),
               lambda v: _mlp((256,) * v + (10,))), 'sweep', 'depth',
        "ReLU'(0) Figure 2, third panel, clean: width 256, varying the depth"),
    'fig2_batch_size_clean': Preset(
        _sweep('batch_size', (16, 32, 64, 128, 256, 512),
               lambda v: {**_mlp((256,) * 3 + (10,)), 'batch_size': v}),
        'sweep', 'batch_size',
        "ReLU'(0) Figure 2, fourth panel, clean: 3x256, varying the "
        'minibatch size'),
    'fig5_vgg_resnet': Preset(
        _vgg_resnet_bn(), 'bars',
        description="ReLU'(0) Figures 5 and 16: VGG11 and ResNet18 on "
        'CIFAR-10 with and without batch norm'),
    'tmlr_table2': Preset(
        tuple(Run(f'vgg11_{p}', {**_CIFAR_POOL, 'model': 'vgg11',
                                 'precision': p}) for p in PRECISIONS),
        'bars', description='TMLR Table 2: VGG11 CIFAR-10, native against '
        'minimal MaxPool, 16/32/64 bits'),
    'tmlr_fig1': Preset(
        tuple(Run(label, dict(model='lenet5', dataset='mnist', normalize=True,
                              batch_size=128, samples=1000,
                              precision='float32', kinks=k))
              for label, k in (('native_vs_minimal', 'pool:0,1'),
                               ('native_vs_native', 'pool:0,0'),
                               ('relu0_vs_relu1', 'relu:0,1'))),
        'histogram', description='TMLR Figures 1-3: LeNet-5 MNIST float32, '
        'histograms of the L1 backprop variation D'),
    'tmlr_fig4': Preset(
        _tmlr_fig4(), 'bars', description='TMLR Figure 4: VGG sizes, '
        'minibatch sizes and batch norm, native against minimal MaxPool'),
    'tmlr_table4': Preset(
        _tmlr_table4(), 'bars', description='TMLR Table 4: thresholds tau1 '
        '(max D of a program against itself) and tau2 (min nonzero D of '
        "ReLU'(0)=0 against 1)"),
}
