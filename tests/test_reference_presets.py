"""The ``table1`` preset's reference rows follow the authors' procedure point
for point, the first-layer relative L2 is the notebook's ``diff_L2 /
net1_L2``, and the summary says what was run.

The authors' procedure (``deel-ai/relu-prime``, BUILD_NOTES.md issue 13):
``notebooks/MNIST_volume_estimation.ipynb``, the cell that writes
``norm_diff_estimation_MNIST.csv`` (cell 6 of the notebook; "nb" below),
``relu.py`` and ``paper_results/section_3/mkPlot.R`` ("R" below).
"""

from __future__ import annotations

import functools
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxkink
from jaxkink import montecarlo as mc
from jaxkink import models
from jaxkink import zones
from jaxkink.hits import TapedKinks
from jaxkink.experiments import volume
from jaxkink.experiments import volume_presets as presets

TABLE1 = {run.label: run for run in presets.PRESETS['table1'].runs}


@pytest.mark.parametrize('precision', presets.PRECISIONS)
def test_reference_rows_pin_the_notebook_settings(precision):
  flags = TABLE1[f'reference_{precision}'].flags
  # nb cell 0: get_mlp_network(nb_neurons=256, nb_hidden_layers=3), no
  # activation after modules[0] = Linear(784, 256).
  assert flags['model'] == 'mlp_reference'
  assert flags['model_opt'] == ()
  # relu.py ReLUAlphaFunction.backward: grad_input[input == 0] = ctx.alpha.
  assert flags['legacy_relu_grad'] is True
  # nb: relu_0 = ReLUAlpha(0) for net1, relu_1 = ReLUAlpha(1) for net2.
  assert flags['kinks'] == 'relu:0,1'
  # nb: torch.equal(net1[0].weight.grad, net2[0].weight.grad).
  assert flags['first_layer_only'] is True
  # nb: datasets.MNIST(train=True, transform=transforms.ToTensor()).
  assert flags['dataset'] == 'mnist'
  assert flags['normalize'] is False
  assert flags['train_size'] is None
  # nb: DataLoader(train_data, batch_size=256): no shuffle, drop_last=False.
  assert flags['batch_size'] == 256
  # nb: nb_experiments = 1000; `if precision == 64: nb_experiments = 10`.
  assert flags['samples'] == {'float16': 1000, 'float32': 1000,
                              'float64': 10}[precision]
  # nb: net.half() / net.double(), x.half() / x.double().
  assert flags['precision'] == precision
  # nb: every minibatch of every theta, no early stop: no screening knob
  # changes that (screening is exact), and tau = 0 is "any difference".
  assert flags.get('tau', 0.0) == 0.0


@pytest.mark.parametrize('precision', presets.PRECISIONS)
def test_clean_rows_are_unchanged(precision):
  flags = TABLE1[f'clean_{precision}'].flags
  assert flags['model'] == 'mlp'
  assert flags['model_opt'] == ('widths=256,256,256,10',)
  assert not flags.get('legacy_relu_grad', False)
  assert not flags.get('first_layer_only', False)
  assert flags['samples'] == 1000 and flags['batch_size'] == 256
  assert flags['normalize'] is False


def test_every_table1_row_is_compared_with_its_paper_column():
  for label, run in TABLE1.items():
    paper = run.paper
    assert paper is presets.TABLE1_PAPER[run.flags['precision']], label
    # nb: 235 minibatches of 256 (the last one 96); M as in the notebook.
    assert paper.minibatches == 235
    assert paper.samples == presets.REFERENCE_SAMPLES[run.flags['precision']]


