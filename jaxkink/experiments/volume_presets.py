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
  minor_pairs: PaperValue | None = None
  major_pairs: PaperValue | None = None
  tau_max: PaperValue | None = None
  tau_min_nonzero: PaperValue | None = None
  taus: tuple[tuple[str, float], ...] = ()

  METRICS = ('theta_in_zone', 'impacted_pairs', 'rel_l2_first_quartiles')
  # The TMLR paper's quantities: Figure 1's split of the pairs (summary key
  # ``variation_split``), Table 4's thresholds (``thresholds``). ``taus``:
  # other thresholds the authors used, (what, tau), for which the summary
  # gives the zone too.
  TMLR_METRICS = ('minor_pairs', 'major_pairs', 'tau_max', 'tau_min_nonzero')


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


# --- Boustany, TMLR: ``ryanboustany/MaxPool-numerical`` (HEAD ec0eba5), the
# authors' procedure point for point (BUILD_NOTES.md, issue 13 point 4).
# "vol" is notebooks/volume_estimation_by_architecture.ipynb (Table 2 and
# Figure 4), "thr" notebooks/threshold_maxpool.ipynb (Table 4 and the
# histograms), cells numbered from 0 as stored.

TMLR_REPO = 'ryanboustany/MaxPool-numerical'

# thr cell 7 diffMaxpool -> data_utils.get_mnist_loaders: ToTensor(),
# Normalize((0.5,), (0.5,)), the training set, DataLoader(batch_size=128,
# shuffle=True): 469 minibatches, the last 96. thr cell 5 build_models:
# LeNet5 (models/lenet.py), net.apply(weight_reset), i.e. PyTorch's
# reset_parameters (float32 draws, then net.half() / net.double()); ReLUAlpha
# (relu.py: multiplies the upstream gradient); compute_norms: the sum over
# parameter tensors of torch.norm(p1.grad - p2.grad, 1), i.e. the L1 norm of
# the full gradient difference (Definition 7's D).
TMLR_MNIST = dict(model='lenet5', model_opt=(), dataset='mnist',
                  train_size=None, normalize=True, batch_size=128,
                  legacy_relu_grad=False, first_layer_only=False)

# vol cells 2, 3 and 5: VGG('VGG11') without batch norm, init_weights (conv
# kaiming_uniform_(fan_in, relu), bias 0; Linear N(0, 0.01^2), bias 0:
# 'tmlr'); CIFAR-10 train with RandomCrop(32, padding=4),
# RandomHorizontalFlip(), ToTensor(), Normalize(kuangliu's mean and std);
# DataLoader(batch_size=128), no shuffle: 391 minibatches, the last 80;
# MaxPool2DBeta(0) against MaxPool2DBeta(1), ReLUAlpha(0) in both.
TMLR_CIFAR_VOLUME = dict(model='vgg11', model_opt=('init_scheme=tmlr',),
                         dataset='cifar10', train_size=None, normalize=True,
                         augment=True, batch_size=128, kinks='pool:0,1',
                         legacy_relu_grad=False, first_layer_only=False)

# Section 3.2: "Thresholds tau2_16, tau1_32 and tau1_64 were consistently
# applied", Table 4's VGG-11 / CIFAR-10 row: 1e-1, 1e-8, 1e-14 on D (L1).
TMLR_TABLE2_TAU = {'float16': 1e-1, 'float32': 1e-8, 'float64': 1e-14}
# vol cell 5 (the one whose output is Table 2's kind of ratio) uses 1e-3,
# 1e-7, 1e-15 instead, on the sum over tensors of the L-infinity norms.
TMLR_NOTEBOOK_TAU = {'float16': 1e-3, 'float32': 1e-7, 'float64': 1e-15}
# The paper's M (Section 3.2, Table 2's caption); vol cell 5 ran M = 1.
TMLR_TABLE2_SAMPLES = 1000
# Figure 1's minor / major split: Table 4's tau1 of LeNet-5 in 32 bits (the
# threshold Section 3.2 applies in 32 bits); the paper's minor variations
# lie in [1e-8, 1e-7], the major ones around 1e-3, so the split is the same
# for any tau in the gap.
TMLR_FIG1_TAU = 1e-6
# thr cell 8: nb_experiments = 100; diffMaxpool: 64 bits -> 1.
TMLR_TABLE4_SAMPLES = {'float16': 100, 'float32': 100, 'float64': 1}

_HOEFFDING_1000 = 0.0429   # sqrt(ln(40) / 2000), A.6.3, n = M = 1000
_MCDIARMID_1000_391 = 0.081  # sqrt(0.5 (1/1000 + 1/391) ln 40)
_TABLE2_NOTE = ('Table 2 prints no interval; the margin is Appendix A.6.3\'s '
                'formula with the paper\'s M = 1000 and R = 391')


