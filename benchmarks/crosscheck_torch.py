r"""Cross-check of the Table-1 volume engine against the authors' PyTorch loop.

Same weights, same inputs, same minibatches, two arithmetics. For thetas
drawn by :class:`jaxkink.montecarlo.Engine` (the reference preset's model,
``mlp_reference``, or the clean ``mlp``), the script

* runs the engine itself (jaxkink's records: kink hits per ReLU, ``differs``
  on the first layer's kernel gradient, rel. L2);
* loads the very same weights into a PyTorch version of the reference
  notebook's loop (``deel-ai/relu-prime``, ``notebooks/
  MNIST_volume_estimation.ipynb``, the cell that writes the norms): two nets,
  ReLU'(0) = 0 and 1, the ReLU backward of ``relu.py`` (it *assigns* the kink
  value at an exact zero: ``legacy_relu_grad``), ``ToTensor()`` inputs,
  ``DataLoader(batch_size=256)`` in file order with the last partial batch,
  ``zero_grad`` and one backward of the summed losses per minibatch,
  ``torch.equal(net1[0].weight.grad, net2[0].weight.grad)``;
* runs XLA's forward of the same model on the same minibatch and compares,
  per (theta, minibatch) and per linear layer: the pre-activations bit for
  bit, the exact zeros, and the exact zeros predicted by the rounding model
  below;
* on the first ``--diag_batches`` minibatches of each theta, feeds the
  *same* input to every layer of both (PyTorch's activations), so that each
  layer's own arithmetic is compared, not only what propagates: the dense
  layer, the product alone, the bias placement, NumPy's float32 product
  (OpenBLAS), each against the float64 value of the same product, and each
  against the emulated float32 orders (:func:`emulate_dense`);
* optionally (``--torch_order``, on by default) runs the engine a second time
  on the zoo's MLP with ``torch_order`` (``--torch_kc``): the same
  parameters, the same initialisers (so the same thetas, checked bit for
  bit), but every hidden dense layer computed in PyTorch's CPU order, ``b +
  x[:, :kc] @ W[:kc] + x[:, kc:2kc] @ W[kc:2kc] + ...``
  (:func:`jaxkink.models.layers.bias_first_dense`), which on this CPU kind
  reproduces PyTorch's pre-activations bit for bit.

What it found on the 2-core AMD EPYC (AVX2) machine of issue 13, jax 0.10.2,
torch 2.13.0 CPU, one thread (BUILD_NOTES.md, issue 13):

* XLA's dense layer is one FMA chain over k = 0..K-1 (YNNPACK, ``__ynn_fusion``
  in the optimised HLO) and then ``+ b`` in a separate elementwise fusion;
* PyTorch's ``addmm`` (MKL sgemm, ``beta = 1``) initialises C with the bias
  and adds the K-blocks of the product to it, each block an FMA chain from
  zero: blocks of 192 for K = 784 (4 x 192 + 16), of 128 for K = 256;
* so the two part at the first linear layer, and an exact zero needs, in
  XLA, the rounded product to equal ``-b`` on ``b``'s float grid, and in
  PyTorch the running sum to cancel the last nonzero block on that block's
  grid (coarser than ``b``'s where the inputs have no ReLU before them: 2.9x
  the zeros on raw pixels, 1.6x on the first layer's output, 0.9x behind a
  ReLU): ``P(z == 0) ~ density(0) * min(ulp(u), ulp(v))`` for the last
  addition ``u + v``. The predicted zeros per layer use that rule.

Run (one core, as in the notes)::

  XLA_FLAGS='--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1' \
  taskset -c 1 python benchmarks/crosscheck_torch.py \
      --data_dir=../shared/data --samples=64 --out=runs/crosscheck_f32

Needs PyTorch (``pip install -e '.[bench]'``). A re-run with the same flags
and ``--out`` skips the chunks already written; more thetas: a larger
``--samples`` with the same other flags (``--torch_screen`` for speed: the
backward passes only where the forward hit a zero; the unscreened loop
checks that no other pair differs, and gave the same records).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import jaxkink
from jaxkink import cli
from jaxkink import data as data_lib
from jaxkink import models
from jaxkink import montecarlo as mc
from jaxkink import rundir
from jaxkink import zones
from jaxkink.models import layers
from jaxkink.models.mlp import torch_blocks

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_relu  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the script's flags (only when run as a script: importing the
  module, as the tests do, defines none)."""
  flags.DEFINE_string('data_dir', None, 'MNIST directory (default: '
                      '$JAXKINK_DATA_DIR, else the bundled sample).')
  flags.DEFINE_enum(
      'variant', 'reference', ['reference', 'clean'],
      "'reference': the notebook's net (no ReLU after the first Linear), "
      "relu.py's assigning backward, differs on net[0].weight.grad; 'clean': "
      'ReLU after every hidden layer, the multiplying rule, the full gradient.')
  flags.DEFINE_integer('samples', 8, "M: thetas 0..M-1 of the engine's draw "
                       '(seed --seed). A larger M in the same --out adds '
                       'chunks.')
  flags.DEFINE_integer('chunk', 8, 'Thetas per engine call and per record '
                       'file.')
  flags.DEFINE_integer('seed', 0, "The engine's seed.")
  flags.DEFINE_integer('batches', 0, 'Minibatches per theta (0: all of them, '
                       'the last partial one included).')
  flags.DEFINE_integer('train_size', 0, 'Digits used (0: all).')
  flags.DEFINE_bool('torch_order', True, "Also run the engine on the MLP with "
                    "torch_order (PyTorch's summation order, in XLA).")
  flags.DEFINE_list('torch_kc', ['784:192', '256:128'], "PyTorch's K-blocks "
                    'per fan-in, K:kc (measured on this CPU kind; see '
                    'emulate_dense).')
  flags.DEFINE_integer('diag_batches', 1, 'Minibatches per theta with the '
                       'per-layer diagnosis on the same inputs (float64, '
                       'emulations).')
  flags.DEFINE_integer('emulate_rows', 8, 'Rows of each diagnosed layer '
                       'checked against the emulated float32 orders.')
  flags.DEFINE_float('near', 2.0 ** -12, 'Half-width of the window around 0 '
                     'for the predicted exact zeros.')
  flags.DEFINE_bool(
      'torch_screen', False, 'Run the PyTorch backward passes only for the '
      'minibatches whose forward hit an exact zero at a ReLU (the exactness '
      'argument of DESIGN.md section 4; the unscreened loop checks it: '
      "'pairs_differing_without_zero'). About 3x faster, for larger M.")
  flags.DEFINE_integer('torch_threads', 1, 'torch.set_num_threads (the '
                       "BLAS's K-blocking can depend on it).")
  flags.DEFINE_enum('theta_loop', 'auto', ['auto', 'map', 'vmap'],
                    "The engine's theta loop ('auto': map on CPUs, as "
                    'volume.py).')
  flags.DEFINE_string('out', None, 'Run directory: settings.json, '
                      'chunks/*.npz, summary.json.')
  cli.check_positive(['samples', 'chunk', 'diag_batches', 'emulate_rows',
                      'torch_threads'])
  cli.check('batches', lambda v: v >= 0, '--batches must be >= 0')
  cli.check('train_size', lambda v: v >= 0, '--train_size must be >= 0')
  cli.check('near', lambda v: 0 < v < 1, '--near must be in (0, 1)')
  cli.check('torch_kc', _valid_kc,
            '--torch_kc must be K:kc pairs of positive integers, each K once')
  cli.check_output_dir('out')