def test_paper_values_as_mkplot_computes_them():
  p16, p32, p64 = (presets.TABLE1_PAPER[p] for p in presets.PRECISIONS)
  # Table 1 line 1 as printed; R: % of run_id with some diff_L1 > 0.
  assert [p.theta_in_zone.value for p in (p16, p32, p64)] == [1.0, 0.4, 0.0]
  assert p32.theta_in_zone.printed == '40%'
  # Line 2: R prints 100 * sum(diff_L1 > 0) / nrow / max(run_id + 1), i.e.
  # the percentage of pairs divided by M = 1000 again.
  for paper, printed in ((p16, 0.05), (p32, 0.0002)):
    assert paper.impacted_pairs.printed == f'{printed}%'
    assert paper.impacted_pairs.value == pytest.approx(printed * 1000 / 100)
  # HCI +-0.3% of line 2: Hoeffding with n = M Q = 1000 x 235.
  assert zones.hoeffding_margin(1000 * 235) == pytest.approx(0.003, abs=3e-4)
  # Line 3: R's summary(diff_L2 / net1_L2): the quartiles, as printed.
  assert p16.rel_l2_first_quartiles.value == (98.0, 117.0, 137.0)
  assert p32.rel_l2_first_quartiles.value == (19.0, 25.0, 47.0)


@functools.lru_cache(maxsize=None)
def _reference_init(policy: str):
  """``mlp_reference``'s variables for one key, as the engine draws them
  (threefry, not partitionable)."""
  model = models.get('mlp_reference', policy=policy)
  with jax.threefry_partitionable(False):
    return model, model.init(jax.random.key(3), jnp.zeros((1, 784)),
                             jaxkink.Kinks())


def test_reference_network_has_no_relu_after_the_first_layer():
  """The forward of ``mlp_reference`` against NumPy: Linear, Linear, ReLU,
  Linear, ReLU, Linear (nb cell 0), and two kinked calls only."""
  model, variables = _reference_init('float32')
  x = jax.random.uniform(jax.random.key(1), (5, 784))
  p = jax.tree.map(np.asarray, variables['params'])
  dense = [p[f'Dense_{i}'] for i in range(4)]
  assert [d['kernel'].shape for d in dense] == [
      (784, 256), (256, 256), (256, 256), (256, 10)]
  h = np.asarray(x, np.float64) @ dense[0]['kernel'] + dense[0]['bias']
  h = np.maximum(h @ dense[1]['kernel'] + dense[1]['bias'], 0)
  h = np.maximum(h @ dense[2]['kernel'] + dense[2]['bias'], 0)
  want = h @ dense[3]['kernel'] + dense[3]['bias']
  taped = TapedKinks.of(jaxkink.Kinks())
  got, ops = jax.jit(lambda v, x: (model.apply(v, x, taped),
                                    len(taped.tape)))(variables, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert ops == 2   # two ReLUs, after layers 2 and 3
  assert 'batch_stats' not in variables   # batchnorm=False


def test_reference_init_is_pytorch_default_drawn_in_float32():
  """nn.Linear's default: weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
  drawn in float32 (the nets are built in float32), then .half()."""
  p32, p16 = (_reference_init(p)[1]['params'] for p in ('float32', 'float16'))
  for name, fan_in in (('Dense_0', 784), ('Dense_1', 256), ('Dense_3', 256)):
    bound = 1 / math.sqrt(fan_in)
    for leaf in ('kernel', 'bias'):
      a = np.asarray(p32[name][leaf])
      assert a.dtype == np.float32
      assert np.abs(a).max() <= bound
      if a.size >= 256:   # not the 6 / fan_in of Kaiming-uniform for ReLU
        assert np.abs(a).max() > 0.9 * bound
      np.testing.assert_array_equal(np.asarray(p16[name][leaf]),
                                    a.astype(np.float16))


def test_inputs_are_totensor_values_cast():
  # ToTensor: uint8 / 255 in float32; then x.half() / x.double().
  want = np.arange(256, dtype=np.float32) / np.float32(255)
  for dtype in (np.float16, np.float32, np.float64):
    table = jaxkink.data.pixel_table('mnist', normalize=False, dtype=dtype)
    np.testing.assert_array_equal(table[:, 0], want.astype(dtype))


def test_last_partial_minibatch_is_kept():
  # DataLoader(drop_last=False): 60000 = 234 x 256 + 96, R = 235.
  x = np.zeros((60000, 1), np.float32)
  (xs, _), tail = mc.stack_batches(x, np.zeros(60000, np.int32), 256)
  assert xs.shape[0] == 234 and tail[0].shape == (1, 96, 1)


# ----------------------------------------------- the first-layer rel. L2 field

# Exact dyadic weights: for x = (1, 2) the second layer's first unit is
# 1 * 2 + 2 * (-1) + 0 = 0 exactly, a ReLU kink; for x = (1, 1) no unit is 0.
_W = [np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[2.0, 0.5], [-1.0, 0.25]]),
      np.array([[1.0, -0.5], [0.75, 1.0]])]
