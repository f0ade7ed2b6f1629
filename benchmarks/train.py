r"""Training throughput: K vmapped members vs one member vs a PyTorch loop.

Also ``batching='separate'`` (K members as one one-member program called K
times): per member it should run at one member's rate.

For an MLP (MNIST-shaped inputs) and a small VGG (CIFAR-shaped inputs), times
``jaxkink.training``'s jitted epoch (a ``lax.scan`` of the grid's step over
``--steps`` minibatches of synthetic uint8 images, SGD with momentum and
weight decay) for grids of 1 seed x K kink values, with every member given
its own copy of the minibatch (the default) and with the minibatch shared
(``shared_batch``). The PyTorch baseline trains the same architecture the
way the reference code does, one network per loop, on the same number of
steps (``torch`` is the ``bench`` extra; skipped when it is missing).

Reported: images per second per member (K members processing B images each
per step count K * B images). The target on a GPU is K members at no less
than 1 / 1.2 of one member's per-member rate times K overall, i.e.
``per_member(K) >= per_member(1) / 1.2``.

Run::

  python benchmarks/train.py --members=1,4,8 --steps=20 \
      --out=runs/bench_train.json
"""

from __future__ import annotations

import json
import time
from typing import Any, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import jaxkink
from jaxkink import cli
from jaxkink import models
from jaxkink import rundir
from jaxkink import training

_MEMBERS = flags.DEFINE_list('members', ['1', '4', '8'], 'Grid sizes K.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Minibatches per timed epoch.')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Minibatch size.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed epochs (best kept).')
_MLP = flags.DEFINE_list('mlp_widths', ['512', '512', '512', '10'],
                         'MLP widths (784 inputs).')
_VGG = flags.DEFINE_list('vgg_config', ['16', 'M', '32', 'M', '64', 'M',
                                        '64', 'M', '64', 'M'],
                         'Small VGG configuration (32x32x3 inputs).')
_MODELS = flags.DEFINE_list('models', ['mlp', 'vgg'], 'Which models.')
_TORCH = flags.DEFINE_boolean('torch', True, 'Also time PyTorch.')
_PRECISION = flags.DEFINE_string('precision', 'float32', 'Precision policy: '
                                 + ', '.join(jaxkink.POLICIES) + '.')
_OUT = flags.DEFINE_string('out', None, 'Optional JSON path for the results.')

OPTIMIZER = training.OptimizerConfig('sgd', lr=0.01, momentum=0.9,
                                     weight_decay=5e-4)
MODELS = ('mlp', 'vgg')
CLASSES = 10  # the synthetic labels are 0..9
POOLS = 5  # 32x32 inputs: five 2x2 max pools bring them to 1x1


def parse_members(values: Sequence[str]) -> tuple[int, ...]:
  """``--members`` as integers >= 1, one of them 1 (the ratios' base)."""
  sizes = cli.positive_ints(values, '--members')
  if 1 not in sizes:
    raise ValueError(f'--members must include 1 (per-member rates are '
                     f'compared to one member), got {",".join(values)}')
  return sizes


def parse_mlp(values: Sequence[str]) -> tuple[int, ...]:
  """``--mlp_widths`` as integers >= 1, the last (the classes) >= 10."""
  widths = cli.positive_ints(values, '--mlp_widths')
  if widths[-1] < CLASSES:
    raise ValueError(f'--mlp_widths: the last width is the number of classes '
                     f'and must be >= {CLASSES}, got {widths[-1]}')
  return widths


def parse_vgg(values: Sequence[str]) -> tuple[int | str, ...]:
  """``--vgg_config`` as positive integers and ``'M'`` (at most five)."""
  config: list[int | str] = []
  for v in values:
    if str(v).strip().upper() == 'M':
      config.append('M')
    else:
      config += cli.positive_ints([v], '--vgg_config (widths or M)')
  if not config:
    raise ValueError('--vgg_config is empty')
  if config.count('M') > POOLS:
    raise ValueError(f'--vgg_config: at most {POOLS} M (max pools) for '
                     f'32x32 inputs, got {config.count("M")}')
  return tuple(config)


cli.check('members', parse_members, '--members must be integers >= 1, one '
          'of them 1')
cli.check_positive(['steps', 'batch_size', 'repeats'])
cli.check('mlp_widths', parse_mlp, '--mlp_widths must be integers >= 1')
cli.check('vgg_config', parse_vgg, '--vgg_config must be integers >= 1 and M')
cli.check('models', bool, f'--models is empty; valid: {", ".join(MODELS)}')
cli.check_choice('models', MODELS)
cli.check_together(
    ['vgg_config', 'models', 'torch'],
    lambda v: (not v['torch'] or 'vgg' not in v['models']
               or parse_vgg(v['vgg_config']).count('M') == POOLS),
    f'--vgg_config needs exactly {POOLS} M with --torch (the PyTorch '
    'classifier takes the channels of a 1x1 map); or pass --notorch')
cli.check_policies('precision')
cli.check_output_file('out')


def _model(name: str, policy):
  if name == 'mlp':
    return (models.get('mlp', widths=parse_mlp(_MLP.value), policy=policy),
            (28, 28, 1), 'mnist')
  config = parse_vgg(_VGG.value)
  return models.get('vgg11', config=config, policy=policy), (32, 32, 3), (
      'cifar10')