WIDTHS = (256, 256, 256, 10)
BATCH = 256
LAYERS = tuple(f'Dense_{i}' for i in range(len(WIDTHS)))


def _valid_kc(values: Sequence[str]) -> bool:
  try:
    torch_blocks(values)
  except ValueError:
    return False
  return True


def relu_layers(variant: str) -> tuple[bool, ...]:
  """Which dense layers are followed by a ReLU."""
  first = variant == 'clean'
  return (first,) + (True,) * (len(WIDTHS) - 2) + (False,)


# ---------------------------------------------------------------------------
# Arithmetic: float32 emulations and PyTorch's order in XLA.


def emulate_dense(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None,
                  *, kc: int | None = None, bias: str = 'after',
                  fma: bool = True) -> np.ndarray:
  """``x @ w (+ b)`` in float32, in a given order, emulated in NumPy.

  Each output is an FMA chain over ``k`` ascending (``acc = fl(acc + x_k
  w_k)``, the product exact) inside K-blocks of ``kc``; the block sums are
  added left to right. ``bias``: ``'after'`` (the whole product, then ``+
  b``: XLA's dense layer), ``'first'`` (C starts at ``b`` and each block sum
  is added to it: a GEMM with ``beta = 1`` on C = b, PyTorch's ``addmm``),
  or ``'acc'`` (the first block's accumulator starts at ``b``).
  ``fma=False`` rounds each product first.

  The float32 result of each step is the float64 sum rounded, exact but for
  double rounding (a 2^-29 chance per step): good for finding an order, and
  the tests check the orders found bit for bit.
  """
  x = np.asarray(x, np.float32)
  w = np.asarray(w, np.float32)
  x64, w64 = x.astype(np.float64), w.astype(np.float64)
  n, k_total = x.shape
  kc = kc or k_total
  c = None
  if b is not None and bias == 'first':
    c = np.broadcast_to(np.asarray(b, np.float32), (n, w.shape[1])).copy()
  for start in range(0, k_total, kc):
    if start == 0 and b is not None and bias == 'acc':
      acc = np.broadcast_to(np.asarray(b, np.float32), (n, w.shape[1])).copy()
    else:
      acc = np.zeros((n, w.shape[1]), np.float32)
    for k in range(start, min(k_total, start + kc)):
      prod = x64[:, k:k + 1] * w64[k:k + 1, :]
      if fma:
        acc = (acc.astype(np.float64) + prod).astype(np.float32)
      else:
        acc = acc + prod.astype(np.float32)
    c = acc if c is None else c + acc
  if b is not None and bias == 'after':
    c = c + np.asarray(b, np.float32)
  return c


# ---------------------------------------------------------------------------
# The PyTorch loop.