_B = [np.array([0.0, 0.0]), np.array([0.0, 0.125]), np.array([0.5, -0.25])]


class _Tiny(nn.Module):
  """Linear, Linear, ReLU, Linear with fixed weights (the reference layout)."""

  @nn.compact
  def __call__(self, x, kinks, train=False):
    del train
    for i in range(3):
      x = nn.Dense(2, kernel_init=lambda *_, i=i: jnp.asarray(_W[i],
                                                               jnp.float32),
                   bias_init=lambda *_, i=i: jnp.asarray(_B[i], jnp.float32))(x)
      if i == 1:
        x = kinks.relu(x)
    return x


def _numpy_grads(x, y, s):
  """Kernel gradients of the mean cross-entropy, by hand, with relu.py's
  assigning backward (``grad[input == 0] = s``)."""
  z1 = x @ _W[0] + _B[0]
  z2 = z1 @ _W[1] + _B[1]
  a2 = np.maximum(z2, 0)
  logits = a2 @ _W[2] + _B[2]
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  dlogits = (p - np.eye(2)[y]) / len(y)
  da2 = dlogits @ _W[2].T
  dz2 = np.where(z2 > 0, da2, 0.0)
  dz2 = np.where(z2 == 0, s, dz2)
  dz1 = dz2 @ _W[1].T
  return [x.T @ dz1, dz1.sum(0), z1.T @ dz2, dz2.sum(0), a2.T @ dlogits,
          dlogits.sum(0)]


@pytest.mark.parametrize('screen', [False, True])
def test_first_layer_rel_l2_against_numpy(screen):
  policy = jaxkink.get_policy('float32')
  pair = mc.kink_pair('relu', (0, 1), legacy_relu_grad=True)
  fn = jax.jit(mc.make_chunk_fn(_Tiny(), policy, pair, screen=screen))
  # Minibatch 0 holds the kink, minibatch 1 does not.
  x = np.array([[[1.0, 2.0], [0.5, 1.0]], [[1.0, 1.0], [2.0, 1.0]]])
  y = np.array([[0, 1], [1, 0]])
  keys = jax.random.split(jax.random.key(0), 1)
  rec = jax.tree.map(np.asarray, fn(keys, jnp.asarray(x, jnp.float32),
                                    jnp.asarray(y)))
  for b in range(2):
    g0, g1 = _numpy_grads(x[b], y[b], 0.0), _numpy_grads(x[b], y[b], 1.0)
    first = np.linalg.norm(g1[0] - g0[0]) / np.linalg.norm(g0[0])
    full = math.sqrt(sum(np.sum((c - a) ** 2) for a, c in zip(g0, g1))
                     / sum(np.sum(a ** 2) for a in g0))
    np.testing.assert_allclose(rec.rel_l2_first[0, b], first, rtol=1e-5)
    np.testing.assert_allclose(rec.rel_l2[0, b], full, rtol=1e-5)
    assert rec.differs_first[0, b] == (first > 0)
  assert rec.rel_l2_first[0, 0] > 1   # the assigned 1 dwarfs the gradient
  assert rec.rel_l2_first[0, 1] == 0 and not rec.differs[0, 1]
  # The bias is not in it: the first-layer ratio is not the full ratio.
  assert rec.rel_l2_first[0, 0] != pytest.approx(rec.rel_l2[0, 0])
  # Screened, minibatch 1 (no kink hit) is skipped: its fields are zeros.
  assert rec.computed.tolist() == [[True, not screen]]


