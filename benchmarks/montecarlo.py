r"""Throughput of the Monte Carlo volume engine on the Table-1 workload.

(theta, minibatch) pairs per second, MLP 784-256x3-10, minibatch 256, float32,
ReLU'(0) = 0 against 1, all in one run so that the ratios compare like with
like:

  bound: the forward pass's matrix products alone, at the engine's shapes
      (per theta and minibatch [256,784]x[784,256], [256,256]x[256,256]
      twice, [256,256]x[256,10]), the same thetas per device, minibatches
      and devices, looped as the engine loops them, in one jitted program:
      the best the engine's forward pass could do;
  forward only: the engine's forward pass (the model, its kink counters and
      the loss) without ``vjp`` or backward pass, looped the same way;
  (a) the engine with screening (one forward pass per pair, the two backward
      passes only where a kink was hit: per theta when the thetas are looped,
      ``theta_loop='map'``, on CPUs; per chunk when they are vmapped,
      elsewhere), and the other loop for comparison; timed apart on
      - the MNIST digits as they are (most pairs hit no kink),
      - the chunks of that run with no flagged pair, timed again,
      - planted kinks (zero biases and a blank image in every minibatch:
        every pair is flagged and computed);
  (b) the engine without screening (both backward passes for every pair), on
      the digits and on the planted kinks;
  (c) a PyTorch loop as the reference notebook runs it: per theta, two copies
      of the network, and per minibatch two forward and backward passes and a
      comparison of the gradients (``pip install -e '.[bench]'``), given as
      many threads as JAX's CPU client has (one per core this process may run
      on) and warmed up on the same minibatches first;

float16 screened against unscreened on the digits (every pair hits a kink,
so the screen computes them all), and the float32 peak of a large matrix
product in XLA and in PyTorch. The bound, the forward pass, (a), (b), (c)
and the float16 pair are timed in ``--rounds`` alternated rounds (the
speed of a shared machine drifts by 10-15% within a run): each figure is
the median over the rounds and each target ratio the median of the
per-round ratios, all printed. The load average is printed at the start
and at the end. Like
``jaxkink-volume``, the benchmark splits the CPU into one JAX device per core
unless ``XLA_FLAGS`` sets ``--xla_force_host_platform_device_count``
(``jaxkink.cli.use_host_devices``).

Run (pinned, on an otherwise idle machine)::

  taskset -c 0,1 python benchmarks/montecarlo.py --data_dir=../shared/data
  taskset -c 0,1 python benchmarks/montecarlo.py --data_dir=../shared/data \
      --workload=lenet5_pool      # or vgg11_pool: benchmarks/montecarlo_conv.py
  XLA_FLAGS=--xla_force_host_platform_device_count=1 taskset -c 0,1 \
      python benchmarks/montecarlo.py --data_dir=../shared/data
"""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any, Callable, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P
import numpy as np
import optax

import jaxkink
from jaxkink import cli
from jaxkink import data as data_lib
from jaxkink import models
from jaxkink import montecarlo as mc
from jaxkink import rundir
from jaxkink.hits import TapedKinks
from jaxkink.kinks import Kinks

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import montecarlo_conv  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch_relu  # pylint: disable=g-import-not-at-top,wrong-import-position

_WORKLOAD = flags.DEFINE_enum(
    'workload', 'table1', ['table1', *montecarlo_conv.WORKLOADS],
    "table1: the MLP of ReLU'(0) Table 1 (this docstring); lenet5_pool, "
    'vgg11_pool: native against minimal MaxPool on LeNet-5 MNIST and VGG11 '
    'on the CIFAR-10 sample (benchmarks/montecarlo_conv.py; --samples, '
    '--chunk, --batches and --torch_samples default to the workload\'s '
    'own sizes there).')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Data directory (default: '
                                '$JAXKINK_DATA_DIR, else the bundled MNIST '
                                'sample).')
_SAMPLES = flags.DEFINE_integer('samples', 128, 'Thetas timed for the bound, '
                                '(a) and (b) (whole calls of chunk x devices '
                                'thetas, at least one).')