class TorchNet:
  """The notebook's MLP as a list of ``torch.nn.Linear`` with the ReLUs of
  ``relu_after``; ``forward`` also returns the pre-activations."""

  def __init__(self, params: dict[str, Any], relu_after: Sequence[bool],
               s: float, assign: bool):
    torch, relu_assign, relu_multiply = torch_relu.torch_modules()
    self.torch = torch
    self.relu = relu_assign if assign else relu_multiply
    self.s = float(s)
    self.relu_after = tuple(relu_after)
    self.layers = []
    for name in LAYERS:
      w = np.asarray(params[name]['kernel'], np.float32)
      b = np.asarray(params[name]['bias'], np.float32)
      layer = torch.nn.Linear(w.shape[0], w.shape[1])
      with torch.no_grad():  # Flax (in, out) -> torch (out, in), contiguous
        layer.weight.copy_(torch.from_numpy(np.array(w.T, order='C')))
        layer.bias.copy_(torch.from_numpy(np.array(b)))
      self.layers.append(layer)

  def parameters(self):
    return [p for layer in self.layers for p in layer.parameters()]

  def forward(self, x):
    pre = []
    for layer, relu in zip(self.layers, self.relu_after):
      x = layer(x)
      pre.append(x)
      if relu:
        x = self.relu.apply(x, self.s)
    return x, pre


def torch_pair(params, relu_after, assign: bool, xb, yb):
  """One minibatch of the notebook's loop on nets s = 0 and s = 1.

  Returns the s = 0 net's pre-activations (numpy), whether the s = 1 net's
  are bit-identical, and the gradients of both nets (numpy, per parameter,
  weights in torch's (out, in) layout).
  """
  nets = [TorchNet(params, relu_after, s, assign) for s in (0.0, 1.0)]
  return _torch_step(nets, xb, yb)


def _torch_step(nets, xb, yb, screen: bool = False):
  """One minibatch; with ``screen``, a forward of the s = 0 net first, and
  the two nets' forward and backward only if it hit an exact zero at a
  ReLU (``grads`` None otherwise: they would be equal)."""
  torch = nets[0].torch
  if screen:
    with torch.no_grad():
      _, pre0 = nets[0].forward(xb)
    if not any(bool((z == 0).any()) for z, relu in zip(pre0,
                                                       nets[0].relu_after)
               if relu):
      return [p.numpy() for p in pre0], True, None
  for net in nets:
    for p in net.parameters():
      p.grad = None  # opt.zero_grad()
  (y1, pre1), (y2, pre2) = nets[0].forward(xb), nets[1].forward(xb)
  loss = (torch.nn.functional.cross_entropy(y1, yb)
          + torch.nn.functional.cross_entropy(y2, yb))
  loss.backward()
  pre = [p.detach().numpy() for p in pre1]
  same = all(torch.equal(a, b) for a, b in zip(pre1, pre2))
  grads = [[p.grad.numpy() for p in net.parameters()] for net in nets]
  return pre, same, grads


# ---------------------------------------------------------------------------
# Per-layer diagnosis and the rounding model of exact zeros.


def _spacing(a: np.ndarray) -> np.ndarray:
  return np.spacing(np.abs(np.asarray(a, np.float32))).astype(np.float64)


def predicted_zeros(h: np.ndarray, w: np.ndarray, b: np.ndarray,
                    z: np.ndarray, order: str, kc: int, near: float
                    ) -> tuple[float, int, float]:
  """Exact zeros of ``z = h @ w + b`` that the last rounding predicts.

  If the last operation is ``fl(u + v)`` and ``|u + v| < near``, both are in
  about the same binade and their exact sum lies on the grid of the finer
  of the two, so ``P(z == 0) ~ density(0) * min(ulp(u), ulp(v))``. Summed
  over the entries with ``|z| < near``: ``sum min(ulp(u), ulp(v)) / (2
  near)``. XLA (``order='xla'``): ``u`` the product, ``v = b``. PyTorch
  (``'torch'``): ``v`` the last K-block of ``kc`` with a nonzero input
  (adding a block of zeros changes nothing), ``u`` the running sum before
  it. Partial sums in float64 (only their binade matters).

  Returns (predicted zeros, entries in the window, mean ``log2`` of the
  grid over them).
  """
  rows, cols = np.nonzero(np.abs(z) < near)
  if rows.size == 0:
    return 0.0, 0, 0.0
  h64 = np.asarray(h)[rows].astype(np.float64)
  w64 = np.asarray(w)[:, cols].T.astype(np.float64)
  b64 = np.asarray(b)[cols].astype(np.float64)
  prods = h64 * w64  # (entries, K)
  if order == 'xla':
    u, v = prods.sum(axis=1), b64
  else:
    k_total = prods.shape[1]
    starts = list(range(0, k_total, kc))
    blocks = np.stack([prods[:, s:s + kc].sum(axis=1) for s in starts], 1)
    live = np.stack([np.any(h64[:, s:s + kc] != 0, axis=1) for s in starts],
                    1)
    last = np.where(live.any(1), len(starts) - 1 - np.argmax(live[:, ::-1], 1),
                    0)
    idx = np.arange(rows.size)
    v = blocks[idx, last]
    u = b64 + np.where(np.arange(len(starts))[None, :] < last[:, None],
                       blocks, 0.0).sum(axis=1)
  grid = np.minimum(_spacing(u), _spacing(v))
  return (float(grid.sum() / (2 * near)), int(rows.size),
          float(np.mean(np.log2(grid))))