def test_mkplot_lines_hand_case():
  differs = np.array([[0, 1, 1], [0, 0, 0]], bool)
  rel_first = np.array([[0.0, 20.0, 30.0], [0.0, 0.0, 0.0]])
  rec = mc.PairRecord(
      differs=differs, differs_first=differs, rel_l2=rel_first / 100,
      rel_l2_first=rel_first, l1=rel_first, hits=np.ones((2, 3, 1), np.int32),
      min_distance=np.zeros((2, 3, 1)), computed=np.ones((2, 3), bool),
      finite=np.ones((2, 3), bool))
  k = zones.mkplot_lines(rec)
  assert k['run_affected_pct'] == 50.0                    # 1 of 2 thetas
  assert k['minibatch_affected_pct'] == pytest.approx(100 * 2 / 6)
  assert k['minibatch_affected_pct_printed'] == pytest.approx(100 * 2 / 6 / 2)
  # R: summary(c(20, 30)): min 20, Q1 22.5, median 25, mean 25, Q3 27.5.
  assert k['relative_difference'] == {'min': 20.0, 'q1': 22.5, 'median': 25.0,
                                      'mean': 25.0, 'q3': 27.5, 'max': 30.0}
  s = zones.summarize(rec, first_layer_only=True)
  assert s['rel_l2_first_quartiles'] == [22.5, 25.0, 27.5]
  assert s['rel_l2_quartiles'] == pytest.approx([0.225, 0.25, 0.275])


# ----------------------------------------------------------- what is reported

def test_intervals_are_clipped():
  assert zones.format_interval({'p': 0.98, 'low': 0.93, 'high': 1.03}) == (
      '98% [93, 100]')
  assert zones.format_interval({'p': 0.01, 'low': -0.04, 'high': 0.06}) == (
      '1% [0, 6]')
  err = volume._clipped_err([{'p': 1.0, 'low': 0.7, 'high': 1.3},
                             {'p': 0.0, 'low': -0.3, 'high': 0.3}])
  np.testing.assert_allclose(err, [[30, 0], [0, 30]])


def _fake_summary(m, r, p_theta):
  differs = np.zeros((m, r), bool)
  differs[:int(round(p_theta * m)), 0] = True
  rec = mc.PairRecord(
      differs=differs, differs_first=differs, rel_l2=differs * 0.01,
      rel_l2_first=differs * 20.0, l1=differs * 1.0,
      hits=differs[..., None].astype(np.int32),
      min_distance=np.zeros((m, r, 1)), computed=np.ones((m, r), bool),
      finite=np.ones((m, r), bool))
  return zones.summarize(rec)


_ENV = {'backend': 'gpu', 'device_kind': 'NVIDIA H200', 'device_count': 1,
        'process_count': 1, 'jax_enable_x64': True,
        'versions': {'jax': '0.10.2', 'jaxlib': '0.10.2', 'jaxkink': '0.1.0'}}


# volume.py's flag defaults, for the flags a preset leaves unset.
_DEFAULTS = dict(model_opt=(), legacy_relu_grad=False, chunk=2,
                 train_size=None, screen=True, seed=0, tau=0.0,
                 first_layer_only=False, batch_norm_mode='batch',
                 theta_loop='map')


@pytest.fixture(autouse=True)
def _bundled_sample(monkeypatch):
  """These tests read the bundled MNIST sample (``prepare(..., None)``),
  also where $JAXKINK_DATA_DIR names the full data (CI)."""
  monkeypatch.delenv('JAXKINK_DATA_DIR', raising=False)