def time_jax(name: str, members: int, shared: bool, policy,
             batching: str = 'vmap') -> float:
  """Images per second per member of a 1 x ``members`` grid."""
  model, shape, dataset = _model(name, policy)
  rng = np.random.default_rng(0)
  n = _STEPS.value * _BATCH.value
  images = jnp.asarray(rng.integers(0, 256, (n, *shape), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, CLASSES, n).astype(np.int32))
  grid = training.make_grid([0], np.linspace(0, 1, members))
  tx = training.make_optimizer(OPTIMIZER, 0)
  epoch = training.make_train_epoch(model, tx, policy, grid, dataset=dataset,
                                    shared_batch=shared, batching=batching)
  params = training.init_params(model, 0, jnp.zeros((1, *shape),
                                                    policy.input_dtype),
                                policy)
  state = training.init_state(model, tx, grid, None, policy, params=[params])
  order = training.epoch_order(grid, n, _BATCH.value, 0)
  keys = training.augment_keys(grid)
  with policy.scope():
    jax.block_until_ready(epoch(state, grid.kinks, images, labels, order,
                                keys))  # compile
    best = float('inf')
    for _ in range(_REPEATS.value):
      start = time.perf_counter()
      jax.block_until_ready(epoch(state, grid.kinks, images, labels, order,
                                  keys))
      best = min(best, time.perf_counter() - start)
  return n / best


def time_torch(name: str) -> float | None:
  """Images per second of one network trained in a PyTorch loop."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from torch import nn  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  torch.manual_seed(0)
  if name == 'mlp':
    widths = [784, *parse_mlp(_MLP.value)]
    layers: list[Any] = [nn.Flatten()]
    for i in range(len(widths) - 1):
      layers.append(nn.Linear(widths[i], widths[i + 1]))
      if i < len(widths) - 2:
        layers.append(nn.ReLU())
    shape = (1, 28, 28)
  else:
    layers, c = [], 3
    for v in parse_vgg(_VGG.value):
      if v == 'M':
        layers.append(nn.MaxPool2d(2, 2))
      else:
        layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
        c = v
    layers += [nn.Flatten(), nn.Linear(c, CLASSES)]
    shape = (3, 32, 32)
  net = nn.Sequential(*layers)
  opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9,
                        weight_decay=5e-4)
  loss_fn = nn.CrossEntropyLoss()
  b = _BATCH.value
  x = torch.randn(_STEPS.value, b, *shape)
  y = torch.randint(0, CLASSES, (_STEPS.value, b))

  def epoch():
    for k in range(_STEPS.value):
      opt.zero_grad()
      loss = loss_fn(net(x[k]), y[k])
      loss.backward()
      opt.step()

  epoch()
  best = float('inf')
  for _ in range(_REPEATS.value):
    start = time.perf_counter()
    epoch()
    best = min(best, time.perf_counter() - start)
  return _STEPS.value * b / best


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  policy, = jaxkink.policies_for_program([_PRECISION.value])
  sizes = parse_members(_MEMBERS.value)
  results: dict[str, Any] = {
      'steps': _STEPS.value, 'batch_size': _BATCH.value,
      'precision': policy.name, 'device': jax.devices()[0].device_kind,
      'backend': jax.default_backend(), 'models': {}}
  for name in _MODELS.value:
    rows = {}
    variants = [(False, 'vmap'), (True, 'vmap'), (False, 'separate')]
    for shared, batching in variants:
      for k in sizes:
        if (shared or batching != 'vmap') and k == 1:
          continue  # K = 1 is the same one-member program
        rate = time_jax(name, k, shared, policy, batching)
        key = (f'K={k}' + (' shared' if shared else '')
               + (f' {batching}' if batching != 'vmap' else ''))
        rows[key] = rate
        print(f'{name} jax {key}: {rate:.0f} images/s per member, '
              f'{rate * k:.0f} total', flush=True)
    if _TORCH.value:
      rate = time_torch(name)
      if rate is not None:
        rows['torch loop'] = rate
        print(f'{name} torch loop: {rate:.0f} images/s', flush=True)
    one = rows['K=1']
    for k in sizes:
      if k > 1:
        # K separate one-member programs, one after another, process K * B
        # images in K times one member's time: their total rate is one
        # member's. Each variant's total rate against it:
        print(f'{name} K={k}, total images/s over K separate programs\': '
              + ', '.join(f'{v.strip() or "vmap"} '
                          f'{rows[f"K={k}{v}"] * k / one:.2f}'
                          for v in ('', ' shared', ' separate')), flush=True)
    results['models'][name] = {
        'images_per_s_per_member': rows,
        'per_member_ratio_to_one': {k: v / one for k, v in rows.items()},
    }
  results['environment'] = rundir.environment()
  print(json.dumps({n: r['per_member_ratio_to_one']
                    for n, r in results['models'].items()}, indent=1))
  if _OUT.value:
    rundir.write_json(_OUT.value, results)


if __name__ == '__main__':
  app.run(cli.main(main))