def _err(z: np.ndarray, exact: np.ndarray) -> np.ndarray:
  return np.abs(z.astype(np.float64) - exact)


def diagnose_layer(h: np.ndarray, w: np.ndarray, b: np.ndarray,
                   dense_xla, dot_xla, kc: int | None, rows: int
                   ) -> dict[str, float]:
  """One layer's own arithmetic on one input ``h`` (PyTorch's activation),
  in XLA, PyTorch, NumPy and float64, and against the emulated orders."""
  torch, _, _ = torch_relu.torch_modules()
  th, tw = torch.from_numpy(h), torch.from_numpy(np.ascontiguousarray(w.T))
  tb = torch.from_numpy(b)
  z_torch = torch.nn.functional.linear(th, tw, tb).numpy()
  d_torch = (th @ tw.t()).numpy()
  z_xla = np.asarray(dense_xla(h, w, b))
  d_xla = np.asarray(dot_xla(h, w))
  z_np = h @ w + b
  exact = h.astype(np.float64) @ w.astype(np.float64) + b.astype(np.float64)
  e_t, e_x, e_n = _err(z_torch, exact), _err(z_xla, exact), _err(z_np, exact)
  out = {
      'xla_eq_torch': float(np.mean(z_xla == z_torch)),
      'xla_dot_eq_torch_dot': float(np.mean(d_xla == d_torch)),
      'xla_eq_xla_dot_plus_b': float(np.mean(z_xla == d_xla + b)),
      'torch_eq_torch_dot_plus_b': float(np.mean(z_torch == d_torch + b)),
      'numpy_eq_xla': float(np.mean(z_np == z_xla)),
      'numpy_eq_torch': float(np.mean(z_np == z_torch)),
      'abs_err_xla': float(e_x.mean()), 'abs_err_torch': float(e_t.mean()),
      'abs_err_numpy': float(e_n.mean()),
      'torch_closer': float(np.mean(e_t < e_x)),
      'xla_closer': float(np.mean(e_x < e_t)),
  }
  r = slice(0, min(rows, h.shape[0]))
  out['xla_eq_emulated_chain_then_b'] = float(np.mean(
      emulate_dense(h[r], w, b, bias='after') == z_xla[r]))
  if kc is not None:
    out['torch_eq_emulated_b_first_blocks'] = float(np.mean(
        emulate_dense(h[r], w, b, kc=kc, bias='first') == z_torch[r]))
  return out


# ---------------------------------------------------------------------------
# The run.


def _records_of(rec) -> dict[str, np.ndarray]:
  out = {'hits': rec.hits, 'differs': rec.differs,
         'differs_first': rec.differs_first, 'rel_l2': rec.rel_l2,
         'computed': rec.computed}
  if hasattr(rec, 'rel_l2_first'):
    out['rel_l2_first'] = rec.rel_l2_first
  return {k: np.asarray(v) for k, v in out.items()}


def _cat_tail(full, last):
  return mc.PairRecord(*[np.concatenate([a, b], axis=1)
                         for a, b in zip(full, last)])


def _engine_chunk(engine, c, xs, ys, tail):
  rec = engine.run_chunks([c], xs, ys)[0]
  if tail is not None:
    rec = _cat_tail(rec, engine.run_chunks([c], *tail)[0])
  return _records_of(rec)


