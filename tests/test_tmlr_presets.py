"""The TMLR presets (``tmlr_fig1``, ``tmlr_table4``, ``tmlr_table2``) follow
the authors' procedure point for point, the TMLR quantities of
:mod:`jaxkink.zones` are right on hand-worked cases, and the summary puts
the paper's values beside ours.

The authors' procedure (``ryanboustany/MaxPool-numerical`` HEAD ec0eba5,
BUILD_NOTES.md issue 13 point 4): "thr" is
``notebooks/threshold_maxpool.ipynb`` (Table 4, the D histograms), "vol"
``notebooks/volume_estimation_by_architecture.ipynb`` (Table 2, Figure 4),
cells numbered from 0 as stored; ``maxpool.py``, ``relu.py``,
``data_utils.py``, ``models/lenet.py``, ``models/vgg.py``.
"""

from __future__ import annotations

import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxkink import data as data_lib
from jaxkink import models
from jaxkink import montecarlo as mc
from jaxkink import pooling
from jaxkink import zones
from jaxkink.kinks import Kinks
from jaxkink.experiments import volume
from jaxkink.experiments import volume_presets as presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(ROOT, '..', 'shared', 'data')


def _runs(name):
  return {run.label: run for run in presets.PRESETS[name].runs}


FIG1 = _runs('tmlr_fig1')
TABLE4 = _runs('tmlr_table4')
TABLE2 = _runs('tmlr_table2')


def _mnist_settings(flags):
  # thr cell 7 -> data_utils.get_mnist_loaders: the training set,
  # Normalize((0.5,), (0.5,)), DataLoader(batch_size=128).
  assert flags['dataset'] == 'mnist'
  assert flags['train_size'] is None
  assert flags['normalize'] is True
  assert not flags.get('augment', False)
  assert flags['batch_size'] == 128
  # thr cell 5: LeNet5(...) and net.apply(weight_reset): PyTorch's default
  # init ('pytorch', no init option); relu.py multiplies the upstream
  # gradient at the kink; compute_norms sums L1 norms over all parameters.
  assert flags['model'] == 'lenet5' and flags['model_opt'] == ()
  assert flags['legacy_relu_grad'] is False
  assert flags['first_layer_only'] is False


def test_fig1_pins_the_authors_settings():
  assert set(FIG1) == {'native_vs_minimal', 'native_vs_native',
                       'relu0_vs_relu1'}
  for run in FIG1.values():
    _mnist_settings(run.flags)
    # Figure 1's caption: M = 1000, 32 bits; Section 3.1: run on a CPU.
    assert run.flags['samples'] == 1000
    assert run.flags['precision'] == 'float32'
    # The minor / major split at Table 4's tau1 of LeNet-5 in 32 bits.
    assert run.flags['tau'] == 1e-6 == presets._pow10(
        presets.TABLE4_PRINTED['lenet5']['float32'][0])
  # P: MaxPool2DBeta(0) (native), Q: MaxPool2DBeta(1) (minimal), P~: P.
  assert FIG1['native_vs_minimal'].flags['kinks'] == 'pool:0,1'
  assert FIG1['native_vs_native'].flags['kinks'] == 'pool:0,0'
  assert FIG1['relu0_vs_relu1'].flags['kinks'] == 'relu:0,1'   # Figure 3
  paper = FIG1['native_vs_minimal'].paper
  assert paper.minor_pairs.value == 0.9878 and paper.major_pairs.value == 0.0122
  assert (paper.samples, paper.minibatches) == (1000, 469)   # ceil(60000/128)
  assert FIG1['native_vs_native'].paper.major_pairs.value == 0.0


