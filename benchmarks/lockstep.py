r"""Throughput of the lockstep step: 3 vmapped copies vs 3 separate runs.

The bifurcation experiment trains three copies of an MLP (s0, s1, control)
on the same minibatches. ``jaxkink.lockstep`` runs them as one vmapped,
jitted step; the baseline is what one would write otherwise, three
independent single-copy steps (the same step function with one member)
called one after the other each iteration. Both include the per-step
records. Ratios are measured in the same run.

Run::

  python benchmarks/lockstep.py --widths=2000,128,10 --iterations=100
"""

from __future__ import annotations

import time
from typing import Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import jaxkink
from jaxkink import cli
from jaxkink import lockstep
from jaxkink import models
from jaxkink import rundir

_WIDTHS = flags.DEFINE_list('widths', ['2000', '128', '10'], 'MLP widths.')
_BATCH = flags.DEFINE_integer('batch_size', 128, 'Minibatch size.')
_ITERATIONS = flags.DEFINE_integer('iterations', 100, 'Timed iterations.')
_PRECISION = flags.DEFINE_string('precision', 'float32', 'Precision policy: '
                                 + ', '.join(jaxkink.POLICIES) + '.')
_OUT = flags.DEFINE_string('out', None, 'Optional JSON path for the results.')
cli.check('widths', lambda v: cli.positive_ints(v, '--widths'),
          '--widths must be positive integers')
cli.check_positive(['batch_size', 'iterations'])
cli.check_policies('precision')
cli.check_output_file('out')


def _time(fn, iterations: int) -> float:
  state = fn(None)  # compile and warm up
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(iterations):
    state = fn(state)
  jax.block_until_ready(state)
  return iterations / (time.perf_counter() - start)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  policy, = jaxkink.policies_for_program([_PRECISION.value])
  widths = cli.positive_ints(_WIDTHS.value, '--widths')
  model = models.MLP(widths=widths, dtype=policy.compute_dtype,
                     param_dtype=policy.param_dtype,
                     precision=policy.jax_precision)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(_BATCH.value, 784)), policy.input_dtype)
  y = jnp.asarray(rng.integers(0, widths[-1], size=_BATCH.value))
  params = model.init(jax.random.key(0), x[:1], jaxkink.Kinks())['params']
  step = lockstep.make_step(model, policy)
  unrolled = lockstep.make_step(model, policy, batching='unroll')
  values = [0.0, 1.0, 0.0]
  three = lockstep.replicate(params, 3)
  kinks3 = lockstep.kinks_for('relu', values)
  singles = [lockstep.kinks_for('relu', [v]) for v in values]

  def vmapped(state):
    return step(three if state is None else state, kinks3, x, y, 0.01)[0]

  def unroll(state):
    return unrolled(three if state is None else state, kinks3, x, y, 0.01)[0]

  def separate(state):
    state = state or [lockstep.replicate(params, 1)] * 3
    return [step(p, k, x, y, 0.01)[0] for p, k in zip(state, singles)]

  with policy.scope():
    rate_v = _time(vmapped, _ITERATIONS.value)
    rate_u = _time(unroll, _ITERATIONS.value)
    rate_s = _time(separate, _ITERATIONS.value)
  env = rundir.environment()
  print(f'device: {env["device_kind"]} ({env["backend"]}), jax '
        f'{env["versions"]["jax"]}; MLP 784-{"-".join(map(str, widths))}, '
        f'batch {_BATCH.value}, {policy.name}, {_ITERATIONS.value} iterations')
  print(f'| 3 copies vmapped, one step | {rate_v:.2f} it/s |')
  print(f'| 3 copies unrolled in one step | {rate_u:.2f} it/s |')
  print(f'| 3 separate single-copy steps | {rate_s:.2f} it/s |')
  print(f'| ratio vmapped / separate | {rate_v / rate_s:.2f} |')
  print(f'| ratio unrolled / separate | {rate_u / rate_s:.2f} |')
  if _OUT.value:
    rundir.write_json(_OUT.value, {'vmapped_it_per_s': rate_v,
                                   'unrolled_it_per_s': rate_u,
                                   'separate_it_per_s': rate_s,
                                   'widths': widths, 'batch': _BATCH.value,
                                   'policy': policy.to_dict(),
                                   'environment': env})


if __name__ == '__main__':
  app.run(cli.main(main))