class Runner:
  """Everything that one chunk of thetas needs, compiled once."""

  def __init__(self, variant: str, samples: int, chunk: int, seed: int,
               torch_kc: dict[int, int], with_torch_order: bool,
               theta_loop: str):
    self.variant = variant
    self.relu_after = relu_layers(variant)
    self.assign = variant == 'reference'
    self.policy = jaxkink.get_policy('float32')
    name = 'mlp_reference' if variant == 'reference' else 'mlp'
    self.model = models.get(name, policy=self.policy)
    pair = mc.kink_pair('relu', (0, 1), legacy_relu_grad=self.assign)
    devices = jax.local_devices()[:1]
    self.engine = mc.Engine(self.model, self.policy, pair, samples=samples,
                            chunk=chunk, seed=seed, theta_loop=theta_loop,
                            devices=devices)
    self.torch_kc = dict(torch_kc)
    self.to_engine = None
    if with_torch_order:
      self.to_model = models.get(name, policy=self.policy,
                                 torch_order=tuple(self.torch_kc.items()))
      self.to_engine = mc.Engine(self.to_model, self.policy, pair,
                                 samples=samples, chunk=chunk, seed=seed,
                                 theta_loop=theta_loop, devices=devices)
    prec = self.policy.jax_precision

    def capture(model):
      def pre_acts(params, x):
        _, state = model.apply(
            {'params': params}, x, jaxkink.Kinks(),
            capture_intermediates=lambda m, _: isinstance(
                m, (nn.Dense, layers.BiasFirstDense)),
            mutable=['intermediates'])
        inter = state['intermediates']
        return tuple(inter[n]['__call__'][0] for n in LAYERS)
      return jax.jit(pre_acts)

    with self.policy.scope():
      self.xla_pre = capture(self.model)
      self.to_pre = capture(self.to_model) if with_torch_order else None
    self.dense_xla = jax.jit(
        lambda h, w, b: jnp.dot(h, w, precision=prec) + b)
    self.dot_xla = jax.jit(lambda h, w: jnp.dot(h, w, precision=prec))

  def chunk(self, c: int, xs, ys, tail, batches, near: float,
            diag_batches: int, emulate_rows: int, log,
            torch_screen: bool = False) -> dict[str, Any]:
    """Records of chunk ``c``: arrays with leading axes (thetas, batches)."""
    torch, _, _ = torch_relu.torch_modules()
    eng = _engine_chunk(self.engine, c, xs, ys, tail)
    out = {f'jax_{k}': v for k, v in eng.items()}
    indices = list(range(c * self.engine.chunk,
                         min((c + 1) * self.engine.chunk,
                             self.engine.samples)))
    variables = jax.tree.map(np.asarray, self.engine.sample(indices, xs[0]))
    if self.to_engine is not None:
      to_vars = jax.tree.map(np.asarray, self.to_engine.sample(indices, xs[0]))
      same = jax.tree.all(jax.tree.map(
          lambda a, b: bool(np.array_equal(a, b)), variables['params'],
          to_vars['params']))
      if not same:
        raise RuntimeError('the torch_order model drew other thetas than the '
                           'native one: its parameters or initialisers differ')
      to_eng = _engine_chunk(self.to_engine, c, xs, ys, tail)
      out.update({f'to_{k}': v for k, v in to_eng.items()})
    n_layers = len(LAYERS)
    t, r = len(indices), len(batches)
    rec = {k: np.zeros((t, r, n_layers), np.int64) for k in (
        'xla_zeros', 'torch_zeros', 'to_zeros', 'near_xla', 'near_torch')}
    rec.update({k: np.zeros((t, r, n_layers)) for k in (
        'xla_eq', 'to_eq', 'pred_xla', 'pred_torch', 'log2grid_xla',
        'log2grid_torch')})
    rec.update({k: np.zeros((t, r), bool) for k in (
        'torch_differs', 'torch_differs_first', 'torch_nets_same_forward',
        'torch_computed')})
    rec.update({k: np.zeros((t, r)) for k in (
        'torch_rel_l2', 'torch_rel_l2_first')})
    rec['first_parting_layer'] = np.full((t, r), -1, np.int64)
    diag = []
    for j, theta in enumerate(indices):
      t0 = time.perf_counter()
      params = jax.tree.map(lambda a, j=j: a[j], variables['params'])
      nets = [TorchNet(params, self.relu_after, s, self.assign)
              for s in (0.0, 1.0)]
      for i, (xb, yb) in enumerate(batches):
        pre, same, grads = _torch_step(nets, torch.from_numpy(xb),
                                       torch.from_numpy(yb), torch_screen)
        rec['torch_nets_same_forward'][j, i] = same
        rec['torch_computed'][j, i] = grads is not None
        if grads is not None:
          g0, g1 = grads
          neq = [not np.array_equal(a, b) for a, b in zip(g0, g1)]
          rec['torch_differs'][j, i] = any(neq)
          rec['torch_differs_first'][j, i] = neq[0]
          d2 = [np.sum((b.astype(np.float64) - a) ** 2)
                for a, b in zip(g0, g1)]
          n2 = [np.sum(a.astype(np.float64) ** 2) for a in g0]
          rec['torch_rel_l2'][j, i] = np.sqrt(sum(d2) / sum(n2))
          rec['torch_rel_l2_first'][j, i] = np.sqrt(d2[0] / n2[0])
        zx = [np.asarray(a) for a in self.xla_pre(params, xb)]
        zo = ([np.asarray(a) for a in self.to_pre(params, xb)]
              if self.to_pre is not None else None)
        parted = -1
        h = xb
        for li, name in enumerate(LAYERS):
          w = params[name]['kernel']
          b = params[name]['bias']
          rec['torch_zeros'][j, i, li] = np.count_nonzero(pre[li] == 0)
          rec['xla_zeros'][j, i, li] = np.count_nonzero(zx[li] == 0)
          eq = np.mean(zx[li] == pre[li])
          rec['xla_eq'][j, i, li] = eq
          if eq < 1 and parted < 0:
            parted = li
          if zo is not None:
            rec['to_zeros'][j, i, li] = np.count_nonzero(zo[li] == 0)
            rec['to_eq'][j, i, li] = np.mean(zo[li] == pre[li])
          kc = self.torch_kc.get(w.shape[0], w.shape[0])
          for order, zz, hh in (('xla', zx[li], None), ('torch', pre[li], h)):
            if order == 'xla':
              hh = xb if li == 0 else _act(zx[li - 1], self.relu_after[li - 1])
            p, n, lg = predicted_zeros(hh, w, b, zz, order, kc, near)
            rec[f'pred_{order}'][j, i, li] = p
            rec[f'near_{order}'][j, i, li] = n
            rec[f'log2grid_{order}'][j, i, li] = lg
          if i < diag_batches:
            d = diagnose_layer(h, w, b, self.dense_xla, self.dot_xla,
                               self.torch_kc.get(w.shape[0]), emulate_rows)
            d.update(theta=theta, batch=i, layer=li)
            diag.append(d)
          h = _act(pre[li], self.relu_after[li])
        rec['first_parting_layer'][j, i] = parted
      log(f'  theta {theta}: {time.perf_counter() - t0:.1f} s; torch in S01: '
          f'{bool(self._torch_differs(rec)[j].any())}, jaxkink: '
          f'{bool(self._jax_differs(out)[j].any())}')
    out.update(rec)
    out['diag'] = np.array(json.dumps(diag))
    return out

  def _torch_differs(self, rec):
    return rec['torch_differs_first' if self.assign else 'torch_differs']

  def _jax_differs(self, rec, prefix='jax'):
    return rec[f'{prefix}_differs_first' if self.assign
               else f'{prefix}_differs']