def _table2_paper(p: str, theta: str, pairs: str) -> Paper:
  return Paper(
      f'TMLR Table 2, {p[5:]} bits', TMLR_TABLE2_SAMPLES, 391,
      PaperValue(theta, float(theta.rstrip('%')) / 100, _HOEFFDING_1000,
                 _TABLE2_NOTE),
      PaperValue(pairs, float(pairs.rstrip('%')) / 100, _MCDIARMID_1000_391,
                 _TABLE2_NOTE),
      script=f'{TMLR_REPO} notebooks/volume_estimation_by_architecture.ipynb',
      taus=(('vol cell 5 threshold (its D is a sum of L-inf norms)',
             TMLR_NOTEBOOK_TAU[p]),))


TABLE2_PAPER = {
    'float16': _table2_paper('float16', '100%', '100%'),
    'float32': _table2_paper('float32', '100%', '46.67%'),
    'float64': _table2_paper('float64', '0%', '0%'),
}

FIG1_PAPER = Paper(
    'TMLR Figure 1 (LeNet-5 MNIST, 32 bits, CPU)', 1000, 469,
    minor_pairs=PaperValue('98.78%', 0.9878, None,
                           'Section 3.1: minor variations, between 1e-8 and '
                           '1e-7, "98.78% of parameters"; D > 0 in every '
                           'pair'),
    major_pairs=PaperValue('1.22%', 0.0122, None,
                           'Section 3.1: major variations, peaking at 1e-3'),
    script='(no script in the repository writes Figure 1; thr diffMaxpool '
    'computes the same D)')

FIG1_CONTROL_PAPER = Paper(
    'TMLR Figure 1, P against its copy', 1000, 469,
    minor_pairs=PaperValue('0%', 0.0, None, 'Section 3.1: "no variation in '
                           'backpropagation between P and P~"'),
    major_pairs=PaperValue('0%', 0.0))


def _pow10(text: str) -> float:
  return 0.0 if text == '0' else 10.0 ** float(text.split('^')[1])


# Table 4 (appendix A.6.2), as printed: (tau1, tau2) per precision.
TABLE4_PRINTED = {
    'lenet5': {'float16': ('0', '10^-5'), 'float32': ('10^-6', '10^-5'),
               'float64': ('10^-14', '0')},
    'vgg11': {'float16': ('0', '10^-1'), 'float32': ('10^-8', '10^-7'),
              'float64': ('10^-14', '0')},
    'resnet18': {'float16': ('10^-2', '1'), 'float32': ('10^-3', '10^-4'),
                 'float64': ('10^-13', '0')},
}
_TAU1_NOTE = ('tau1 (eq. 13) is the largest D of a program against its copy '
              'under nondeterministic GPU computations (A.6.1); XLA on the '
              'CPU is deterministic')
_TAU2_NOTE = ("tau2 (eq. 14): the smallest nonzero D of ReLU'(0) = 0 against "
              '1; 0: no nonzero D')


def _table4_run(label: str, flags: dict[str, Any], minibatches: int,
                tau: str, *, tau_max: PaperValue | None = None,
                tau_min_nonzero: PaperValue | None = None) -> Run:
  """One Table 4 run: its flags, and the paper's threshold ``tau``
  (``'tau1'`` or ``'tau2'``) as ``tau_max`` or ``tau_min_nonzero``."""
  model, p = flags['model'], flags['precision']
  return Run(label, flags, paper=Paper(
      f'TMLR Table 4, {model}, {p[5:]} bits, {tau}', TMLR_TABLE4_SAMPLES[p],
      minibatches, script=f'{TMLR_REPO} notebooks/threshold_maxpool.ipynb',
      tau_max=tau_max, tau_min_nonzero=tau_min_nonzero))


def _table4() -> tuple[Run, ...]:
  runs = []
  for model, ds, opt in (('lenet5', 'mnist', ()),
                         ('vgg11', 'cifar10', ()),
                         ('resnet18', 'cifar10', ('batch_norm=False',))):
    for p in PRECISIONS:
      tau1, tau2 = TABLE4_PRINTED[model][p]
      tau2 = '10^0' if tau2 == '1' else tau2
      common = {**TMLR_MNIST, 'model': model, 'model_opt': opt, 'dataset': ds,
                'samples': TMLR_TABLE4_SAMPLES[p], 'precision': p}
      if ds == 'cifar10':   # data_utils.get_cifar10_train_loader
        common['augment'] = True
      r = 469 if ds == 'mnist' else 391   # batch 128 over the training set
      # tau1, thr cell 11 (32 bits, build_models(..., beta=0, alpha=0)):
      # native MaxPool and ReLU'(0) = 0 in both networks.
      runs.append(_table4_run(f'{model}_control_{p}',
                              {**common, 'kinks': 'pool:0,0'}, r, 'tau1',
                              tau_max=PaperValue(tau1, _pow10(tau1), None,
                                                 _TAU1_NOTE)))
      # tau2, thr cells 10 and 12: diffMaxpool(..., alpha=0, beta=1) passes
      # them to build_models(network, precision, beta, alpha) in the wrong
      # order, so net2 is MaxPool2DBeta(0) (native) with ReLUAlpha(1): both
      # nets native, ReLU'(0) = 0 against 1.
      runs.append(_table4_run(f'{model}_relu01_{p}',
                              {**common, 'kinks': 'relu:0,1'}, r, 'tau2',
                              tau_min_nonzero=PaperValue(
                                  tau2, _pow10(tau2), None, _TAU2_NOTE)))
  return tuple(runs)