_CHUNK = flags.DEFINE_integer('chunk', 16, 'Thetas per device per program '
                              'call.')
_BATCHES = flags.DEFINE_integer('batches', 40, 'Minibatches per theta.')
_TORCH_SAMPLES = flags.DEFINE_integer('torch_samples', 4, 'Thetas timed for '
                                      'the PyTorch loop (c).')
_OUT = flags.DEFINE_string('out', None, 'Optional JSON path for the results.')
_ROUNDS = flags.DEFINE_integer(
    'rounds', 3, 'Rounds in which the bound, the forward pass, (a), (b), (c) '
    'and the float16 pair are each timed once, in alternated order; the '
    'figures are medians over the rounds, the ratios medians of the '
    'per-round ratios (the machine\'s speed drifts within a run).')
_FLOAT16_CALLS = flags.DEFINE_integer(
    'float16_calls', 1, 'Calls timed for float16 screened against '
    'unscreened on the digits (every pair flagged), per round, at most as '
    'many as (a) makes; 0: skip.')
cli.check_positive(['samples', 'chunk', 'batches', 'torch_samples',
                    'rounds'])
cli.check('float16_calls', lambda v: int(v) >= 0,
          '--float16_calls must be >= 0')
cli.check_together(['samples', 'chunk'],
                   lambda v: v['samples'] >= v['chunk'],
                   '--samples must be >= --chunk (whole chunks are timed)')
cli.check_output_file('out')

WIDTHS = (256, 256, 256, 10)
INPUTS = 784
BATCH = 256


def forward_flops(batch: int = BATCH, widths=WIDTHS, inputs: int = INPUTS
                  ) -> int:
  """Multiply-adds x 2 of one forward pass of the MLP on one minibatch."""
  sizes = (inputs,) + tuple(widths)
  return 2 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def backward_flops(batch: int = BATCH, widths=WIDTHS, inputs: int = INPUTS
                   ) -> int:
  """Multiply-adds x 2 of one backward pass: every kernel's gradient, and
  the input gradient of every layer but the first (the images need
  none)."""
  sizes = (inputs,) + tuple(widths)
  products = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
  return 2 * batch * (sum(products) + sum(products[1:]))