@pytest.mark.parametrize('precision', presets.PRECISIONS)
def test_table4_lenet_rows_pin_the_authors_settings(precision):
  control = TABLE4[f'lenet5_control_{precision}']
  relu = TABLE4[f'lenet5_relu01_{precision}']
  for run in (control, relu):
    _mnist_settings(run.flags)
    # thr cell 8: nb_experiments = 100; diffMaxpool: 64 bits -> 1.
    assert run.flags['samples'] == {'float16': 100, 'float32': 100,
                                    'float64': 1}[precision]
    assert run.flags['precision'] == precision
    # Every pair is recorded (no early stop), and D is taken as it is.
    assert run.flags.get('tau', 0.0) == 0.0
  # tau1 (eq. 13, thr cell 11): native MaxPool and ReLU'(0) = 0 in both.
  assert control.flags['kinks'] == 'pool:0,0'
  # tau2 (eq. 14, thr cells 10, 12: the swapped alpha / beta arguments leave
  # both nets native): ReLU'(0) = 0 against 1.
  assert relu.flags['kinks'] == 'relu:0,1'
  tau1, tau2 = presets.TABLE4_PRINTED['lenet5'][precision]
  assert control.paper.tau_max.printed == tau1
  assert relu.paper.tau_min_nonzero.printed == tau2
  assert control.paper.tau_max.value == {'float16': 0.0, 'float32': 1e-6,
                                         'float64': 1e-14}[precision]
  assert relu.paper.tau_min_nonzero.value == {'float16': 1e-5,
                                              'float32': 1e-5,
                                              'float64': 0.0}[precision]


def test_table4_cifar_rows_use_the_augmented_loader():
  # thr: get_cifar10_loaders() -> the training loader with RandomCrop and
  # RandomHorizontalFlip; weight_reset: PyTorch's default init.
  for model in ('vgg11', 'resnet18'):
    for p in presets.PRECISIONS:
      flags = TABLE4[f'{model}_control_{p}'].flags
      assert flags['dataset'] == 'cifar10' and flags['augment'] is True
      assert flags['normalize'] is True and flags['batch_size'] == 128
      assert 'init_scheme=tmlr' not in flags['model_opt']
  # build_models: resnet18(norm_layer=nn.Identity): no batch norm.
  assert TABLE4['resnet18_relu01_float32'].flags['model_opt'] == (
      'batch_norm=False',)


@pytest.mark.parametrize('precision', presets.PRECISIONS)
def test_table2_pins_the_authors_settings(precision):
  run = TABLE2[f'vgg11_{precision}']
  flags = run.flags
  # vol cell 5: build_models('VGG11', precision, False): no batch norm;
  # init_weights: the 'tmlr' scheme.
  assert flags['model'] == 'vgg11'
  assert flags['model_opt'] == ('init_scheme=tmlr',)
  # vol cell 3: CIFAR10(train=True) with RandomCrop(32, padding=4),
  # RandomHorizontalFlip(), ToTensor(), Normalize; DataLoader(batch_size=128).
  assert flags['dataset'] == 'cifar10' and flags['train_size'] is None
  assert flags['augment'] is True and flags['normalize'] is True
  assert flags['batch_size'] == 128
  # vol cell 2: maxpool_native = MaxPool2DBeta(0), maxpool_custom =
  # MaxPool2DBeta(1), relu_0 in both.
  assert flags['kinks'] == 'pool:0,1'
  assert flags['legacy_relu_grad'] is False
  assert flags['first_layer_only'] is False
  # Section 3.2 / Table 2's caption: M = 1000; thresholds tau2_16, tau1_32,
  # tau1_64 of Table 4's VGG-11 CIFAR-10 row.
  assert flags['samples'] == 1000
  assert flags['tau'] == {'float16': 1e-1, 'float32': 1e-8,
                          'float64': 1e-14}[precision]
  tau1, tau2 = presets.TABLE4_PRINTED['vgg11'][precision]
  assert flags['tau'] == presets._pow10(tau2 if precision == 'float16'
                                         else tau1)
  # vol cell 5's own thresholds, shown beside.
  assert run.paper.taus[0][1] == {'float16': 1e-3, 'float32': 1e-7,
                                  'float64': 1e-15}[precision]
  theta, pairs = {'float16': (1.0, 1.0), 'float32': (1.0, 0.4667),
                  'float64': (0.0, 0.0)}[precision]
  assert run.paper.theta_in_zone.value == theta
  assert run.paper.impacted_pairs.value == pairs
  assert (run.paper.samples, run.paper.minibatches) == (1000, 391)
  assert run.paper.theta_in_zone.margin == pytest.approx(
      zones.hoeffding_margin(1000), abs=1e-4)
  assert run.paper.impacted_pairs.margin == pytest.approx(
      zones.mcdiarmid_margin(1000, 391), abs=1e-3)