_CIFAR_POOL = dict(TMLR_CIFAR_VOLUME, samples=TMLR_TABLE2_SAMPLES)


def _tmlr_fig4() -> tuple[Run, ...]:
  # vol cells 10, 12, 14 (M = 1 there), thresholds 1e-3 / 1e-7 / 1e-15 on
  # the sum of L-inf norms; here D (L1) against Table 2's thresholds.
  runs = []
  for model in ('vgg11', 'vgg13', 'vgg16', 'vgg19'):
    for p in PRECISIONS:
      runs.append(Run(f'{model}_{p}', {**_CIFAR_POOL, 'model': model,
                                       'precision': p,
                                       'tau': TMLR_TABLE2_TAU[p]}))
  # vol cell 12 loops over (64, 256, 512, 1024) with build_models(network, ...),
  # network left at 'VGG19' by cell 10's loop: that panel is VGG19's (the
  # caption says VGG11); kept VGG11 here, as the caption.
  for b in (64, 256, 512, 1024):
    for p in PRECISIONS:
      runs.append(Run(f'vgg11_batch{b}_{p}', {**_CIFAR_POOL, 'model': 'vgg11',
                                              'batch_size': b, 'precision': p,
                                              'tau': TMLR_TABLE2_TAU[p]}))
  for bn in (False, True):
    for p in PRECISIONS:
      runs.append(Run(f'vgg11_bn{int(bn)}_{p}', {
          **_CIFAR_POOL, 'model': 'vgg11', 'precision': p,
          'tau': TMLR_TABLE2_TAU[p],
          'model_opt': ('init_scheme=tmlr', f'batch_norm={bn}')}))
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
        tuple(Run(f'vgg11_{p}', {**_CIFAR_POOL, 'precision': p,
                                 'tau': TMLR_TABLE2_TAU[p]},
                  paper=TABLE2_PAPER[p]) for p in PRECISIONS),
        'bars_pairs', description='TMLR Table 2: VGG11 CIFAR-10 (tmlr init, '
        'crop+flip, normalised, batch 128), native against minimal MaxPool, '
        'D (L1) > Table 4 thresholds 1e-1 / 1e-8 / 1e-14, 16/32/64 bits'),
    'tmlr_fig1': Preset(
        (Run('native_vs_minimal', {**TMLR_MNIST, 'kinks': 'pool:0,1',
                                   'samples': 1000, 'precision': 'float32',
                                   'tau': TMLR_FIG1_TAU}, paper=FIG1_PAPER),
         Run('native_vs_native', {**TMLR_MNIST, 'kinks': 'pool:0,0',
                                  'samples': 1000, 'precision': 'float32',
                                  'tau': TMLR_FIG1_TAU},
             paper=FIG1_CONTROL_PAPER),
         Run('relu0_vs_relu1', {**TMLR_MNIST, 'kinks': 'relu:0,1',
                                'samples': 1000, 'precision': 'float32',
                                'tau': TMLR_FIG1_TAU})),
        'histogram', description='TMLR Figures 1-3: LeNet-5 MNIST float32 '
        '(PyTorch init, inputs (x - 0.5) / 0.5, batch 128), histograms of the '
        'L1 backprop variation D; minor / major split at tau = 1e-6'),
    'tmlr_fig4': Preset(
        _tmlr_fig4(), 'bars', description='TMLR Figure 4: VGG sizes, '
        'minibatch sizes and batch norm, native against minimal MaxPool'),
    'tmlr_table4': Preset(
        _table4(), 'thresholds', description='TMLR Table 4: thresholds tau1 '
        '(max D of native MaxPool against itself) and tau2 (min nonzero D of '
        "ReLU'(0)=0 against 1), LeNet-5 MNIST, VGG11 and ResNet18 CIFAR-10, "
        'PyTorch init, batch 128'),
}
