r"""Throughput of the Monte Carlo volume engine on the Table-1 workload.

(theta, minibatch) pairs per second, MLP 784-256x3-10, minibatch 256, float32,
ReLU'(0) = 0 against 1, for:

  (a) the engine with screening (one forward pass per pair, the two backward
      passes only where a kink was hit: per theta when the thetas are looped,
      ``theta_loop='map'``, on CPUs; per chunk when they are vmapped,
      elsewhere), and the other choice for comparison;
  (b) the engine without screening (both backward passes for every pair,
      still vmapped over the thetas);
  (c) a PyTorch loop as the reference notebook runs it: per theta, two copies
      of the network, and per minibatch two forward and backward passes and a
      comparison of the gradients (``pip install -e '.[bench]'``);

and the float32 matrix-product peak of the machine (a timed large product),
to say how much of it the screen uses. All in one run, so the ratios compare
like with like.

Run::

  python benchmarks/montecarlo.py --data_dir=../shared/data --samples=64
"""

from __future__ import annotations

import os
import sys
import time
from typing import Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import jaxkink
from jaxkink import cli
from jaxkink import data as data_lib
from jaxkink import models
from jaxkink import montecarlo as mc
from jaxkink import rundir

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_relu  # pylint: disable=g-import-not-at-top,wrong-import-position

_DATA_DIR = flags.DEFINE_string('data_dir', None, 'MNIST directory (default: '
                                '$JAXKINK_DATA_DIR, else the bundled sample).')
_SAMPLES = flags.DEFINE_integer('samples', 64, 'Thetas timed for (a), (b).')
_CHUNK = flags.DEFINE_integer('chunk', 16, 'Thetas per program call.')
_BATCHES = flags.DEFINE_integer('batches', 40, 'Minibatches per theta.')
_TORCH_SAMPLES = flags.DEFINE_integer('torch_samples', 4, 'Thetas timed for '
                                      'the PyTorch loop (c).')
_OUT = flags.DEFINE_string('out', None, 'Optional JSON path for the results.')
cli.check_positive(['samples', 'chunk', 'batches', 'torch_samples'])
cli.check_together(['samples', 'chunk'],
                   lambda v: v['samples'] >= v['chunk'],
                   '--samples must be >= --chunk (whole chunks are timed)')
cli.check_output_file('out')

WIDTHS = (256, 256, 256, 10)
BATCH = 256