def cpu_model() -> str:
  """The CPU's name as the kernel reports it."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def load_average() -> str:
  return ' '.join(f'{v:.2f}' for v in os.getloadavg())


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
  """float32 FLOP/s of a large jitted matrix product (one device)."""
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


def _sharded(fn, devices, in_specs):
  if len(devices) == 1:
    return jax.jit(fn)
  mesh = Mesh(np.array(devices), ('theta',))
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs,
                               out_specs=P('theta'), check_vma=False))


def gemm_bound(xs, chunk: int, calls: int, devices) -> Callable[[], float]:
  """Pairs/s of the forward matrix products alone at the engine's shapes:
  per device ``lax.scan`` over the minibatches and ``lax.map`` over its
  ``chunk`` thetas (the engine's CPU loop), each a chain of the four
  products (so that none is dropped); weights drawn outside the program.
  Compiles and runs the program once; returns the timer of ``calls``
  calls."""
  sizes = (INPUTS,) + WIDTHS
  rng = np.random.default_rng(0)
  width = len(devices)
  weights = tuple(
      jnp.asarray(rng.uniform(-1, 1, (width * chunk, a, b)) / np.sqrt(a),
                  jnp.float32) for a, b in zip(sizes[:-1], sizes[1:]))
  flat = xs.reshape(xs.shape[0], BATCH, -1).astype(jnp.float32)

  def per_device(ws, xs):
    def per_batch(total, x):
      def per_theta(w):
        h = x
        for kernel in w:
          h = h @ kernel
        return jnp.sum(h)
      return total + jnp.sum(lax.map(per_theta, ws)), None
    total, _ = lax.scan(per_batch, jnp.zeros((), jnp.float32), xs)
    return total[None]

  fn = _sharded(per_device, devices, (P('theta'), P()))
  fn(weights, flat).block_until_ready()  # compile
  return _timer(lambda: fn(weights, flat), calls,
                calls * width * chunk * xs.shape[0])


def _timer(call: Callable[[], Any], calls: int, pairs: int
           ) -> Callable[[], float]:
  """``calls`` calls of ``call``, timed: pairs/s."""
  def time_it() -> float:
    t = time.perf_counter()
    for _ in range(calls):
      jax.block_until_ready(call())
    return pairs / (time.perf_counter() - t)
  return time_it


def forward_rate(xs, ys, chunk: int, calls: int, devices
                 ) -> Callable[[], float]:
  """Pairs/s of the engine's forward pass alone, looped the same way:
  the model with its kink counters (``TapedKinks``) and the loss, one kink
  setting, no ``vjp``, no backward pass; thetas drawn as the engine draws
  them, outside the program. Compiles and runs it once; returns the
  timer."""
  policy = jaxkink.get_policy('float32')
  model = models.get('mlp', widths=WIDTHS, policy=policy)
  width = len(devices)
  engine = mc.Engine(model, policy, mc.kink_pair('relu', (0, 1)),
                     samples=width * chunk, chunk=chunk, devices=devices[:1])
  params = engine.sample(np.arange(width * chunk), xs[0])['params']

  def per_device(params, xs, ys):
    def per_batch(total, b):
      x, y = b
      def per_theta(p):
        taped = TapedKinks.of(Kinks())
        logits = model.apply({'params': p}, x, taped, False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                               y).mean()
        return loss + sum(t.count for t in taped.tape)
      return total + jnp.sum(lax.map(per_theta, params)), None
    total, _ = lax.scan(per_batch, jnp.zeros((), jnp.float32), (xs, ys))
    return total[None]

  fn = _sharded(per_device, devices, (P('theta'), P(), P()))
  fn(params, xs, ys).block_until_ready()  # compile
  return _timer(lambda: fn(params, xs, ys), calls,
                calls * width * chunk * xs.shape[0])


def draw_seconds(xs, chunk: int, devices, repeats: int = 5) -> float:
  """Seconds to draw one call's thetas (``len(devices) x chunk``) as the
  engine draws them (threefry, PyTorch's initialisers), on one device."""
  policy = jaxkink.get_policy('float32')
  model = models.get('mlp', widths=WIDTHS, policy=policy)
  engine = mc.Engine(model, policy, mc.kink_pair('relu', (0, 1)),
                     samples=len(devices) * chunk, chunk=chunk,
                     devices=devices)
  draw = jax.jit(jax.vmap(lambda k: model.init(k, xs[0, :1], Kinks())))
  keys = engine.keys(list(range(len(devices))))
  with policy.scope(), jax.threefry_partitionable(False):
    jax.block_until_ready(draw(keys))
    t = time.perf_counter()
    for _ in range(repeats):
      jax.block_until_ready(draw(keys))
  return (time.perf_counter() - t) / repeats


class EngineTiming:
  """One engine's calls, timed one by one: chunk indices, seconds, pairs
  and pairs computed (that ran the backward passes) per call."""

  def __init__(self, screen: bool, loop: str, chunk: int, devices,
               init: str = 'pytorch', precision: str = 'float32'):
    self.policy = jaxkink.get_policy(precision)
    model = models.get('mlp', widths=WIDTHS, policy=self.policy,
                       init_scheme=init)
    self.engine = mc.Engine(model, self.policy, mc.kink_pair('relu', (0, 1)),
                            samples=2 ** 24, chunk=chunk, screen=screen,
                            theta_loop=loop, devices=devices)
    self.width = len(devices)
    self.calls: list[dict[str, Any]] = []
    self.warm = False

  def time(self, groups: Sequence[Sequence[int]], xs, ys) -> float:
    """Runs the groups of chunks (one call each), after a call on other
    chunks the first time (compiling); pairs/s over them. (``xs`` given in
    the policy's input dtype is not copied.)"""
    xs = self.policy.cast_inputs(xs)
    if not self.warm:
      self.engine.run_chunks([2 ** 16 + i for i in range(self.width)], xs,
                             ys)
      self.warm = True
    self.calls = []
    for group in groups:
      t = time.perf_counter()
      recs = self.engine.run_chunks(list(group), xs, ys)
      dt = time.perf_counter() - t
      self.calls.append({
          'chunks': list(group), 'seconds': dt,
          'pairs': sum(r.computed.size for r in recs),
          'computed': sum(int(r.computed.sum()) for r in recs),
          'flagged_chunks': [c for c, r in zip(group, recs)
                             if (r.hits.sum(-1) > 0).any()]})
    return rate(self.calls)


def fraction_computed(calls: Sequence[dict[str, Any]]) -> float:
  return sum(c['computed'] for c in calls) / sum(c['pairs'] for c in calls)


def rate(calls: Sequence[dict[str, Any]]) -> float | None:
  if not calls:
    return None
  return sum(c['pairs'] for c in calls) / sum(c['seconds'] for c in calls)


def alternated(contenders: dict[str, Callable[[], float]], rounds: int
               ) -> dict[str, list[float]]:
  """Each contender's rate once per round, in the given order in even
  rounds and reversed in odd ones, so that a drift of the machine's speed
  within the run falls on all of them."""
  rates: dict[str, list[float]] = {k: [] for k in contenders}
  for i in range(rounds):
    order = list(contenders) if i % 2 == 0 else list(contenders)[::-1]
    for name in order:
      rates[name].append(contenders[name]())
  return rates


def round_ratios(rates: dict[str, list[float]], pairs: dict[str, tuple]
                 ) -> dict[str, list[float]]:
  """Per-round ratios ``rates[a][i] / rates[b][i]`` for ``name: (a, b)``
  where both were timed."""
  return {name: [p / q for p, q in zip(rates[a], rates[b])]
          for name, (a, b) in pairs.items() if a in rates and b in rates}


def torch_rate(images: np.ndarray, labels: np.ndarray, samples: int,
               threads: int, warmup_batches: int = 8) -> float:
  """The reference notebook's loop, in PyTorch on the CPU with ``threads``
  intra-op threads (ReLU'(0) = s times the cotangent), timed after one
  untimed theta on the first ``warmup_batches`` minibatches."""
  torch, _, relu = torch_relu.torch_modules()
  torch.set_num_threads(threads)

  def net(s):
    sizes = (INPUTS,) + WIDTHS
    layers = [torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
    def f(x):
      for i, layer in enumerate(layers):
        x = layer(x)
        if i < len(layers) - 1:
          x = relu.apply(x, s)
      return x
    return layers, f

  torch.manual_seed(0)
  x = torch.from_numpy(np.array(images.reshape(len(images), -1)))
  y = torch.from_numpy(labels.astype(np.int64))
  loss_fn = torch.nn.CrossEntropyLoss()
  n_batches = len(images) // BATCH

  def thetas(count: int, batches: int) -> None:
    for _ in range(count):
      layers0, f0 = net(0.0)
      layers1, f1 = net(1.0)
      for l0, l1 in zip(layers0, layers1):
        l1.load_state_dict(l0.state_dict())
      for b in range(batches):
        xb, yb = x[b * BATCH:(b + 1) * BATCH], y[b * BATCH:(b + 1) * BATCH]
        grads = []
        for layers, f in ((layers0, f0), (layers1, f1)):
          for layer in layers:
            layer.zero_grad()
          loss_fn(f(xb), yb).backward()
          grads.append([p.grad for layer in layers
                        for p in layer.parameters()])
        any(not torch.equal(a, b) for a, b in zip(*grads))

  thetas(1, min(warmup_batches, n_batches))
  t = time.perf_counter()
  thetas(samples, n_batches)
  return samples * n_batches / (time.perf_counter() - t)


def planted(x: np.ndarray) -> np.ndarray:
  """The digits with the first image of every minibatch blanked: with zero
  biases (flax's initialisers), its first-layer pre-activations are exact
  zeros, so every (theta, minibatch) pair hits a kink."""
  x = np.array(x)
  x[::BATCH] = 0
  return x


def _fmt(v: float | None, spec: str = '8.1f') -> str:
  return 'n/a'.rjust(8) if v is None else format(v, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
  return None if a is None or b is None else a / b


def conv_main(workload: str) -> None:
  """``--workload=lenet5_pool`` / ``vgg11_pool``: see
  ``benchmarks/montecarlo_conv.py``."""
  conv = montecarlo_conv
  sizes = dict(conv.WORKLOADS[workload]['defaults'])
  for name, flag in (('batches', _BATCHES), ('chunk', _CHUNK),
                     ('torch_samples', _TORCH_SAMPLES)):
    if flags.FLAGS[flag.name].present:
      sizes[name] = flag.value
  devices = jax.local_devices()
  width, threads = len(devices), cli.host_cores()
  if flags.FLAGS[_SAMPLES.name].present:
    sizes['calls'] = max(1, _SAMPLES.value // (sizes['chunk'] * width))
  load_start = load_average()
  try:
    xs, ys, images, labels = conv.load(workload, _DATA_DIR.value,
                                       sizes['batches'])
  except ValueError as e:
    raise cli.UsageValueError(str(e)) from e
  print(f'CPU: {cpu_model()}; {threads} cores for this process '
        f'({platform.machine()})')
  print(f'load average at start: {load_start}')
  print(f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}; {width} JAX '
        f'device(s), {threads} threads for PyTorch')
  print(f'{workload}: {xs.shape[0]} minibatches of {conv.BATCH}; '
        f'{sizes["calls"]} call(s) of {width} x {sizes["chunk"]} thetas')
  model, _ = conv.model_of(workload)
  loop = mc.auto_theta_loop(model, xs[0])
  parts = conv.profile(workload, xs, ys, devices[0])
  engine = conv.engine_rate(workload, loop, xs, ys, sizes['chunk'],
                            sizes['calls'], devices)
  in_loop = (conv.engine_rate(workload, 'map', xs, ys, sizes['chunk'], 1,
                              devices)
             if workload == 'lenet5_pool' and loop != 'map' else None)
  bound = conv.conv_bound(model, xs,
                          max(2, engine['pairs'] // width), devices)
  try:
    torch_pairs = conv.torch_rate(workload, images, labels,
                                  sizes['torch_samples'], threads)
  except ImportError:
    torch_pairs = None
  load_end = load_average()
  results = {
      'workload': workload, 'cpu': cpu_model(), 'cores': threads,
      'devices': width, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'load_average_start': load_start, 'load_average_end': load_end,
      'sizes': sizes, 'theta_loop': loop, 'engine': engine,
      'engine_map': in_loop, 'conv_bound': bound,
      'torch_pairs_per_s': torch_pairs, 'profile_ms': parts,
      'ratios': {
          'engine_over_torch': _ratio(engine['pairs_per_s'], torch_pairs),
          'engine_over_conv_bound': engine['pairs_per_s']
                                    / bound['pairs_per_s'],
          'engine_over_map': _ratio(engine['pairs_per_s'],
                                    in_loop and in_loop['pairs_per_s']),
      },
      'environment': rundir.environment(),
  }
  print('profile, one device, ms per call:')
  for name, ms in parts.items():
    print(f'  {name:70s} {ms:9.2f}')
  print(f'engine, {loop:8s}            {engine["pairs_per_s"]:8.2f} pairs/s '
        f'({engine["computed"]} of {engine["pairs"]} pairs computed; first '
        f'call {engine["first_call_seconds"]:.1f} s)')
  if in_loop is not None:
    print(f'engine, map                 {in_loop["pairs_per_s"]:8.2f} '
          'pairs/s')
  print(f'conv-only bound             {bound["pairs_per_s"]:8.2f} pairs/s')
  print(f'PyTorch, {threads} threads          {_fmt(torch_pairs, "8.2f")} '
        'pairs/s')
  r = results['ratios']
  target = 2 if workload == 'lenet5_pool' else 1.5
  print(f'engine/PyTorch = {_fmt(r["engine_over_torch"], ".2f")}   '
        f'(target >= {target})')
  print(f'engine/conv-only bound = {r["engine_over_conv_bound"]:.2f}')
  if in_loop is not None:
    print(f'engine/map = {r["engine_over_map"]:.2f}')
  print(f'load average at end: {load_end}')
  if _OUT.value:
    rundir.write_json(_OUT.value, results)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _WORKLOAD.value != 'table1':
    conv_main(_WORKLOAD.value)
    return
  load_start = load_average()
  ds = data_lib.load('mnist', 'train', data_dir=_DATA_DIR.value)
  if len(ds) < BATCH:
    raise cli.UsageValueError(f'{ds.describe()}: fewer than one minibatch of '
                              f'{BATCH} digits')
  n = min(len(ds), _BATCHES.value * BATCH)
  x = data_lib.preprocess(ds.images[:n], 'mnist', normalize=False)
  labels = jnp.asarray(ds.labels[:n])
  (xs, ys), _ = mc.stack_batches(x, labels, BATCH)
  (xs_planted, _), _ = mc.stack_batches(jnp.asarray(planted(np.asarray(x))),
                                        labels, BATCH)
  devices = jax.local_devices()
  width, chunk = len(devices), _CHUNK.value
  threads = cli.host_cores()
  calls = max(1, _SAMPLES.value // (chunk * width))
  groups = [list(range(i * width, (i + 1) * width)) for i in range(calls)]
  print(f'CPU: {cpu_model()}; {threads} cores for this process '
        f'({platform.machine()})')
  print(f'load average at start: {load_start}')
  print(f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}; {width} JAX '
        f'device(s) ({devices[0].device_kind}), {threads} threads for JAX '
        'and PyTorch')
  print(f'{ds.describe()}; {xs.shape[0]} minibatches of {BATCH}; {calls} '
        f'call(s) of {width} x {chunk} thetas = {calls * width * chunk} '
        'thetas per contender')

  peak = matmul_peak()
  loop = 'map' if jax.default_backend() == 'cpu' else 'vmap'
  other = 'vmap' if loop == 'map' else 'map'
  a_timing = EngineTiming(True, loop, chunk, devices)
  b_timing = EngineTiming(False, loop, chunk, devices)
  contenders = {
      'bound': gemm_bound(xs, chunk, calls, devices),
      'forward': forward_rate(xs, ys, chunk, calls, devices),
      'a': lambda: a_timing.time(groups, xs, ys),
      'b': lambda: b_timing.time(groups, xs, ys),
  }
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    torch_x, torch_y = np.asarray(x), np.asarray(ds.labels[:n])
    contenders['c'] = lambda: torch_rate(torch_x, torch_y,
                                         _TORCH_SAMPLES.value, threads)
  except ImportError:
    pass
  if _FLOAT16_CALLS.value:
    # Every pair hits a kink in float16: the screen computes all of them.
    f16_groups = groups[:_FLOAT16_CALLS.value]
    f16 = {screen: EngineTiming(screen, loop, chunk, devices,
                                precision='float16') for screen in (True,
                                                                    False)}
    xs16 = f16[True].policy.cast_inputs(xs)  # once, not in every round
    contenders['f16_screened'] = lambda: f16[True].time(f16_groups, xs16, ys)
    contenders['f16_unscreened'] = lambda: f16[False].time(f16_groups, xs16,
                                                           ys)
  rounds = alternated(contenders, _ROUNDS.value)
  med = {k: float(np.median(v)) for k, v in rounds.items()}
  bound, forward, a, b = med['bound'], med['forward'], med['a'], med['b']
  c = med.get('c')
  a_calls = a_timing.calls
  computed_a = fraction_computed(a_calls)
  draw = draw_seconds(xs, chunk, devices)
  # The chunks of that run with no flagged pair, timed again as whole calls.
  clean = [c for call in a_calls for c in call['chunks']
           if c not in call['flagged_chunks']]
  clean_groups = [clean[i:i + width]
                  for i in range(0, len(clean) - width + 1, width)]
  a_clean = a_timing.time(clean_groups, xs, ys) if clean_groups else None
  a_other = EngineTiming(True, other, chunk, devices).time(groups, xs, ys)
  flagged_timing = EngineTiming(True, loop, chunk, devices, init='flax')
  a_flagged = flagged_timing.time(groups, xs_planted, ys)
  computed_flagged = fraction_computed(flagged_timing.calls)
  b_flagged = EngineTiming(False, loop, chunk, devices, init='flax').time(
      groups, xs_planted, ys)
  torch_peak = torch_matmul_peak() if 'c' in contenders else None
  f16_computed = (fraction_computed(f16[True].calls) if _FLOAT16_CALLS.value
                  else None)
  load_end = load_average()

  flops = forward_flops()
  # Matrix-product FLOPs per pair: (a) one forward (and the few computed
  # pairs' two backward passes), (b) one forward and two backward passes,
  # (c) two forward and two backward passes.
  back = backward_flops()
  pair_flops = {'a': flops + computed_a * 2 * back, 'b': flops + 2 * back,
                'c': 2 * (flops + back)}
  per_round = round_ratios(rounds, {
      'a_over_c': ('a', 'c'), 'a_over_bound': ('a', 'bound'),
      'a_over_forward': ('a', 'forward'), 'b_over_c': ('b', 'c'),
      'float16_screened_over_unscreened': ('f16_screened',
                                           'f16_unscreened')})
  results = {
      'cpu': cpu_model(), 'cores': threads, 'devices': width,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'load_average_start': load_start, 'load_average_end': load_end,
      'chunk': chunk, 'calls': calls, 'minibatches': int(xs.shape[0]),
      'theta_loop': loop,
      'matmul_peak_gflops': peak / 1e9,
      'torch_matmul_peak_gflops': torch_peak and torch_peak / 1e9,
      'gemm_bound_pairs_per_s': bound,
      'gemm_bound_gflops': bound * flops / 1e9,
      'forward_only_pairs_per_s': forward,
      'draw_seconds_per_call': draw,
      'matmul_flops_per_pair': pair_flops,
      'matmul_gflops': {'a': a * pair_flops['a'] / 1e9,
                        'b': b * pair_flops['b'] / 1e9,
                        'c': c and c * pair_flops['c'] / 1e9},
      'a_screened_pairs_per_s': a,
      'a_fraction_computed': computed_a,
      'a_unflagged_chunks_pairs_per_s': a_clean,
      'a_unflagged_chunks': len(clean),
      'a_flagged_pairs_per_s': a_flagged,
      'a_flagged_fraction_computed': computed_flagged,
      f'a_screened_{other}_pairs_per_s': a_other,
      'b_unscreened_pairs_per_s': b,
      'b_flagged_pairs_per_s': b_flagged,
      'c_torch_pairs_per_s': c,
      'ratios': {
          'a_over_c': _ratio(a, c),
          'a_over_bound': a / bound,
          'forward_over_bound': forward / bound,
          'a_over_forward': a / forward,
          'a_unflagged_over_bound': _ratio(a_clean, bound),
          'b_over_c': _ratio(b, c),
          'a_over_b': a / b,
          'a_flagged_over_b_flagged': a_flagged / b_flagged,
          f'a_{other}_over_a': a_other / a,
          'bound_over_matmul_peak': bound * flops / peak,
          'torch_peak_over_matmul_peak': _ratio(torch_peak, peak),
      },
      'rounds': rounds,
      'round_ratios': per_round,
      'float16_fraction_computed': f16_computed,
      'environment': rundir.environment(),
  }
  # The targets' ratios: medians of the per-round ratios.
  for name, values in per_round.items():
    results['ratios'][name] = float(np.median(values))
  print(f'fp32 matmul peak (XLA, 1 device)   {peak / 1e9:8.1f} GFLOP/s')
  if torch_peak is not None:
    print(f'fp32 matmul peak (PyTorch)         {torch_peak / 1e9:8.1f} '
          f'GFLOP/s')
  print(f'bound: forward GEMMs only          {bound:8.1f} pairs/s '
        f'({bound * flops / 1e9:.1f} GFLOP/s)')
  print(f'forward pass + kink counts only   {forward:8.1f} pairs/s')
  print(f'(a) screened, {loop:4s}, digits       {a:8.1f} pairs/s  '
        f'({100 * computed_a:.2f}% of pairs ran the backward passes)')
  print(f'    unflagged chunks only          {_fmt(a_clean)} pairs/s  '
        f'({len(clean)} of {calls * width} chunks)')
  print(f'    planted kinks (all flagged)    {a_flagged:8.1f} pairs/s  '
        f'({100 * computed_flagged:.0f}% computed)')
  print(f'    screened, {other:4s}, digits       {a_other:8.1f} pairs/s')
  print(f'(b) unscreened, digits             {b:8.1f} pairs/s')
  print(f'    unscreened, planted kinks      {b_flagged:8.1f} pairs/s')
  if c is not None:
    print(f'(c) PyTorch loop, {threads} threads        {c:8.1f} pairs/s')
  else:
    print('(c) skipped: torch is not installed (pip install -e .[bench])')
  r = results['ratios']
  print(f'(a)/(c) = {_fmt(r["a_over_c"], ".2f")}   (target >= 8)')
  print(f'(a)/bound = {r["a_over_bound"]:.2f}   (target >= 0.8); unflagged '
        f'chunks/bound = {_fmt(r["a_unflagged_over_bound"], ".2f")}')
  print(f'forward only/bound = {r["forward_over_bound"]:.2f}; (a)/forward '
        f'only = {r["a_over_forward"]:.2f}')
  print(f'(b)/(c) = {_fmt(r["b_over_c"], ".2f")}   (target >= 2)')
  per_call = width * chunk * int(xs.shape[0])
  print(f'theta draws: {draw:.3f} s per call (one device), '
        f'{100 * draw * a / per_call:.0f}% of a call of (a)')
  gf = results['matmul_gflops']
  print(f'matrix products per pair: (a) {pair_flops["a"] / 1e6:.0f}, (b) '
        f'{pair_flops["b"] / 1e6:.0f}, (c) {pair_flops["c"] / 1e6:.0f} '
        f'MFLOP; done at (a) {gf["a"]:.0f}, (b) {gf["b"]:.0f}, (c) '
        f'{_fmt(gf["c"], ".0f")} GFLOP/s')
  print(f'(a)/(b) = {r["a_over_b"]:.2f}; all flagged: screened/unscreened = '
        f'{r["a_flagged_over_b_flagged"]:.2f}; {other}/{loop} screened = '
        f'{r[f"a_{other}_over_a"]:.2f}')
  print(f'bound at {100 * r["bound_over_matmul_peak"]:.0f}% of the XLA '
        'matmul peak' + ('' if torch_peak is None else
                         f'; PyTorch peak / XLA peak = '
                         f'{r["torch_peak_over_matmul_peak"]:.2f}'))
  print(f'{_ROUNDS.value} alternated round(s), pairs/s per round:')
  for name, values in rounds.items():
    print(f'  {name:16s} ' + ' '.join(f'{v:8.1f}' for v in values))
  for name, values in per_round.items():
    print(f'{name} per round: ' + ' '.join(f'{v:.3f}' for v in values)
          + f'; median {np.median(values):.3f}')
  if f16_computed is not None:
    print(f'float16: {100 * f16_computed:.0f}% of pairs computed by the '
          'screened program (target: screened/unscreened >= 1)')
  print(f'load average at end: {load_end}')
  if _OUT.value:
    rundir.write_json(_OUT.value, results)


if __name__ == '__main__':
  cli.use_host_devices()
  app.run(cli.main(main))
