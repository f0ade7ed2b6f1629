"""The sweep loop: epochs, metrics as they come, checkpoints, resume."""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Protocol, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxkink import rundir
from jaxkink.precision import Policy
from jaxkink.training import checkpoint
from jaxkink.training import core
from jaxkink.typing import PyTree

METRICS = 'metrics.json'


@dataclasses.dataclass(frozen=True)
class SweepConfig:
  """How to train every member of a grid.

  Attributes:
    dataset: the dataset's name (its normalisation constants).
    epochs: passes over the training set.
    batch_size: minibatch size (the last partial batch is dropped).
    optimizer: the optimizer.
    augment: CIFAR's random crop (padding 4) and horizontal flip.
    eval_batch_size: batch size of the test evaluation (no effect on the
      numbers beyond summation order).
    shared_batch: see :func:`core.make_train_step`.
    batching: ``'vmap'``, ``'unroll'`` or ``'separate'`` (one one-member
      program per member in turn; see :func:`core.make_train_epoch`).
  """
  dataset: str
  epochs: int
  batch_size: int
  optimizer: core.OptimizerConfig = core.OptimizerConfig()
  augment: bool = False
  eval_batch_size: int = 1000
  shared_batch: bool = False
  batching: str = 'vmap'

  def __post_init__(self):
    if self.batching not in core.BATCHINGS:
      raise ValueError(f'unknown batching {self.batching!r}; valid: '
                       f'{", ".join(core.BATCHINGS)}')
    if self.epochs < 1:
      raise ValueError(f'epochs must be >= 1, got {self.epochs}')
    if self.batch_size < 1 or self.eval_batch_size < 1:
      raise ValueError('batch sizes must be >= 1')


def shard_members(tree: PyTree, members: int) -> PyTree:
  """Spreads the member axis over the devices when there are several and
  they divide the members; otherwise returns ``tree`` unchanged."""
  n = jax.device_count()
  if n == 1 or members % n:
    return tree
  # Auto axes: jit propagates the member sharding through the vmapped step
  # (explicit axes would make vmap reject the mixed sharded / replicated
  # inputs).
  mesh = jax.make_mesh((n,), ('members',),
                       axis_types=(jax.sharding.AxisType.Auto,))
  spec = jax.sharding.NamedSharding(mesh, jax.P('members'))
  rep = jax.sharding.NamedSharding(mesh, jax.P())
  return jax.tree.map(
      lambda a: jax.device_put(a, spec if a.ndim and a.shape[0] == members
                               else rep), tree)


class EpochReporter(Protocol):
  """What :func:`run_sweep` tells as it goes; its calls change no number."""

  def start(self, epochs: int, resumed: Sequence[dict[str, Any]]) -> None:
    """Before the first epoch: the epochs of the sweep, and the records
    of those resumed from a checkpoint."""

  def epoch(self, record: dict[str, Any]) -> None:
    """After each epoch, with its record (one entry of the history)."""