def forward_flops(batch: int = BATCH, widths=WIDTHS, inputs: int = 784) -> int:
  """Multiply-adds x 2 of one forward pass of the MLP on one minibatch."""
  sizes = (inputs,) + tuple(widths)
  return 2 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
  """float32 FLOP/s of a large jitted matrix product."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)),
                  jnp.float32)
  f = jax.jit(lambda x: x @ x)
  with jax.default_matmul_precision('highest'):
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(repeats):
      out = f(a)
    out.block_until_ready()
  return 2 * n ** 3 * repeats / (time.perf_counter() - t)


def torch_matmul_peak(n: int = 2048, repeats: int = 10) -> float:
  """float32 FLOP/s of the same product in PyTorch (its BLAS, not XLA's)."""
  import torch  # pylint: disable=g-import-not-at-top
  a = torch.randn(n, n)
  a @ a
  t = time.perf_counter()
  for _ in range(repeats):
    a @ a
  return 2 * n ** 3 * repeats / (time.perf_counter() - t)


def engine_rate(screen: bool, xs, ys, samples: int, chunk: int,
                loop: str) -> tuple:
  policy = jaxkink.get_policy('float32')
  model = models.get('mlp', widths=WIDTHS, policy=policy)
  engine = mc.Engine(model, policy, mc.kink_pair('relu', (0, 1)),
                     samples=samples + chunk, chunk=chunk, screen=screen,
                     theta_loop=loop, devices=jax.local_devices()[:1])
  engine.run_chunks([0], xs, ys)  # compile
  t = time.perf_counter()
  computed = 0
  for c in range(1, samples // chunk + 1):
    rec = engine.run_chunks([c], xs, ys)[0]
    computed += int(rec.computed.sum())
  dt = time.perf_counter() - t
  pairs = (samples // chunk) * chunk * xs.shape[0]
  return pairs / dt, computed / pairs


def torch_rate(images: np.ndarray, labels: np.ndarray, samples: int) -> float:
  """The reference notebook's loop, in PyTorch on the CPU (ReLU'(0) = s
  times the cotangent)."""
  torch, _, relu = torch_relu.torch_modules()

  def net(s):
    sizes = (784,) + WIDTHS
    layers = [torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
    def f(x):
      for i, layer in enumerate(layers):
        x = layer(x)
        if i < len(layers) - 1:
          x = relu.apply(x, s)
      return x
    return layers, f

  torch.manual_seed(0)
  x = torch.from_numpy(images.reshape(len(images), -1))
  y = torch.from_numpy(labels.astype(np.int64))
  loss_fn = torch.nn.CrossEntropyLoss()
  n_batches = len(images) // BATCH
  t = time.perf_counter()
  for _ in range(samples):
    layers0, f0 = net(0.0)
    layers1, f1 = net(1.0)
    for l0, l1 in zip(layers0, layers1):
      l1.load_state_dict(l0.state_dict())
    for b in range(n_batches):
      xb, yb = x[b * BATCH:(b + 1) * BATCH], y[b * BATCH:(b + 1) * BATCH]
      grads = []
      for layers, f in ((layers0, f0), (layers1, f1)):
        for layer in layers:
          layer.zero_grad()
        loss_fn(f(xb), yb).backward()
        grads.append([p.grad for layer in layers for p in layer.parameters()])
      any(not torch.equal(a, b) for a, b in zip(*grads))
  return samples * n_batches / (time.perf_counter() - t)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  ds = data_lib.load('mnist', 'train', data_dir=_DATA_DIR.value)
  if len(ds) < BATCH:
    raise cli.UsageValueError(f'{ds.describe()}: fewer than one minibatch of '
                              f'{BATCH} digits')
  n = min(len(ds), _BATCHES.value * BATCH)
  x = data_lib.preprocess(ds.images[:n], 'mnist', normalize=False)
  (xs, ys), _ = mc.stack_batches(x, jnp.asarray(ds.labels[:n]), BATCH)
  print(f'{ds.describe()}; {xs.shape[0]} minibatches of {BATCH}, '
        f'{jax.devices()[0].device_kind}')
  peak = matmul_peak()
  loop = 'map' if jax.default_backend() == 'cpu' else 'vmap'
  other = 'vmap' if loop == 'map' else 'map'
  a, computed_a = engine_rate(True, xs, ys, _SAMPLES.value, _CHUNK.value,
                              loop)
  a_other, _ = engine_rate(True, xs, ys, _SAMPLES.value, _CHUNK.value, other)
  b, _ = engine_rate(False, xs, ys, _SAMPLES.value, _CHUNK.value, loop)
  try:
    c = torch_rate(np.asarray(x), np.asarray(ds.labels[:n]),
                   _TORCH_SAMPLES.value)
    torch_peak = torch_matmul_peak()
  except ImportError:
    c = torch_peak = None
  screen_flops = a * forward_flops()
  results = {
      'matmul_peak_gflops': peak / 1e9,
      'torch_matmul_peak_gflops': torch_peak and torch_peak / 1e9,
      'a_screened_pairs_per_s': a,
      'a_fraction_computed': computed_a,
      'theta_loop': loop,
      f'a_screened_{other}_pairs_per_s': a_other,
      'b_unscreened_pairs_per_s': b,
      'c_torch_pairs_per_s': c,
      'a_over_b': a / b,
      'a_over_c': None if c is None else a / c,
      'screen_fraction_of_peak': screen_flops / peak,
      'environment': rundir.environment(),
  }
  print(f'fp32 matmul peak        {peak / 1e9:8.1f} GFLOP/s')
  print(f'(a) screened, {loop:4s}      {a:8.1f} pairs/s  '
        f'({100 * computed_a:.1f}% of pairs ran the backward passes)')
  print(f'    screened, {other:4s}      {a_other:8.1f} pairs/s')
  print(f'(b) unscreened          {b:8.1f} pairs/s')
  if c is not None:
    print(f'(c) PyTorch loop        {c:8.1f} pairs/s')
    print(f'PyTorch fp32 matmul     {torch_peak / 1e9:8.1f} GFLOP/s (its own '
          'BLAS)')
    print(f'(a)/(c) = {a / c:.2f}')
  else:
    print('(c) skipped: torch is not installed (pip install -e .[bench])')
  print(f'(a)/(b) = {a / b:.2f}')
  print(f'screen at {100 * screen_flops / peak:.0f}% of the matmul peak '
        f'(forward FLOPs x pairs/s of (a))')
  if _OUT.value:
    rundir.write_json(_OUT.value, results)


if __name__ == '__main__':
  app.run(cli.main(main))