def test_normalisation_constants_are_the_authors():
  # data_utils.py: MNIST Normalize((0.5,), (0.5,)); CIFAR-10 (0.4914,
  # 0.4822, 0.4465), (0.2023, 0.1994, 0.2010).
  table = data_lib.pixel_table('mnist', normalize=True)
  v = np.arange(256, dtype=np.float32) / np.float32(255)
  np.testing.assert_array_equal(table[:, 0],
                                (v - np.float32(0.5)) / np.float32(0.5))
  info = data_lib.get_info('cifar10')
  assert info.mean == (0.4914, 0.4822, 0.4465)
  assert info.std == (0.2023, 0.1994, 0.2010)


def _shapes(name, opts, x):
  model = models.get(name, **volume.parse_model_opts(opts))
  params = model.init(jax.random.key(0), x, Kinks())['params']
  return model, {'/'.join(str(getattr(k, 'key', k)) for k in path): v
                 for path, v in jax.tree_util.tree_flatten_with_path(
                     params)[0]}


def test_lenet5_is_the_authors_network():
  # models/lenet.py: Conv2d(1, 6, 5), ReLU, pool, Conv2d(6, 16, 5), ReLU,
  # pool, Linear(256, 120), ReLU, Linear(120, 84), ReLU, Linear(84, 10).
  model, p = _shapes('lenet5', (), jnp.zeros((1, 28, 28, 1)))
  kernels = sorted(v.shape for k, v in p.items() if k.endswith('kernel'))
  assert kernels == sorted([(5, 5, 1, 6), (5, 5, 6, 16), (256, 120),
                            (120, 84), (84, 10)])
  assert not any('scale' in k for k in p)     # batch_norm=False
  assert model.init_scheme == 'pytorch'


def test_vgg11_is_the_authors_network_with_their_init():
  # models/vgg.py cfg['VGG11'], no batch norm, Linear(512, 10); vol's
  # init_weights: conv U(+-sqrt(6 / fan_in)), bias 0; Linear N(0, 0.01^2).
  model, p = _shapes('vgg11', ('init_scheme=tmlr',),
                     jnp.zeros((1, 32, 32, 3)))
  assert model.init_scheme == 'tmlr' and not model.batch_norm
  convs = [v for k, v in p.items() if k.endswith('kernel') and v.ndim == 4]
  assert [c.shape[-1] for c in convs] == [64, 128, 256, 256, 512, 512, 512,
                                          512]
  assert model.stack().count('M') == 5
  first = convs[0]
  assert float(jnp.max(jnp.abs(first))) <= math.sqrt(6 / 27)
  dense = [v for k, v in p.items() if k.endswith('kernel') and v.ndim == 2]
  assert [d.shape for d in dense] == [(512, 10)]
  assert 0.005 < float(jnp.std(dense[0])) < 0.015
  assert all(float(jnp.max(jnp.abs(v))) == 0.0
             for k, v in p.items() if k.endswith('bias'))