def run_sweep(model: nn.Module, policy: Policy, grid: core.Grid,
              config: SweepConfig, train: tuple[np.ndarray, np.ndarray],
              test: tuple[np.ndarray, np.ndarray], *,
              out: str | rundir.RunDir | None = None,
              params: Sequence[tuple[PyTree, PyTree]] | None = None,
              stop_after: int | None = None,
              log: Callable[[str], None] = print,
              reporter: EpochReporter | None = None) -> dict[str, Any]:
  """Trains every member of ``grid`` for ``config.epochs`` epochs.

  After every epoch the metrics of every member are written to
  ``<out>/metrics.json`` (atomically) and the state and the metrics so far
  are checkpointed to ``<out>/checkpoints/`` (the newest two kept, each
  tagged with its epoch and the run's manifest digest); a call with the
  same arguments resumes from the newest good checkpoint (a damaged one is
  moved into ``corrupt/`` with a warning, and the previous one used) and
  gives the same numbers, bit for bit, as an uninterrupted run.

  Args:
    model: the flax module (built with the policy's dtypes).
    policy: the precision policy; call under ``policy.scope()``.
    grid: the members (:func:`core.make_grid`).
    config: epochs, batch size, optimizer, augmentation.
    train: ``(images, labels)``: uint8 NHWC images and int32 labels.
    test: the same for the test split.
    out: the run directory (None: no files, no resume): an open
      :class:`~jaxkink.rundir.RunDir`, or a path, opened with
      :func:`sweep_settings` as its settings (a directory holding a run of
      other settings is refused with :class:`~jaxkink.rundir.RefusedError`).
    params: optional initial ``(params, batch_stats)`` per seed.
    stop_after: stop after this epoch (simulates an interruption).
    log: where progress lines go.
    reporter: told the epochs and the history resumed from a checkpoint,
      then each epoch's record (a progress bar, a TensorBoard writer).

  Returns:
    ``{'history': [per-epoch metrics], 'state': final TrainState}``; each
    metric is a list over members (seed-major).
  """
  if isinstance(out, (str, os.PathLike)):
    settings = sweep_settings(model, policy, grid, config, train, test,
                              params)
    with rundir.RunDir.open(out, settings) as run_dir:
      return run_sweep(model, policy, grid, config, train, test,
                       out=run_dir, params=params, stop_after=stop_after,
                       log=log, reporter=reporter)
  images, labels = np.asarray(train[0]), np.asarray(train[1])
  steps = len(labels) // config.batch_size
  if steps == 0:
    raise ValueError(f'batch size {config.batch_size} exceeds the '
                     f'{len(labels)} training examples')
  # Only a schedule depends on the number of steps; leaving it out of the
  # cache key otherwise lets sweeps of different lengths share a program.
  total = (steps * config.epochs
           if config.optimizer.schedule != 'constant' else 0)
  tx, epoch_fn, eval_fn = programs(
      model, policy, config.optimizer, total,
      grid.num_seeds, grid.num_kinks, config.dataset, config.augment,
      config.shared_batch, config.batching)
  state = core.init_state(model, tx, grid, jnp.zeros(
      (1, *images.shape[1:]), policy.input_dtype), policy, params=params)
  state = shard_members(state, grid.members)
  test_batches = [jnp.asarray(a) for a in core.eval_batches(
      np.asarray(test[0]), np.asarray(test[1]), config.eval_batch_size)]
  dev_images, dev_labels = jnp.asarray(images), jnp.asarray(labels)
  aug_keys = core.augment_keys(grid)

  history: list[dict[str, Any]] = []
  start = 0
  if out is not None:
    restored = []

    def check(arrays):
      try:
        restored.append(checkpoint.from_arrays(arrays, state))
      except ValueError as e:
        return str(e)
      return None
    found = out.latest_checkpoint(check)
    if found is not None:
      start = found[0]
      state, meta = restored[-1]
      state = shard_members(state, grid.members)
      history = meta['history']
      log(f'resuming after epoch {start}')

  if reporter is not None:
    reporter.start(config.epochs, history)
  for epoch in range(start, config.epochs):
    t0 = time.perf_counter()
    order = core.epoch_order(grid, len(labels), config.batch_size, epoch)
    was_diverged = np.asarray(state.diverged)
    state, loss, correct = epoch_fn(state, grid.kinks, dev_images,
                                    dev_labels, jnp.asarray(order), aug_keys)
    test_loss, test_correct = eval_fn(state, grid.kinks, *test_batches)
    l1, l2 = core.weight_distances(state.params, grid.num_seeds)
    loss, correct = np.asarray(loss, np.float64), np.asarray(correct)
    seconds = time.perf_counter() - t0
    diverged = np.asarray(state.diverged)
    n_test = len(test[1])
    # A member that diverged during (or before) this epoch has no train loss.
    train_loss = np.where(diverged, np.nan, loss.mean(axis=0))
    record = {
        'epoch': epoch + 1,
        'train_loss': train_loss.tolist(),
        'train_acc': (correct.sum(0) / (steps * config.batch_size)).tolist(),
        'test_loss': (np.asarray(test_loss, np.float64) / n_test).tolist(),
        'test_acc': (np.asarray(test_correct) / n_test).tolist(),
        'l1_to_first_kink': np.asarray(l1, np.float64).tolist(),
        'l2_to_first_kink': np.asarray(l2, np.float64).tolist(),
        'diverged': diverged.tolist(),
        'diverged_step': np.asarray(state.diverged_step).tolist(),
        'seconds': seconds,
        'images_per_s': steps * config.batch_size * grid.members / seconds,
    }
    history.append(record)
    newly = np.flatnonzero(diverged & ~was_diverged)
    log(_progress(record, grid, config.epochs, newly)
        + (' (this epoch includes compilation)' if epoch == start else ''))
    if reporter is not None:
      reporter.epoch(record)
    if out is not None:
      out.write_json(METRICS, {'members': member_table(grid),
                               'history': history})
      # (Any: the arrays are keyword arguments beside save_checkpoint's keep.)
      arrays: dict[str, Any] = checkpoint.to_arrays(state, history=history)
      out.save_checkpoint(epoch + 1, **arrays)
    if stop_after is not None and epoch + 1 >= stop_after:
      break
  return {'history': history, 'state': state}