def _table1_summary(precision='float32'):
  runs = [TABLE1[f'reference_{precision}'], TABLE1[f'clean_{precision}']]
  runs = [presets.Run(r.label, {**_DEFAULTS, **r.flags, 'samples': 4,
                                'train_size': 512}, r.x, r.paper)
          for r in runs]
  prepared = [volume.prepare(r.flags, None) for r in runs]   # the sample
  summaries = [_fake_summary(4, 2, 1.0), _fake_summary(4, 2, 0.0)]
  headers = [volume.run_header(r.flags, p, s)
             for r, p, s in zip(runs, prepared, summaries)]
  return volume.summary_markdown('Table 1', runs, headers, summaries, _ENV), (
      headers)


def test_summary_header_says_what_was_run():
  text, headers = _table1_summary()
  lines = text.splitlines()
  assert lines[0] == '# Table 1'
  assert headers[0]['sample'] and headers[0]['source'].startswith('sample:')
  data = next(l for l in lines if l.startswith('- data:'))
  assert 'mnist train: 512 of 2000 examples' in data
  assert 'bundled sample' in data and headers[0]['source'] in data
  assert any(l.startswith('- **WARNING: the bundled MNIST sample')
             for l in lines)
  backend = next(l for l in lines if l.startswith('- backend:'))
  assert 'gpu (1 x NVIDIA H200)' in backend and 'x64 on' in backend
  ref = next(l for l in lines if l.startswith('| reference_float32 | mlp_'))
  assert '| mlp_reference (pytorch) |' in ref
  assert 'assigns the kink value' in ref and "first layer's kernel" in ref
  assert '| 4 | 2 (256, 256) |' in ref      # M, R (batch, last batch)
  assert 'float32: params float32' in ref and 'matmul precision highest' in ref
  clean = next(l for l in lines if l.startswith('| clean_float32 | mlp '))
  assert 'kink value x upstream' in clean and 'full gradient' in clean
  # The paper's column, as mkPlot.R computes it, and one line per metric.
  assert ("| paper: ReLU'(0) Table 1, 32 bits | 1000 | 235 | 40% [35, 45] | "
          in text)
  assert ('0.2% [0, 0.5] (printed 0.0002%)' in text
          and '19 / 25 / 47' in text)
  for name, _ in zones.METRICS:
    assert any(l.startswith(f'- **{name}**: ') for l in lines), name
  assert 'divided by M = 1000 a second time' in text
  # Our records through mkPlot.R's formulas, next to what the paper prints.
  assert '## As deel-ai/relu-prime paper_results/section_3/mkPlot.R' in text
  assert ("| paper: ReLU'(0) Table 1, 32 bits | 1000 | 40% | 0.0002% | "
          'Q1, median, Q3: 19, 25, 47 |') in text
  mk = next(l for l in lines if l.startswith('| reference_float32 | 4 | 100'))
  # Every theta differs on minibatch 0 of 2: 50% of pairs, printed / M = 4.
  assert '| 12.5 (50 before / M) | 20 / 20 / 20 / 20 / 20 / 20 |' in mk


def test_summary_intervals_stay_in_0_100():
  text, _ = _table1_summary()
  bounds = re.findall(r'\[(-?[0-9.e+-]+), (-?[0-9.e+-]+)\]', text)
  assert len(bounds) >= 6
  for low, high in bounds:
    assert 0 <= float(low) <= float(high) <= 100, (low, high)


def test_no_warning_on_full_data():
  text, headers = _table1_summary()
  full = [{**h, 'source': '/data/mnist (train-images-idx3-ubyte)',
           'sample': False} for h in headers]
  runs = [TABLE1['reference_float32'], TABLE1['clean_float32']]
  text = volume.summary_markdown('Table 1', runs, full,
                                 [_fake_summary(4, 2, 1.0)] * 2, _ENV)
  assert 'WARNING' not in text and '(full data set)' in text
  title = volume.plot_title('table1', [{'label': r.label, **h}
                                       for r, h in zip(runs, headers)])
  assert title.startswith('table1: mlp_reference, mlp\n')
  assert 'mnist train, 512 examples (bundled sample); M = 4' in title
  assert 'kinks relu:0,1' in title