def _act(z: np.ndarray, relu: bool) -> np.ndarray:
  return np.maximum(z, np.float32(0)) if relu else z


def interval(k: int, n: int, alpha: float = 0.05) -> dict[str, float]:
  """Proportion k/n with Hoeffding's ``1 - alpha`` interval."""
  p = k / n
  m = zones.hoeffding_margin(n, alpha)
  return {'k': int(k), 'n': int(n), 'p': p, 'margin': m,
          'low': max(0.0, p - m), 'high': min(1.0, p + m)}


def summarize(records: dict[str, np.ndarray], variant: str,
              relu_after: Sequence[bool]) -> dict[str, Any]:
  """Theta in S01, impacted pairs, exact zeros per layer, agreement."""
  first = variant == 'reference'
  key = 'differs_first' if first else 'differs'
  in_s = {'jaxkink': records[f'jax_{key}'].any(1),
          'torch': records[f'torch_{key}'].any(1)}
  pairs = {'jaxkink': records[f'jax_{key}'], 'torch': records[f'torch_{key}']}
  if 'to_hits' in records:
    in_s['xla_torch_order'] = records[f'to_{key}'].any(1)
    pairs['xla_torch_order'] = records[f'to_{key}']
  m, r = records[f'jax_{key}'].shape
  s: dict[str, Any] = {'variant': variant, 'M': int(m), 'R': int(r),
                       'pairs': int(m * r)}
  s['theta_in_S01'] = {k: interval(int(v.sum()), m) for k, v in in_s.items()}
  s['impacted_pairs'] = {k: int(v.sum()) for k, v in pairs.items()}
  a, b = in_s['jaxkink'], in_s['torch']
  s['paired_thetas'] = {'both': int(np.sum(a & b)),
                        'jaxkink_only': int(np.sum(a & ~b)),
                        'torch_only': int(np.sum(~a & b)),
                        'neither': int(np.sum(~a & ~b))}
  relu_idx = [i for i, v in enumerate(relu_after) if v]
  zeros = {}
  for i, name in enumerate(LAYERS):
    row = {'relu_after': bool(relu_after[i]),
           'xla': int(records['xla_zeros'][..., i].sum()),
           'torch': int(records['torch_zeros'][..., i].sum()),
           'predicted_xla': float(records['pred_xla'][..., i].sum()),
           'predicted_torch': float(records['pred_torch'][..., i].sum()),
           'near_window_xla': int(records['near_xla'][..., i].sum()),
           'near_window_torch': int(records['near_torch'][..., i].sum()),
           'bit_equal_fraction_xla_torch':
               float(records['xla_eq'][..., i].mean()),
           'pairs_bit_equal_xla_torch':
               int(np.sum(records['xla_eq'][..., i] == 1))}
    w = records['near_xla'][..., i]
    if w.sum():
      row['mean_log2_grid_xla'] = float(
          np.sum(records['log2grid_xla'][..., i] * w) / w.sum())
    w = records['near_torch'][..., i]
    if w.sum():
      row['mean_log2_grid_torch'] = float(
          np.sum(records['log2grid_torch'][..., i] * w) / w.sum())
    if 'to_hits' in records:
      row['xla_torch_order'] = int(records['to_zeros'][..., i].sum())
      row['bit_equal_fraction_torch_order_torch'] = float(
          records['to_eq'][..., i].mean())
    if i in relu_idx:
      op = relu_idx.index(i)
      row['engine_hits'] = int(records['jax_hits'][..., op].sum())
      row['engine_hits_equal_xla_forward_pairs'] = int(np.sum(
          records['jax_hits'][..., op] == records['xla_zeros'][..., i]))
      if 'to_hits' in records:
        row['torch_order_engine_hits'] = int(
            records['to_hits'][..., op].sum())
        row['torch_order_engine_hits_equal_torch_pairs'] = int(np.sum(
            records['to_hits'][..., op] == records['torch_zeros'][..., i]))
    zeros[name] = row
  s['exact_zeros'] = zeros
  torch_hit = (records['torch_zeros'][..., relu_idx].sum(-1) > 0)
  s['torch_checks'] = {
      'pairs_backward_computed': int(records['torch_computed'].sum()),
      'nets_same_forward_all_pairs':
          bool(records['torch_nets_same_forward'].all()),
      'pairs_differing_without_zero': int(np.sum(pairs['torch']
                                                 & ~torch_hit)),
      'pairs_with_zero_not_differing': int(np.sum(~pairs['torch']
                                                  & torch_hit)),
  }
  s['first_parting_layer'] = {
      str(k): int(np.sum(records['first_parting_layer'] == k))
      for k in range(-1, len(LAYERS))}
  both = pairs['jaxkink'] & pairs['torch']
  rel_key = 'rel_l2_first' if first else 'rel_l2'
  rel = {}
  if f'jax_{rel_key}' in records:
    v = records[f'jax_{rel_key}'][pairs['jaxkink']]
    rel['jaxkink'] = np.quantile(v, [.25, .5, .75]).tolist() if v.size else None
  v = records[f'torch_{rel_key}'][pairs['torch']]
  rel['torch'] = np.quantile(v, [.25, .5, .75]).tolist() if v.size else None
  s[f'{rel_key}_quartiles_impacted'] = rel
  s['pairs_impacted_in_both'] = int(both.sum())
  diag = [d for blob in records['diag'] for d in json.loads(str(blob))]
  per_layer = {}
  for i, name in enumerate(LAYERS):
    ds = [d for d in diag if d['layer'] == i]
    if ds:
      keys = [k for k in ds[0] if k not in ('theta', 'batch', 'layer')]
      per_layer[name] = {k: float(np.mean([d[k] for d in ds])) for k in keys}
      per_layer[name]['n'] = len(ds)
  s['same_input_diagnosis'] = per_layer
  return s