def _authors_minimal_backward(x, g):
  """maxpool.py MaxPool2DMinimalFunction.backward, 2x2 / 2, in numpy
  (NHWC): mask = x == max, the cotangent to every maximum, divided by the
  number of maxima."""
  n, h, w, c = x.shape
  xr = x.reshape(n, h // 2, 2, w // 2, 2, c)
  out = xr.max(axis=(2, 4), keepdims=True)
  mask = xr == out
  dx = np.where(mask, g.reshape(n, h // 2, 1, w // 2, 1, c), np.float32(0))
  # dx_reshaped /= torch.sum(mask, ...): a float32 division.
  dx = dx / mask.sum(axis=(2, 4), keepdims=True).astype(np.float32)
  return dx.reshape(x.shape)


def _native_backward(x, g):
  """nn.MaxPool2d's backward on the CPU: the first maximum (row-major in
  the window) takes the whole cotangent."""
  n, h, w, c = x.shape
  dx = np.zeros_like(x)
  for i in range(h // 2):
    for j in range(w // 2):
      win = x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2, :].reshape(n, 4, c)
      first = np.argmax(win == win.max(axis=1, keepdims=True), axis=1)
      for b in range(n):
        for ch in range(c):
          a = first[b, ch]
          dx[b, 2 * i + a // 2, 2 * j + a % 2, ch] = g[b, i, j, ch]
  return dx


def test_native_and_minimal_pool_are_the_authors_rules():
  # MaxPool2DBeta(beta) = beta * minimal + (1 - beta) * native: beta = 0 and
  # 1 give exactly one of the two rules, forward values unchanged.
  x = np.array([[1, 1, 0, 2], [1, 0, 2, 2], [3, 1, 4, 4], [0, 3, 4, 4]],
               np.float32).reshape(1, 4, 4, 1)
  g = np.array([1.0, 2.0, 4.0, 8.0], np.float32).reshape(1, 2, 2, 1)
  for beta, want in ((0.0, _native_backward(x, g)),
                     (1.0, _authors_minimal_backward(x, g))):
    y, vjp = jax.vjp(lambda v: pooling.max_pool(v, (2, 2), (2, 2), beta=beta),
                     jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y).ravel(), [1, 2, 3, 4])
    np.testing.assert_array_equal(np.asarray(vjp(jnp.asarray(g))[0]), want)


def _records(l1, differs=None):
  l1 = np.asarray(l1, np.float64)
  differs = l1 > 0 if differs is None else np.asarray(differs, bool)
  m, r = l1.shape
  return mc.PairRecord(
      differs=differs, differs_first=differs, rel_l2=l1, rel_l2_first=l1,
      l1=l1, hits=differs[..., None].astype(np.int32),
      min_distance=np.zeros((m, r, 1)), computed=np.ones((m, r), bool),
      finite=np.ones((m, r), bool))


# 2 thetas x 4 minibatches: one exact zero, five minor, two major.
HAND = [[0.0, 3e-8, 6e-8, 2e-3], [5e-8, 1e-7, 9e-8, 4e-4]]


def test_variation_split_hand_case():
  s = zones.variation_split(_records(HAND), tau=1e-6)
  assert s['pairs'] == 8
  assert (s['none']['count'], s['minor']['count'],
          s['major']['count']) == (1, 5, 2)
  assert s['minor']['p'] == 5 / 8 and s['major']['p'] == 2 / 8
  assert s['minor']['margin'] == zones.mcdiarmid_margin(2, 4)
  assert s['minor']['margin_hoeffding_pairs'] == zones.hoeffding_margin(8)
  assert s['minor']['low'] == 0.0 and s['minor']['high'] == 1.0   # clipped
  # D == tau is minor (the paper's "D > tau" is the zone).
  assert zones.variation_split(_records(HAND), 1e-7)['minor']['count'] == 5


def test_thresholds_hand_case():
  t = zones.thresholds(_records(HAND))
  assert t['max'] == 2e-3 and t['max_pow10'] == pytest.approx(1e-3)
  # log10(3e-8) = -7.52 rounds to -8.
  assert t['min_nonzero'] == 3e-8
  assert t['min_nonzero_pow10'] == pytest.approx(1e-8)
  assert t['nonzero_pairs'] == 7 and t['pairs'] == 8
  empty = zones.thresholds(_records(np.zeros((1, 3))))
  assert empty['max'] == 0 and empty['min_nonzero'] == 0  # Table 4's "0"
  # The paper's Table 1: 5.96e-8 is "rounded to 1e-7".
  assert zones.pow10(5.960464477539063e-08) == pytest.approx(1e-7)
  assert zones.pow10(1.1920928955078125e-07) == pytest.approx(1e-7)
  assert zones.pow10(0.0) == 0.0
  with pytest.raises(ValueError):
    zones.pow10(-1.0)


def test_tau_table_and_decades_hand_case():
  rows = {r['tau']: r for r in zones.tau_table(_records(HAND),
                                               (0.0, 1e-7, 1e-3))}
  assert rows[0.0]['impacted_pairs']['count'] == 7
  assert rows[0.0]['theta_in_zone']['count'] == 2
  assert rows[1e-7]['impacted_pairs']['count'] == 2     # 2e-3, 4e-4
  assert rows[1e-3]['impacted_pairs']['count'] == 1
  assert rows[1e-3]['theta_in_zone']['p'] == 0.5
  h = zones.decade_histogram(HAND, -9, -1)
  d = dict(h['decades'])
  assert h['n'] == 8 and h['zero'] == 1 / 8
  assert d[-8] == 4 / 8            # 3e-8, 5e-8, 6e-8, 9e-8
  assert d[-7] == 1 / 8            # 1e-7 opens its decade
  assert d[-4] == 1 / 8 and d[-3] == 1 / 8
  assert h['below'] == 0 and h['above'] == 0
  assert sum(d.values()) + h['zero'] == 1.0


def test_summarize_carries_the_tmlr_quantities():
  s = zones.summarize(_records(HAND), tau=1e-6)
  assert s['variation_split']['major']['count'] == s['major_pairs'] == 2
  assert s['variation_split']['minor']['count'] == s['minor_pairs'] == 5
  assert s['thresholds']['max'] == 2e-3


def test_augment_is_recorded_and_changes_the_inputs(monkeypatch):
  monkeypatch.delenv('JAXKINK_DATA_DIR', raising=False)
  cfg = dict(model='lenet5', model_opt=(), kinks='pool:0,1',
             legacy_relu_grad=False, precision='float32', samples=2, chunk=2,
             batch_size=64, dataset='mnist', train_size=128, normalize=True,
             screen=True, seed=0, tau=0.0, first_layer_only=False,
             batch_norm_mode='batch', theta_loop='map')
  plain = volume.prepare(cfg, None)
  aug = volume.prepare({**cfg, 'augment': True}, None)
  assert 'augment' not in plain.settings['flags']    # old run dirs resume
  assert aug.settings['flags']['augment'] is True
  assert not np.array_equal(np.asarray(plain.x), np.asarray(aug.x))
  # Zero padding 4 then a crop: with the seed fixed, the same draw.
  again = volume.prepare({**cfg, 'augment': True}, None)
  np.testing.assert_array_equal(np.asarray(aug.x), np.asarray(again.x))
  assert volume.run_flags({**cfg, 'augment': False}) == volume.run_flags(cfg)


@pytest.mark.skipif(not os.path.exists(os.path.join(
    SHARED_DATA, volume.CIFAR10_SAMPLE_FILE)), reason='no CIFAR-10 sample')
def test_cifar10_sample_is_labelled_a_sample():
  ds = data_lib.read_cifar10_sample(os.path.relpath(SHARED_DATA))
  assert ds.name == 'cifar10' and len(ds) == 4000
  assert ds.source.startswith('sample: ') and not os.path.isabs(
      ds.source.split()[1])
  # R = ceil(4000 / 128) = 32, the last minibatch 4000 - 31 * 128 = 32.
  assert -(-len(ds) // 128) == 32 and len(ds) - 31 * 128 == 32


_ENV = {'backend': 'cpu', 'device_kind': 'cpu', 'device_count': 1,
        'process_count': 1, 'jax_enable_x64': True,
        'versions': {'jax': '0.10.2', 'jaxlib': '0.10.2', 'jaxkink': '0.1.0'}}


def test_summary_puts_the_tmlr_paper_values_beside_ours():
  runs = [FIG1['native_vs_minimal'], FIG1['native_vs_native'],
          TABLE4['lenet5_relu01_float32'], TABLE2['vgg11_float32']]
  summaries = [zones.summarize(_records(HAND), tau=1e-6)] * 4
  for s in summaries:
    s['tau_table'] = zones.tau_table(_records(HAND), volume.TAU_LADDER)
  headers = [dict(model=r.flags['model'], init='pytorch', kinks=r.flags[
      'kinks'], rule='kink value x upstream', test='full gradient',
                  samples=2, minibatches=4, batch_size=128, last_batch=96,
                  examples=60000, dataset_examples=60000,
                  dataset='mnist train', normalize=True, augment=False,
                  source='../shared/data/mnist', sample=False,
                  policy='float32', theta_loop='map', seed=0) for r in runs]
  text = volume.summary_markdown('TMLR', runs, headers, summaries, _ENV)
  assert '## TMLR quantities' in text
  split = next(l for l in text.splitlines()
               if l.startswith('| native_vs_minimal | 8 | 1e-06 |'))
  assert '62.5% [' in split and '25% [' in split        # 5/8 minor, 2/8 major
  assert ('| paper: TMLR Figure 1 (LeNet-5 MNIST, 32 bits, CPU) | 1000 x '
          '469 | | - | 98.78% | 1.22% |') in text
  assert '10^-5 (= 1e-05)' in text                     # Table 4's tau2
  assert 'vol cell 5 threshold' in text and '| 1e-07 |' in text
  assert "| paper: TMLR Table 2, 32 bits | 1000 | 391 | 100% [95.7, 100]" in (
      text)
  bounds = re.findall(r'\[(-?[0-9.e+-]+), (-?[0-9.e+-]+)\]', text)
  assert bounds and all(0 <= float(a) <= float(b) <= 100 for a, b in bounds)
  assert 'mkPlot.R' not in text            # Table 1's script table is not TMLR's


@pytest.mark.parametrize('name', ['tmlr_table2', 'tmlr_table4'])
def test_tmlr_plots_are_titled_and_labelled(tmp_path, name):
  runs = list(presets.PRESETS[name].runs)[:6]
  summaries = [zones.summarize(_records(HAND), tau=1e-6)] * len(runs)
  volume.plot(presets.PRESETS[name], runs, summaries, str(tmp_path),
              title=f'{name}: test')
  assert (tmp_path / 'volume.png').stat().st_size > 1000
  plt = volume.rundir.pyplot()
  fig, ax = plt.subplots()
  if name == 'tmlr_table2':
    volume._bars_panel(ax, runs, [s['impacted_pairs'] for s in summaries],
                       [r.paper.impacted_pairs for r in runs], 'y', 'ours')
    # The paper's markers beside our bars, clipped to [0, 100%].
    lines = [l for l in ax.lines if l.get_marker() == 'D']
    assert lines and list(lines[0].get_ydata()) == pytest.approx(
        [100.0, 46.67, 0.0])
  else:
    volume._thresholds_panel(ax, runs, summaries)
    assert ax.get_ylabel() == 'log10 threshold'
    marks = [l for l in ax.lines if l.get_marker() == 'D'][0].get_ydata()
    # lenet5 float16: tau1 0 (drawn at the zero level), tau2 1e-5.
    assert list(marks[:2]) == pytest.approx([volume._ZERO_LEVEL, -5.0])
  assert ax.get_xlabel()
  plt.close(fig)