def sweep_settings(model: nn.Module, policy: Policy, grid: core.Grid,
                   config: SweepConfig, train: tuple[np.ndarray, np.ndarray],
                   test: tuple[np.ndarray, np.ndarray],
                   params: Sequence[tuple[PyTree, PyTree]] | None = None
                   ) -> dict[str, Any]:
  """Everything of a sweep that can change its numbers: the run
  directory's settings when :func:`run_sweep` is given a path."""
  kinks = {k: np.asarray(v).tolist()
           for k, v in dataclasses.asdict(grid.kinks).items()}
  return {'model': repr(model), 'policy': policy.to_dict(),
          'grid': {'seeds': list(grid.seeds), 'labels': list(grid.labels),
                   'values': list(grid.values), 'kinks': kinks},
          'config': dataclasses.asdict(config),
          'data': rundir.array_digest(*train, *test),
          'params': (None if params is None else
                     rundir.array_digest(*jax.tree.leaves(params)))}


@functools.lru_cache(maxsize=16)
def programs(model: nn.Module, policy: Policy,
             optimizer: core.OptimizerConfig, total_steps: int,
             num_seeds: int, num_kinks: int, dataset: str, augment: bool,
             shared_batch: bool = False, batching: str = 'vmap'):
  """``(tx, epoch_fn, eval_fn)`` for a grid shape, cached: the kink values
  and seeds are data, so sweeps of the same shape share one compilation."""
  shape_grid = core.shape_grid(num_seeds, num_kinks)
  tx = core.make_optimizer(optimizer, total_steps)
  epoch_fn = core.make_train_epoch(model, tx, policy, shape_grid,
                                   dataset=dataset, augment=augment,
                                   shared_batch=shared_batch,
                                   batching=batching)
  eval_fn = core.make_eval(model, policy, shape_grid, dataset=dataset,
                           batching=batching)
  return tx, epoch_fn, eval_fn


def member_table(grid: core.Grid) -> list[dict[str, Any]]:
  """Per member: its seed, kink configuration and label."""
  rows = []
  for m in range(grid.members):
    si, ki = grid.member(m)
    rows.append({'member': m, 'seed': grid.seeds[si], 'kink_index': ki,
                 'label': grid.labels[ki], **grid.values[ki]})
  return rows


def _progress(record: dict[str, Any], grid: core.Grid, epochs: int,
              newly: np.ndarray) -> str:
  acc = np.asarray(record['test_acc']).reshape(grid.num_seeds, -1)
  parts = [f'{label}: {100 * acc[:, k].mean():.2f}%'
           for k, label in enumerate(grid.labels)]
  line = (f'epoch {record["epoch"]}/{epochs}: {record["seconds"]:.1f} s, '
          f'{record["images_per_s"]:.0f} images/s ('
          f'{record["images_per_s"] / grid.members:.0f} per member); test '
          f'acc (mean over seeds) ' + ', '.join(parts))
  if newly.size:
    line += f'; diverged this epoch: members {newly.tolist()}'
  return line