_ARITHMETICS = (('jaxkink', 'jaxkink (XLA)'), ('torch', 'PyTorch (MKL)'),
                ('xla_torch_order', "XLA in PyTorch's order"))


def plot(s: dict[str, Any], path: str) -> None:
  """Theta in S01 per arithmetic (95% Hoeffding, clipped to [0, 100%]) and
  the exact zeros per layer, observed and predicted, XLA against PyTorch."""
  plt = rundir.pyplot()
  fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4),
                                 gridspec_kw={'width_ratios': [1, 1.6]})
  names = [(k, label) for k, label in _ARITHMETICS if k in s['theta_in_S01']]
  for i, (k, label) in enumerate(names):
    v = s['theta_in_S01'][k]
    p, lo, hi = (100 * min(max(v[q], 0.0), 1.0) for q in ('p', 'low', 'high'))
    ax0.bar(i, p, width=0.6, yerr=[[p - lo], [hi - p]], capsize=4,
            color=f'C{i}')
  ax0.set_xticks(range(len(names)), [label for _, label in names],
                 rotation=15, fontsize=8)
  ax0.set_ylabel('theta in S01 (%), 95% Hoeffding')
  ax0.set_ylim(0, 100)
  ax0.set_title(f"same {s['M']} thetas x {s['R']} minibatches", fontsize=9)
  layers = list(s['exact_zeros'])
  xs = np.arange(len(layers))
  for j, (key, label, hatch) in enumerate((
      ('xla', 'XLA observed', None), ('predicted_xla', 'XLA predicted', '//'),
      ('torch', 'PyTorch observed', None),
      ('predicted_torch', 'PyTorch predicted', '//'))):
    ax1.bar(xs + (j - 1.5) * 0.2, [s['exact_zeros'][n][key] for n in layers],
            width=0.2, label=label, color='C0' if j < 2 else 'C1',
            hatch=hatch, alpha=0.6 if hatch else 1.0)
  relu = [' (ReLU)' if s['exact_zeros'][n]['relu_after'] else ''
          for n in layers]
  ax1.set_xticks(xs, [n + r for n, r in zip(layers, relu)], fontsize=8)
  ax1.set_xlabel('linear layer (pre-activations)')
  ax1.set_ylabel('exact zeros over all pairs')
  ax1.legend(fontsize=8)
  ax1.set_title('exact zeros per layer (predicted: the rounding model)',
                fontsize=9)
  fig.suptitle(f"Table 1 {s['variant']} network, float32, jaxkink vs the "
               "authors' PyTorch loop, weight for weight", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _load_chunk(path: str) -> dict[str, np.ndarray] | None:
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except (OSError, ValueError, EOFError):
    return None


def _format(s: dict[str, Any]) -> str:
  lines = [f"{s['variant']}: M={s['M']} thetas x R={s['R']} minibatches"]
  for k, v in s['theta_in_S01'].items():
    lines.append(f"  theta in S01, {k:16s} {100 * v['p']:5.1f}% "
                 f"[{100 * v['low']:.1f}, {100 * v['high']:.1f}]  "
                 f"({v['k']}/{v['n']}); impacted pairs "
                 f"{s['impacted_pairs'][k]}")
  lines.append(f"  paired thetas: {s['paired_thetas']}")
  lines.append('  exact zeros per layer (xla / torch / xla in torch order; '
               'predicted xla / torch; bit-equal fraction xla vs torch):')
  for name, z in s['exact_zeros'].items():
    lines.append(
        f"    {name}{' (ReLU)' if z['relu_after'] else '       '}: "
        f"{z['xla']:5d} / {z['torch']:5d} / {z.get('xla_torch_order', '-')}"
        f";  {z['predicted_xla']:.1f} / {z['predicted_torch']:.1f};  "
        f"{z['bit_equal_fraction_xla_torch']:.3f}")
  lines.append(f"  first parting layer (pairs): {s['first_parting_layer']}")
  lines.append(f"  torch checks: {s['torch_checks']}")
  return '\n'.join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    torch, _, _ = torch_relu.torch_modules()
  except ImportError as e:
    raise cli.UsageValueError('PyTorch is needed: pip install -e .[bench]'
                              ) from e
  torch.set_num_threads(FLAGS.torch_threads)
  ds = data_lib.load('mnist', 'train', data_dir=FLAGS.data_dir)
  n = FLAGS.train_size or len(ds)
  if n > len(ds) or n < 1:
    raise cli.UsageValueError(f'--train_size must be in 1..{len(ds)}')
  images = np.asarray(ds.images[:n])
  x = np.asarray(data_lib.preprocess(images, 'mnist', normalize=False,
                                     flatten=True))
  # ToTensor(): uint8 -> float32, / 255; x.view(-1, 784).
  x_torch = torch.from_numpy(np.array(images.reshape(n, -1))).to(
      torch.float32).div(255)
  if not np.array_equal(x_torch.numpy(), x):
    raise RuntimeError('jaxkink.data.preprocess differs from ToTensor()')
  y = np.asarray(ds.labels[:n]).astype(np.int64)
  (xs, ys), tail = mc.stack_batches(jnp.asarray(x), jnp.asarray(y), BATCH)
  batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, n, BATCH)]
  if FLAGS.batches:
    keep = min(FLAGS.batches, xs.shape[0])
    xs, ys, tail = xs[:keep], ys[:keep], None
    batches = batches[:keep]
  r = len(batches)
  loop = FLAGS.theta_loop
  if loop == 'auto':
    loop = 'map' if jax.default_backend() == 'cpu' else 'vmap'
  kc = torch_blocks(FLAGS.torch_kc)
  settings = {
      'variant': FLAGS.variant, 'seed': FLAGS.seed, 'chunk': FLAGS.chunk,
      'batches': r, 'train_size': n, 'torch_order': FLAGS.torch_order,
      'torch_kc': {str(k): v for k, v in sorted(kc.items())},
      'diag_batches': FLAGS.diag_batches,
      'emulate_rows': FLAGS.emulate_rows, 'near': FLAGS.near,
      'torch_threads': FLAGS.torch_threads, 'theta_loop': loop,
      'torch_screen': FLAGS.torch_screen,
      'data': rundir.array_digest(images, y)}
  print(f'{ds.describe()}; {r} minibatches of <= {BATCH}; '
        f'{FLAGS.variant} variant; jax {jax.__version__}, torch '
        f'{torch.__version__}, {jax.devices()[0].device_kind}')
  out = FLAGS.out
  if out:
    os.makedirs(os.path.join(out, 'chunks'), exist_ok=True)
    spath = os.path.join(out, 'settings.json')
    if os.path.exists(spath):
      with open(spath) as f:
        old = json.load(f)
      diff = rundir.differences(old, settings)
      if diff:
        raise cli.UsageValueError(f'{out} holds a run with other settings: '
                                  f'{"; ".join(diff)}')
    else:
      rundir.write_json(spath, settings)
  runner = Runner(FLAGS.variant, FLAGS.samples, FLAGS.chunk, FLAGS.seed,
                  kc, FLAGS.torch_order, loop)
  chunks = []
  t_start = time.perf_counter()
  for c in range(runner.engine.num_chunks):
    path = out and os.path.join(out, 'chunks', f'chunk_{c:06d}.npz')
    size = min(FLAGS.chunk, FLAGS.samples - c * FLAGS.chunk)
    rec = _load_chunk(path) if path and os.path.exists(path) else None
    if rec is not None and rec['torch_differs'].shape[0] >= size:
      rec = {k: (v if k == 'diag' else v[:size]) for k, v in rec.items()}
      chunks.append(rec)
      print(f'chunk {c}: read from {path}')
      continue
    t0 = time.perf_counter()
    rec = runner.chunk(c, xs, ys, tail, batches, FLAGS.near,
                       FLAGS.diag_batches, FLAGS.emulate_rows, print,
                       FLAGS.torch_screen)
    if path:
      rundir.write_npz(path, **rec)
    chunks.append(rec)
    print(f'chunk {c}: {size} thetas in {time.perf_counter() - t0:.0f} s')
  records = {k: (np.array([c[k] for c in chunks]) if k == 'diag'
                 else np.concatenate([c[k] for c in chunks]))
             for k in chunks[0]}
  summary = summarize(records, FLAGS.variant, runner.relu_after)
  summary['seconds'] = time.perf_counter() - t_start
  summary['settings'] = settings
  summary['environment'] = rundir.environment()
  print(_format(summary))
  if out:
    rundir.write_json(os.path.join(out, 'summary.json'), summary)
    plot(summary, os.path.join(out, 'crosscheck.png'))


if __name__ == '__main__':
  define_flags()
  app.run(cli.main(main))
