"""The ``fig2_*`` presets follow the authors' architecture notebook, carry
the numbers of their stored CSVs, and the sample-size panel is the
notebook's cumulative first-difference curve.

Sources (``deel-ai/relu-prime``, BUILD_NOTES.md issue 13, "Figure 2"):
``notebooks/volume_estimation_by_architecture.ipynb`` ("arch" below, cells
numbered from 0), ``notebooks/MNIST_volume_estimation.ipynb`` cells 2 and 4
("nb"), ``paper_results/section_3/volume_estimation_by_*_MNIST.csv``.
"""

from __future__ import annotations

import numpy as np
import pytest

from jaxkink import zones
from jaxkink.experiments import volume_presets as presets

SWEEPS = ('fig2_width', 'fig2_depth', 'fig2_batch_size')


def _runs(name):
  return presets.PRESETS[name].runs


@pytest.mark.parametrize('name', SWEEPS)
def test_sweeps_pin_the_architecture_notebook(name):
  for run in _runs(name):
    f = run.flags
    # arch cell 1: get_mlp_network puts a ReLU after every hidden Linear.
    assert f['model'] == 'mlp'
    widths = presets.widths_of(f['model_opt'])
    assert widths[-1] == 10
    # arch cell 1: relu_0 = ReLUAlpha(0), relu_1 = ReLUAlpha(1) (relu.py
    # assigns the kink value).
    assert f['legacy_relu_grad'] is True and f['kinks'] == 'relu:0,1'
    # arch cells 4, 8, 12: (net1[0].weight.grad - net2[0].weight.grad)
    # .abs().sum() != 0.
    assert f['first_layer_only'] is True
    # arch cell 2: ToTensor(), MNIST train, DataLoader in file order.
    assert f['dataset'] == 'mnist' and f['normalize'] is False
    assert f['train_size'] is None
    # arch cell 2: "full paper experiment: nb_experiments = 1000" (the CSV
    # counts reach 1000).
    assert f['samples'] == 1000
    assert f.get('tau', 0.0) == 0.0


def test_sweep_values_are_the_csvs():
  def xs(name, precision):
    return [r.x for r in _runs(name) if r.flags['precision'] == precision]
  # arch cell 4: for nb_layers in [1, 2, 3, 5, 6] (no 4), 256 neurons.
  assert xs('fig2_depth', 'float32') == [1, 2, 3, 5, 6]
  for r in _runs('fig2_depth'):
    assert presets.widths_of(r.flags['model_opt']) == (256,) * r.x + (10,)
    assert r.flags['batch_size'] == 256
  # arch cell 8: 3 hidden layers, nb_neurons in [16, 64, 256, 512, 1024].
  assert xs('fig2_width', 'float64') == [16, 64, 256, 512, 1024]
  for r in _runs('fig2_width'):
    assert presets.widths_of(r.flags['model_opt']) == (r.x,) * 3 + (10,)
  # The batch-size CSV: 16, 64, 256, 512, 1024, in 16 and 32 bits only.
  assert xs('fig2_batch_size', 'float16') == [16, 64, 256, 512, 1024]
  assert {r.flags['precision'] for r in _runs('fig2_batch_size')} == {
      'float16', 'float32'}
  for r in _runs('fig2_batch_size'):
    assert r.flags['batch_size'] == r.x
    assert presets.widths_of(r.flags['model_opt']) == (256,) * 3 + (10,)


# The stored CSVs, count of 1000 per (precision, x).
CSV = {
    'fig2_depth': {'float16': [871, 999, 1000, 1000, 1000],
                   'float32': [54, 258, 463, 647, 697],
                   'float64': [0, 0, 0, 0, 0]},
    'fig2_width': {'float16': [333, 1000, 1000, 1000, 1000],
                   'float32': [21, 163, 478, 582, 873],
                   'float64': [0, 0, 0, 0, 0]},
    'fig2_batch_size': {'float16': [1000] * 5,
                        'float32': [439, 453, 488, 351, 384]},
}


@pytest.mark.parametrize('name', SWEEPS)
def test_paper_values_are_the_csv_counts(name):
  for run in _runs(name):
    want = CSV[name][run.flags['precision']]
    values = [r.x for r in _runs(name)
              if r.flags['precision'] == run.flags['precision']]
    paper = run.paper.theta_in_zone
    assert paper.value == want[values.index(run.x)] / 1000
    assert run.paper.samples == 1000
  # arch cell 4: `if precision == 64: break` before the first minibatch.
  for run in _runs('fig2_depth'):
    if run.flags['precision'] == 'float64':
      assert 'not a measurement' in run.paper.theta_in_zone.note


def test_clean_sweeps_keep_our_setting():
  for name in SWEEPS + ('fig2_train_size',):
    for run in _runs(f'{name}_clean'):
      assert run.flags['model'] == 'mlp'
      assert not run.flags.get('legacy_relu_grad', False)
      assert not run.flags.get('first_layer_only', False)
      assert run.paper is None


def test_train_size_panel_is_the_table1_reference_run():
  """nb cell 2 is the Table-1 network and loop (build_models(nb_neurons=256,
  nb_hidden_layers=3) with the MNIST builder), recording each theta's first
  difference; nb cell 4 draws the cumulative proportion."""
  preset = presets.PRESETS['fig2_train_size']
  assert preset.plot == 'curve'
  table1 = {r.label: r for r in presets.PRESETS['table1'].runs}
  for run in preset.runs:
    ref = table1[f'reference_{run.flags["precision"]}'].flags
    assert run.flags == ref


def test_first_difference_curve_hand_case():
  # 3 thetas x 4 minibatches of 256, the last one 96 (as 864 examples).
  differs = np.array([[0, 0, 1, 0],
                      [1, 1, 0, 0],
                      [0, 0, 0, 0]], bool)
  c = zones.first_difference_curve(differs, [256, 256, 256, 96])
  np.testing.assert_array_equal(c['examples'], [256, 512, 768, 864])
  np.testing.assert_array_equal(c['thetas'], [1, 1, 2, 2])
  np.testing.assert_allclose(c['p'], [1 / 3, 1 / 3, 2 / 3, 2 / 3])
  margin = zones.hoeffding_margin(3)
  np.testing.assert_allclose(c['low'], np.maximum(c['p'] - margin, 0))
  np.testing.assert_allclose(c['high'], np.minimum(c['p'] + margin, 1))
  with pytest.raises(ValueError, match='minibatch'):
    zones.first_difference_curve(differs, [256, 256])
