r"""The volume engine on convolutional networks: TMLR's MaxPool comparisons.

``benchmarks/montecarlo.py --workload=lenet5_pool`` (LeNet-5, MNIST,
(x - 0.5) / 0.5, minibatch 128) or ``--workload=vgg11_pool`` (VGG11 with the
TMLR init on the CIFAR-10 sample, kuangliu's normalisation, minibatch 128),
float32, native against minimal MaxPool, ReLU'(0) = 0 in both: (theta,
minibatch) pairs per second, all in one run:

  engine: ``jaxkink.montecarlo.Engine`` with the theta loop that
      ``auto_theta_loop`` picks (``'programs'`` on CPUs), screened (in
      float32 every pair has pooling ties, so every pair is computed);
  engine, map: the in-program loop (``theta_loop='map'``), LeNet-5 only
      (VGG11 takes minutes per pair that way);
  conv-only bound: the convolutions a pair needs and nothing else, at the
      engine's shapes, computed as the model computes them (XLA's
      convolution, or ``tap_conv`` on the maps of at most the model's
      ``tap_conv_pixels``), in one program per pair on each device as the
      engine runs them: the forward convolutions once, and per backward pass
      every kernel gradient and every input gradient but the first layer's;
  PyTorch: the authors' procedure (``ryanboustany/MaxPool-numerical``,
      ``notebooks/threshold_maxpool.ipynb``, ``diffMaxpool``): two networks
      with the same weights whose pools are ``MaxPool2DBeta(0)`` and
      ``MaxPool2DBeta(1)`` (``beta * minimal + (1 - beta) * native``, both
      pools computed), per minibatch two forward and two backward passes
      and the L1 norm of the gradient difference; as many threads as JAX's
      CPU client has, warmed up on the same minibatches first;

and a profile of the pieces at the engine's shapes, each timed alone: the
theta draw, the forward pass with and without the kink counters, the
engine's forward (with the pullbacks) and backward programs, every
convolution forward / input gradient / kernel gradient at top level and
inside a one-step ``lax.scan``, as XLA's convolution and, where the model
uses it, as ``tap_conv`` (XLA's CPU backend emits a generic loop nest
for a convolution inside a loop: jax-ml/jax#12868), and both MaxPool backward
rules against XLA's ``select_and_scatter``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import optax

import jaxkink
from jaxkink import data as data_lib
from jaxkink import models
from jaxkink import montecarlo as mc
from jaxkink import pooling
from jaxkink.hits import TapedKinks
from jaxkink.kinks import Kinks
from jaxkink.models.layers import tap_conv

BATCH = 128
CIFAR_SAMPLE = os.path.join('cifar10-first4000', 'cifar10_first4000.npz')
# ``defaults`` of each workload: minibatches per theta, thetas per device
# per call, calls, thetas for PyTorch, calls per timing of the profile.
WORKLOADS = {
    'lenet5_pool': dict(model='lenet5', opts={}, dataset='mnist',
                        defaults=dict(batches=20, chunk=2, calls=2,
                                      torch_samples=2, repeats=10)),
    'vgg11_pool': dict(model='vgg11', opts={'init_scheme': 'tmlr'},
                       dataset='cifar10',
                       defaults=dict(batches=2, chunk=1, calls=1,
                                     torch_samples=1, repeats=2)),
}


def load(workload: str, data_dir: str | None, batches: int):
  """``(xs, ys)``: ``batches`` minibatches of 128, NHWC float32, and the
  images as uint8 (for PyTorch)."""
  spec = WORKLOADS[workload]
  n = batches * BATCH
  if spec['dataset'] == 'mnist':
    ds = data_lib.load('mnist', 'train', data_dir=data_dir)
    images, labels = ds.images, ds.labels
  else:
    directory = data_lib.resolve_data_dir(data_dir)
    path = os.path.join(directory or '', CIFAR_SAMPLE)
    if directory is None or not os.path.exists(path):
      raise ValueError(f'{workload} needs {CIFAR_SAMPLE} in --data_dir')
    with np.load(path) as z:
      images, labels = np.asarray(z['x']), np.asarray(z['y'], np.int32)
  if len(images) < n:
    raise ValueError(f'{workload}: {batches} minibatches of {BATCH} need '
                     f'{n} images, the data has {len(images)}')
  x = data_lib.preprocess(images[:n], spec['dataset'], normalize=True)
  y = jnp.asarray(labels[:n])
  (xs, ys), _ = mc.stack_batches(x, y, BATCH)
  return xs, ys, np.asarray(x), np.asarray(labels[:n], np.int64)


def model_of(workload: str):
  spec = WORKLOADS[workload]
  policy = jaxkink.get_policy('float32')
  return models.get(spec['model'], policy=policy, **spec['opts']), policy


def engine_rate(workload: str, loop: str, xs, ys, chunk: int, calls: int,
                devices) -> dict[str, Any]:
  """Pairs/s of the engine over ``calls`` calls of ``len(devices) x chunk``
  thetas, after one call on other thetas (compiling); its compile time."""
  model, policy = model_of(workload)
  engine = mc.Engine(model, policy, mc.kink_pair('pool', (0, 1)),
                     samples=2 ** 24, chunk=chunk, theta_loop=loop,
                     devices=devices)
  width = len(devices)
  t = time.perf_counter()
  engine.run_chunks([2 ** 16 + i for i in range(width)], xs[:1], ys[:1])
  compile_s = time.perf_counter() - t
  engine.run_chunks([2 ** 16 + i for i in range(width)], xs, ys)  # warm
  t = time.perf_counter()
  computed = pairs = 0
  for c in range(calls):
    for rec in engine.run_chunks(list(range(c * width, (c + 1) * width)),
                                 xs, ys):
      pairs += rec.computed.size
      computed += int(rec.computed.sum())
  dt = time.perf_counter() - t
  return {'pairs_per_s': pairs / dt, 'pairs': pairs, 'computed': computed,
          'seconds': dt, 'first_call_seconds': compile_s}


def _equations(model, x, *primitives: str) -> list:
  """The equations of ``primitives`` in a trace of ``model``'s forward pass
  on ``x``, nested calls included, in order."""
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x[:1],
                                                Kinks()))
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, Kinks()))(variables)
  found = []

  def walk(jx):
    for eqn in jx.eqns:
      if eqn.primitive.name in primitives:
        found.append(eqn)
      for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else (value,):
          sub = getattr(sub, 'jaxpr', sub)
          if hasattr(sub, 'eqns'):
            walk(sub)
  walk(jaxpr.jaxpr)
  return found


def _conv_layers(model, x):
  """Per convolution of ``model`` on ``x``, those it computes as
  ``tap_conv`` included: (input shape, kernel shape, padding, strides,
  dimension numbers)."""
  plain = model.clone(tap_conv_pixels=0)
  return [(e.invars[0].aval.shape, e.invars[1].aval.shape,
           e.params['padding'], e.params['window_strides'],
           e.params['dimension_numbers'])
          for e in _equations(plain, x, 'conv_general_dilated')]


def _model_conv(model, pad, strides, dn) -> Callable:
  """The convolution of one layer as ``model`` computes it."""
  return lambda x, w: tap_conv(x, w, strides, pad, dimension_numbers=dn,
                               max_pixels=model.tap_conv_pixels)


def _uses_taps(model, shape, kshape, pad, strides, dn) -> bool:
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  w = jax.ShapeDtypeStruct(kshape, jnp.float32)
  jaxpr = jax.make_jaxpr(_model_conv(model, pad, strides, dn))(x, w)
  return all(e.primitive.name != 'conv_general_dilated' for e in jaxpr.eqns)


def conv_bound(model, xs, calls_per_device: int, devices) -> dict[str, Any]:
  """Pairs/s of a pair's convolutions alone (see the module docstring), one
  program per pair on each device, the devices fed in step."""
  layers = _conv_layers(model, xs[0])
  rng = np.random.default_rng(0)

  def conv(x, w, pad, strides, dn):
    return _model_conv(model, pad, strides, dn)(x, w)

  def pair(inputs, kernels, cotangents):
    total = jnp.zeros((), jnp.float32)
    for (x, w, (_, _, pad, strides, dn)) in zip(inputs, kernels, layers):
      total += jnp.sum(conv(x, w, pad, strides, dn))
    for cts in cotangents:   # the two backward passes
      for i, (x, w, g, (_, _, pad, strides, dn)) in enumerate(
          zip(inputs, kernels, cts, layers)):
        _, pull = jax.vjp(lambda x_, w_, p=pad, s=strides, d=dn:
                          conv(x_, w_, p, s, d), x, w)
        dx, dw = pull(g)
        total += jnp.sum(dw) + (jnp.sum(dx) if i else 0)
    return total

  inputs = [jnp.asarray(rng.standard_normal(s), jnp.float32)
            for s, *_ in layers]
  kernels = [jnp.asarray(rng.standard_normal(k) * 0.1, jnp.float32)
             for _, k, *_ in layers]
  outs = [jax.eval_shape(lambda x, w, l=l: conv(x, w, *l[2:]), x, w)
          for x, w, l in zip(inputs, kernels, layers)]
  cts = [[jnp.asarray(rng.standard_normal(o.shape), jnp.float32)
          for o in outs] for _ in range(2)]
  fn = jax.jit(pair)
  args = [jax.device_put((inputs, kernels, cts), d) for d in devices]
  for a in args:
    fn(*a).block_until_ready()
  t = time.perf_counter()
  out = [fn(*a) for _ in range(calls_per_device) for a in args]
  jax.block_until_ready(out)
  dt = time.perf_counter() - t
  return {'pairs_per_s': len(out) / dt,
          'convolutions': [{'input': list(s), 'kernel': list(k)}
                           for s, k, *_ in layers]}


_REPEATS = [10]


def _timed(f: Callable, *args) -> float:
  """Milliseconds per call of ``jax.jit(f)`` (compiled and warmed first)."""
  f = jax.jit(f)
  jax.block_until_ready(f(*args))
  jax.block_until_ready(f(*args))
  t = time.perf_counter()
  for _ in range(_REPEATS[0]):
    out = f(*args)
  jax.block_until_ready(out)
  return 1e3 * (time.perf_counter() - t) / _REPEATS[0]


def _in_scan(f: Callable) -> Callable:
  """``f`` inside a one-step ``lax.scan`` over its first argument."""
  return lambda x, *rest: lax.scan(lambda c, xi: (c, f(xi, *rest)), None,
                                   x[None])[1]


def profile(workload: str, xs, ys, device) -> dict[str, float]:
  """Milliseconds per call of each piece of one pair, on one device."""
  _REPEATS[0] = WORKLOADS[workload]['defaults']['repeats']
  model, policy = model_of(workload)
  pair = mc.kink_pair('pool', (0, 1))
  programs = mc.make_pair_programs(model, policy, pair)
  x, y = jax.device_put((xs[0], ys[0]), device)
  key = jax.device_put(jax.random.key(0), device)
  out: dict[str, float] = {}
  with policy.scope(), jax.threefry_partitionable(False):
    out['theta draw'] = _timed(programs.init, key, x[:1])
    variables = jax.jit(programs.init)(key, x[:1])

    def loss(v, taped):
      kinks = TapedKinks.of(Kinks()) if taped else Kinks()
      logits = model.apply(v, x, kinks)
      value = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                              y).mean()
      return value + (sum(t.count for t in kinks.tape) if taped else 0)

    out['forward (loss)'] = _timed(lambda v: loss(v, False), variables)
    out['forward + kink counters'] = _timed(lambda v: loss(v, True),
                                            variables)
    out['one gradient (jax.grad, native)'] = _timed(
        jax.grad(lambda v: loss(v, False)), variables)
    out['engine forward program (2 vjps)'] = _timed(programs.forward,
                                                    variables, x, y)
    pullbacks = jax.jit(programs.forward)(variables, x, y)[2]
    out['engine backward program (2 backward passes)'] = _timed(
        programs.backward, pullbacks)
    for i, (shape, kshape, pad, strides, dn) in enumerate(
        _conv_layers(model, x)):
      a = jax.device_put(jnp.ones(shape, jnp.float32), device)
      w = jax.device_put(jnp.full(kshape, 0.01, jnp.float32), device)
      xla = lambda a, w, p=pad, s=strides, d=dn: lax.conv_general_dilated(
          a, w, s, p, dimension_numbers=d)
      kinds = [('', xla)]
      if _uses_taps(model, shape, kshape, pad, strides, dn):
        kinds.append((' (taps, the model\'s)',
                      _model_conv(model, pad, strides, dn)))
      g = jnp.ones(jax.eval_shape(xla, a, w).shape, jnp.float32)
      for label, conv in kinds:
        dx = lambda a, w, g, c=conv: jax.vjp(lambda a_: c(a_, w), a)[1](g)[0]
        dw = lambda a, w, g, c=conv: jax.vjp(lambda w_: c(a, w_), w)[1](g)[0]
        name = f'conv {i} {tuple(shape)}x{tuple(kshape)}{label}'
        for part, f, fargs in (('forward', conv, (a, w)),
                               ('input grad', dx, (a, w, g)),
                               ('kernel grad', dw, (a, w, g))):
          out[f'{name} {part}'] = _timed(f, *fargs)
          out[f'{name} {part}, in a scan'] = _timed(_in_scan(f), *fargs)
    for shape in _pool_inputs(model, x):
      a = jax.device_put(jnp.round(jax.random.normal(
          jax.random.key(1), shape), 1), device)
      g = jnp.ones(pooling.pool_output_shape(shape, (2, 2), (2, 2)),
                   jnp.float32)
      for beta in (0.0, 1.0):
        out[f'max_pool backward {tuple(shape)} beta={beta:g}'] = _timed(
            lambda a, g, b=beta: jax.vjp(lambda a_: pooling.max_pool(
                a_, (2, 2), (2, 2), beta=b), a)[1](g)[0], a, g)
      out[f'max_pool backward {tuple(shape)} select_and_scatter'] = _timed(
          lambda a, g: jax.vjp(lambda a_: lax.reduce_window(
              a_, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID'),
                               a)[1](g)[0], a, g)
  return out


def _pool_inputs(model, x):
  """The input shapes of the model's max pools (jaxkink's ``max_pool``
  reduces with a traced ``-inf``: a generic ``reduce_window``)."""
  return [tuple(e.invars[0].aval.shape)
          for e in _equations(model, x, 'reduce_window_max',
                              'reduce_window')]


def torch_rate(workload: str, images: np.ndarray, labels: np.ndarray,
               samples: int, threads: int) -> float:
  """Pairs/s of the authors' procedure in PyTorch (module docstring), after
  one untimed theta on two minibatches."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)

  class Minimal(torch.autograd.Function):
    """maxpool.py's MaxPool2DMinimalFunction (2x2, stride 2): the cotangent
    over the window's maxima, divided by their count."""

    @staticmethod
    def forward(ctx, a):
      n, c, h, w = a.shape
      windows = a.reshape(n, c, h // 2, 2, w // 2, 2)
      out = windows.amax(3).amax(4)
      ctx.save_for_backward(windows, out)
      return out

    @staticmethod
    def backward(ctx, g):
      windows, out = ctx.saved_tensors
      mask = windows == out[:, :, :, None, :, None]
      grad = torch.zeros_like(windows)
      spread = torch.broadcast_to(g[:, :, :, None, :, None], grad.shape)
      grad[mask] = spread[mask]
      grad /= mask.sum(dim=(3, 5), keepdim=True)
      return grad.reshape(windows.shape[0], windows.shape[1],
                          2 * windows.shape[2], 2 * windows.shape[4])

  class Beta(nn.Module):
    """MaxPool2DBeta: ``beta * minimal + (1 - beta) * native``."""

    def __init__(self, beta):
      super().__init__()
      self.beta, self.native = beta, nn.MaxPool2d(2, 2)

    def forward(self, a):
      return self.beta * Minimal.apply(a) + (1 - self.beta) * self.native(a)

  class ReLUAlpha(torch.autograd.Function):
    """relu.py's ReLUAlphaFunction with alpha = 0."""

    @staticmethod
    def forward(ctx, a):
      ctx.save_for_backward(a)
      return a.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
      (a,) = ctx.saved_tensors
      grad = g.clone()
      grad[a < 0] = 0
      grad[a == 0] = 0 * g[a == 0]
      return grad

  class Act(nn.Module):
    def forward(self, a):
      return ReLUAlpha.apply(a)

  def network(beta):
    if workload == 'lenet5_pool':
      return nn.Sequential(
          nn.Conv2d(1, 6, 5), Act(), Beta(beta), nn.Conv2d(6, 16, 5), Act(),
          Beta(beta), nn.Flatten(), nn.Linear(256, 120), Act(),
          nn.Linear(120, 84), Act(), nn.Linear(84, 10))
    layers, channels = [], 3
    for v in (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M', 512, 512,
              'M'):
      if v == 'M':
        layers.append(Beta(beta))
      else:
        layers += [nn.Conv2d(channels, v, 3, padding=1), Act()]
        channels = v
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, 10))

  torch.manual_seed(0)
  x = torch.from_numpy(np.array(images.transpose(0, 3, 1, 2)))
  y = torch.from_numpy(labels)
  loss_fn = nn.CrossEntropyLoss()
  n_batches = len(images) // BATCH

  def thetas(count: int, batches: int) -> None:
    for _ in range(count):
      net1, net2 = network(0), network(1)
      net2.load_state_dict(net1.state_dict())
      for b in range(batches):
        xb, yb = x[b * BATCH:(b + 1) * BATCH], y[b * BATCH:(b + 1) * BATCH]
        for p in (*net1.parameters(), *net2.parameters()):
          p.grad = None
        loss1, loss2 = loss_fn(net1(xb), yb), loss_fn(net2(xb), yb)
        loss1.backward()
        loss2.backward()
        sum(torch.norm(p1.grad - p2.grad, 1).item()
            for p1, p2 in zip(net1.parameters(), net2.parameters()))

  thetas(1, min(2, n_batches))
  t = time.perf_counter()
  thetas(samples, n_batches)
  return samples * n_batches / (time.perf_counter() - t)
