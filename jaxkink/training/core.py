"""A (seed x kink) grid of trainings as one jitted, vmapped program.

Every member of the grid is one training run: its own parameters, optimizer
state, batch norm statistics, dropout key and divergence flag, all stacked on
a leading member axis ``m = seed_index * num_kinks + kink_index``. The step
is written once for one member and ``jax.vmap``-ped over the members; each
seed has its own minibatch order and augmentation, and every member gets its
seed's minibatch. Members of the same seed start from the same weights, see
the same minibatches, augmentations and dropout masks, so only the kink value
tells them apart.

A member whose loss (or whose updated parameters) is NaN or infinite is
marked diverged at that step; from then on every leaf of its state keeps its
last finite value (``jnp.where`` on each leaf), while the others go on.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any, Callable, Sequence

import flax.linen as nn
from flax import struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxkink import data as data_lib
from jaxkink import lockstep
from jaxkink.kinks import Kinks
from jaxkink.models.registry import is_convolutional
from jaxkink.precision import Policy
from jaxkink.typing import AnyArray, Array, PyTree

OPTIMIZERS = ('sgd', 'adam')
SCHEDULES = ('constant', 'cosine')
BATCHINGS = ('vmap', 'unroll', 'separate')


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The optimizer, as the reference PyTorch code configures it.

  Attributes:
    name: ``'sgd'`` (``torch.optim.SGD``) or ``'adam'`` (``torch.optim.Adam``).
    lr: the (peak) learning rate.
    momentum: SGD momentum (PyTorch's: ``b = momentum * b + g``; 0: none).
    nesterov: Nesterov momentum (SGD only).
    weight_decay: L2 coefficient added to the gradient before the optimizer,
      as PyTorch's ``weight_decay`` argument does (not AdamW's decoupled
      decay).
    schedule: ``'constant'`` (the reference code's; its cosine annealing is
      commented out) or ``'cosine'`` (``CosineAnnealingLR`` stepped every
      minibatch, to 0 at the last step).
    b1: Adam's beta1.
    b2: Adam's beta2.
    eps: Adam's epsilon (PyTorch's default 1e-8).
  """
  name: str = 'sgd'
  lr: float = 0.01
  momentum: float = 0.0
  nesterov: bool = False
  weight_decay: float = 0.0
  schedule: str = 'constant'
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(f'unknown optimizer {self.name!r}; valid: '
                       f'{", ".join(OPTIMIZERS)}')
    if self.schedule not in SCHEDULES:
      raise ValueError(f'unknown schedule {self.schedule!r}; valid: '
                       f'{", ".join(SCHEDULES)}')
    if not self.lr > 0:
      raise ValueError(f'lr must be positive, got {self.lr}')
    if self.momentum < 0 or self.weight_decay < 0:
      raise ValueError('momentum and weight_decay must be >= 0')


def make_optimizer(config: OptimizerConfig,
                   total_steps: int) -> optax.GradientTransformation:
  """The optax transformation for ``config`` over ``total_steps`` updates."""
  lr: Any = config.lr
  if config.schedule == 'cosine':
    lr = optax.cosine_decay_schedule(config.lr, max(total_steps, 1))
  parts = []
  if config.weight_decay:
    parts.append(optax.add_decayed_weights(config.weight_decay))
  if config.name == 'sgd':
    parts.append(optax.sgd(lr, momentum=config.momentum or None,
                           nesterov=config.nesterov))
  else:
    parts.append(optax.adam(lr, b1=config.b1, b2=config.b2, eps=config.eps))
  return optax.chain(*parts) if len(parts) > 1 else parts[0]


@dataclasses.dataclass(frozen=True)
class Grid:
  """The members of a sweep: every seed times every kink configuration.

  Attributes:
    seeds: the seeds (initial weights, minibatch order, augmentation,
      dropout).
    kinks: a :class:`Kinks` whose leaves have a leading axis of
      ``num_kinks``, one configuration per entry.
    labels: a short name per kink configuration (``'s=0.5 beta=0'``).
    values: per kink configuration, its values as a dict (for records).
  """
  seeds: tuple[int, ...]
  kinks: Kinks
  labels: tuple[str, ...]
  values: tuple[dict[str, float], ...]

  @property
  def num_seeds(self) -> int:
    return len(self.seeds)

  @property
  def num_kinks(self) -> int:
    return len(self.labels)

  @property
  def members(self) -> int:
    return self.num_seeds * self.num_kinks

  def member(self, m: int) -> tuple[int, int]:
    """``(seed index, kink index)`` of member ``m``."""
    return divmod(m, self.num_kinks)


def make_grid(seeds: Sequence[int], kink_values: Sequence[float] = (0.0,),
              pool_betas: Sequence[float] = (0.0,), *,
              activation: str = 'relu', legacy_relu_grad: bool = False,
              blended_pool_forward: bool = False,
              dtype: Any = jnp.float32) -> Grid:
  """A grid of ``seeds`` x (``kink_values`` x ``pool_betas``).

  Args:
    seeds: distinct ints.
    kink_values: values of the activation's kink (ReLU'(0), both ReLU6
      kinks, or LeakyReLU'(0): see :func:`jaxkink.lockstep.kinks_for`).
    pool_betas: MaxPool tie rules (0 native, 1 minimal, hybrid otherwise).
    activation: the models' activation, ``'relu'``, ``'relu6'`` or
      ``'leaky_relu'``.
    legacy_relu_grad: the 2021 reference code's assignment at the kink.
    blended_pool_forward: the TMLR reference code's pooled forward.
    dtype: the kink values' dtype (the policy's compute dtype).

  Raises:
    ValueError: for an empty or repeated list.
  """
  seeds = tuple(int(s) for s in seeds)
  kink_values = tuple(float(v) for v in kink_values)
  pool_betas = tuple(float(b) for b in pool_betas)
  for what, items in (('seeds', seeds), ('kink_values', kink_values),
                      ('pool_betas', pool_betas)):
    if not items:
      raise ValueError(f'{what} is empty; give at least one value')
    if len(set(items)) != len(items):
      raise ValueError(f'{what} has repeated values: {items}')
  combos = list(itertools.product(kink_values, pool_betas))
  kinks = lockstep.kinks_for(activation, jnp.asarray([c[0] for c in combos],
                                                     dtype))
  kinks = kinks.replace(
      pool_beta=jnp.asarray([c[1] for c in combos], dtype),
      legacy_relu_grad=legacy_relu_grad,
      blended_pool_forward=blended_pool_forward)
  labels, values = [], []
  for s, b in combos:
    parts = []
    if len(kink_values) > 1 or len(pool_betas) == 1:
      parts.append(f's={s:g}')
    if len(pool_betas) > 1:
      parts.append(f'beta={b:g}')
    labels.append(' '.join(parts))
    values.append({'kink_value': s, 'pool_beta': b})
  return Grid(seeds, kinks, tuple(labels), tuple(values))


@struct.dataclass
class TrainState:
  """Every member's training state; each leaf has a leading member axis.

  Attributes:
    params: the parameters.
    opt_state: the optax state.
    batch_stats: batch norm running statistics (``{}`` without batch norm).
    dropout_key: raw PRNG key data (``jax.random.key_data``), from which the
      step's dropout key is ``fold_in(key, step)``.
    diverged: True once the member's loss or parameters became NaN / inf.
    diverged_step: the global step at which it did (-1: never).
    step: the global step (a scalar, shared by every member).
  """
  params: PyTree
  opt_state: PyTree
  batch_stats: PyTree
  dropout_key: Array
  diverged: Array
  diverged_step: Array
  step: Array


# Streams derived from one seed (fold_in constants).
_INIT, _DROPOUT, _AUGMENT = 0, 1, 2


def init_params(model: nn.Module, seed: int, sample: AnyArray,
                policy: Policy) -> tuple[PyTree, PyTree]:
  """``(params, batch_stats)`` of ``model`` for one seed."""
  variables = model.init(
      jax.random.fold_in(jax.random.key(seed), _INIT), sample, Kinks())
  params = policy.cast_params(variables['params'])
  return params, variables.get('batch_stats', {})


def init_state(model: nn.Module, tx: optax.GradientTransformation,
               grid: Grid, sample: AnyArray, policy: Policy, *,
               params: Sequence[tuple[PyTree, PyTree]] | None = None
               ) -> TrainState:
  """The grid's initial state.

  Args:
    model: the flax module.
    tx: the optimizer.
    grid: the members.
    sample: one input batch (its shape and dtype matter, not its values).
    policy: the precision policy (parameter dtype).
    params: optional ``(params, batch_stats)`` per seed, instead of drawing
      them with :func:`init_params`.
  """
  if params is None:
    params = [init_params(model, s, sample, policy) for s in grid.seeds]
  if len(params) != grid.num_seeds:
    raise ValueError(f'{len(params)} parameter sets for {grid.num_seeds} '
                     'seeds')
  k = grid.num_kinks

  def per_member(trees):
    # Seed-major: member m = seed_index * k + kink_index.
    return jax.tree.map(
        lambda *a: jnp.repeat(jnp.stack(a), k, axis=0), *trees)

  stacked_params = per_member([p for p, _ in params])
  stacked_stats = per_member([b for _, b in params])
  opt_state = jax.vmap(tx.init)(stacked_params)
  keys = jnp.stack([jax.random.key_data(jax.random.fold_in(
      jax.random.key(s), _DROPOUT)) for s in grid.seeds])
  m = grid.members
  return TrainState(
      params=stacked_params, opt_state=opt_state, batch_stats=stacked_stats,
      dropout_key=jnp.repeat(keys, k, axis=0),
      diverged=jnp.zeros((m,), bool),
      diverged_step=jnp.full((m,), -1, jnp.int32),
      step=jnp.zeros((), jnp.int32))


def _all_finite(tree: PyTree) -> Array:
  leaves = [jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(tree)
            if jnp.issubdtype(a.dtype, jnp.inexact)]
  return jnp.stack(leaves).all() if leaves else jnp.array(True)


def _by_seed(tree: PyTree, seeds: int) -> PyTree:
  return jax.tree.map(lambda a: a.reshape(seeds, -1, *a.shape[1:]), tree)


def _flat(tree: PyTree) -> PyTree:
  return jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), tree)


def make_member_step(model: nn.Module, tx: optax.GradientTransformation,
                     policy: Policy) -> Callable:
  """One member's SGD/Adam step (not jitted, not vmapped).

  ``member_step(fields, kinks, x, y, step) -> (fields, loss, correct)`` where
  ``fields = (params, opt_state, batch_stats, dropout_key, diverged,
  diverged_step)`` of one member, ``x`` a preprocessed minibatch in the
  policy's input dtype, ``y`` its labels. The loss is the mean
  cross-entropy in the policy's loss dtype (PyTorch's
  ``CrossEntropyLoss()``).
  """

  def member_step(fields, kinks, x, y, step):
    params, opt_state, batch_stats, dkey, diverged, diverged_step = fields
    rng = jax.random.fold_in(jax.random.wrap_key_data(dkey), step)

    def loss_fn(p):
      variables = {'params': p}
      if batch_stats:
        variables['batch_stats'] = batch_stats
      logits, updates = model.apply(variables, x, kinks, train=True,
                                    mutable=['batch_stats'],
                                    rngs={'dropout': rng})
      logits = policy.cast_loss(logits)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, (logits, updates.get('batch_stats', {}))

    (loss, (logits, new_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    ok = jnp.isfinite(loss) & _all_finite(new_params)
    keep = diverged | ~ok
    old = (params, opt_state, batch_stats)
    new = (new_params, new_opt, new_stats)
    params, opt_state, batch_stats = jax.tree.map(
        lambda o, n: jnp.where(keep, o, n), old, new)
    diverged_step = jnp.where(diverged | ok, diverged_step,
                              step.astype(jnp.int32))
    correct = jnp.sum(jnp.argmax(logits, -1) == y, dtype=jnp.int32)
    return ((params, opt_state, batch_stats, dkey, keep, diverged_step),
            loss, correct)

  return member_step


def make_batch_fn(dataset: str, policy: Policy, *,
                  augment: bool = False) -> Callable:
  """``prepare(images_u8, step, aug_key) -> x``: augmentation, then
  :func:`jaxkink.data.preprocess` (bit-identical to ToTensor/Normalize)."""

  def prepare(images, step, aug_key):
    if augment:
      key = jax.random.fold_in(jax.random.wrap_key_data(aug_key), step)
      images = data_lib.random_crop_flip(key, images)
    return data_lib.preprocess(images, dataset, dtype=policy.input_dtype)

  return prepare


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    policy: Policy, grid: Grid, *, dataset: str,
                    augment: bool = False, shared_batch: bool = False,
                    batching: str = 'vmap') -> Callable:
  """The grid's step on given minibatches (not jitted).

  ``step(state, kinks, images, labels, aug_keys) -> (state, loss,
  correct)``: ``images`` ``(seeds, B, H, W, C)`` uint8 and ``labels``
  ``(seeds, B)`` hold one minibatch per seed, ``aug_keys`` ``(seeds, 2)``
  raw keys, ``kinks`` the grid's ``(num_kinks,)`` configurations; ``loss``
  and ``correct`` are per member ``(members,)``.

  Args:
    shared_batch: False (default) gives every member its own copy of its
      seed's minibatch (one ``vmap`` over members, every input batched).
      Each member then computes the operations a separately jitted
      single-member training computes, on inputs of one member's shapes;
      whether XLA picks the same kernels for the batched program is not
      guaranteed (measured bit for bit for dense layers on the CPUs of
      issue 8, not on every CPU). True vmaps over kinks with the minibatch unbatched (nested in
      a vmap over seeds): XLA may then merge the members' first-layer
      products into one larger product, which rounds differently from a
      single member's program (all members of the grid still share one
      program, so comparisons between kink values stay exact).
    batching: ``'vmap'`` (default) or ``'unroll'``: one copy of the
      member's computation per member inside the jitted program, with
      unbatched products and convolutions. XLA batches a vmapped
      convolution as a grouped convolution, whose weight gradient sums in
      another order than a single network's; unrolled, each member runs a
      single network's operations (not checked bit for bit for
      convolutions). Compile time grows with the members.
  """
  if batching not in BATCHINGS:
    raise ValueError(f'unknown batching {batching!r}; valid: '
                     f'{", ".join(BATCHINGS)}')
  if batching == 'separate' and grid.members > 1:
    raise ValueError("batching='separate' runs one-member steps: see "
                     'make_train_epoch')
  member_step = make_member_step(model, tx, policy)
  prepare = make_batch_fn(dataset, policy, augment=augment)
  s, k = grid.num_seeds, grid.num_kinks
  seed_index = np.repeat(np.arange(s), k)

  def step(state: TrainState, kinks: Kinks, images, labels, aug_keys):
    x = jax.vmap(prepare, in_axes=(0, None, 0))(images, state.step, aug_keys)
    fields = (state.params, state.opt_state, state.batch_stats,
              state.dropout_key, state.diverged, state.diverged_step)
    if shared_batch:
      per_kink = jax.vmap(member_step, in_axes=(0, 0, None, None, None))
      per_seed = jax.vmap(per_kink, in_axes=(0, None, 0, 0, None))
      fields, loss, correct = per_seed(_by_seed(fields, s), kinks, x, labels,
                                       state.step)
      fields = _flat(fields)
    elif batching == 'unroll' or grid.members == 1:
      # No vmap: one copy of the member's computation per member in the
      # same program. A one-member grid always takes this path: XLA
      # compiles a batch axis of size 1 into other products than the
      # unbatched program (measured: the first layer's gradient rounds
      # differently), and a one-member grid must be the plain training.
      take = lambda tree, i: jax.tree.map(lambda a: a[i], tree)
      outs = [member_step(take(fields, m), take(kinks, m % k),
                          x[seed_index[m]], labels[seed_index[m]],
                          state.step) for m in range(grid.members)]
      fields, loss, correct = jax.tree.map(lambda *a: jnp.stack(a), *outs)
    else:
      member_kinks = jax.tree.map(lambda a: jnp.tile(a, s), kinks)
      fields, loss, correct = jax.vmap(
          member_step, in_axes=(0, 0, 0, 0, None))(
              fields, member_kinks, x[seed_index], labels[seed_index],
              state.step)
    params, opt_state, batch_stats, dkey, diverged, diverged_step = fields
    state = TrainState(params, opt_state, batch_stats, dkey, diverged,
                       diverged_step, state.step + 1)
    return state, loss.reshape(-1), correct.reshape(-1)

  return step


def make_train_epoch(model: nn.Module, tx: optax.GradientTransformation,
                     policy: Policy, grid: Grid, *, dataset: str,
                     augment: bool = False, shared_batch: bool = False,
                     batching: str = 'vmap') -> Callable:
  """An epoch: the grid's jitted step over the epoch's minibatches.

  ``epoch(state, kinks, images, labels, order, aug_keys) -> (state, loss,
  correct)``: ``images`` ``(N, H, W, C)`` uint8 and ``labels`` ``(N,)`` are
  the whole training set on the device, ``order`` ``(seeds, steps, B)`` the
  example indices of each seed's minibatches (:func:`epoch_order`);
  ``loss`` and ``correct`` are ``(steps, members)``. Each step gathers its
  minibatches on the device inside the jitted step; dispatch is
  asynchronous, so the host only waits at the end of the epoch.
  ``shared_batch``, ``batching``: see :func:`make_train_step`;
  ``batching='separate'`` runs instead a one-member epoch (one program,
  compiled once) for each member in turn: every member then computes
  exactly what a one-member grid computes, and no product or convolution
  is batched over members (on CPUs, where XLA's batched convolutions are
  grouped convolutions, the fastest choice: ``BUILD_NOTES.md``, issue 15).

  A Python loop rather than ``lax.scan``: measured on the CPU (jax 0.10.2),
  a scanned epoch of a small VGG ran 7 to 14 times slower than the same
  step called in a loop (the MLP: 10% slower), as XLA's CPU backend
  compiles convolutions inside a while loop less well.
  """
  if batching == 'separate' and grid.members > 1:
    if shared_batch:
      raise ValueError("shared_batch is an option of batching='vmap'")
    return _separate(make_train_epoch(model, tx, policy, _ONE_MEMBER,
                                      dataset=dataset, augment=augment),
                     grid)
  step = make_train_step(model, tx, policy, grid, dataset=dataset,
                         augment=augment, shared_batch=shared_batch,
                         batching=batching)

  @jax.jit
  def gather_step(state, kinks, images, labels, index, aug_keys):
    return step(state, kinks, images[index], labels[index], aug_keys)

  def epoch(state, kinks, images, labels, order, aug_keys):
    order = jnp.asarray(order)
    losses, corrects = [], []
    for k in range(order.shape[1]):
      state, loss, correct = gather_step(state, kinks, images, labels,
                                         order[:, k], aug_keys)
      losses.append(loss)
      corrects.append(correct)
    return state, jnp.stack(losses), jnp.stack(corrects)

  return epoch


def epoch_order(grid: Grid, num_examples: int, batch_size: int,
                epoch: int) -> np.ndarray:
  """``(seeds, steps, batch_size)`` example indices of one epoch.

  Each seed's order is :func:`jaxkink.data.epoch_order` with that seed (a
  fresh permutation each epoch); the last partial batch is dropped.

  Raises:
    ValueError: if ``batch_size`` exceeds ``num_examples``.
  """
  steps = num_examples // batch_size
  if steps == 0:
    raise ValueError(f'batch size {batch_size} exceeds the {num_examples} '
                     'training examples')
  return np.stack([
      data_lib.epoch_order(num_examples, seed, epoch)[:steps * batch_size]
      .reshape(steps, batch_size) for seed in grid.seeds])


def augment_keys(grid: Grid) -> Array:
  """``(seeds, 2)`` raw keys of each seed's augmentation stream."""
  return jnp.stack([jax.random.key_data(jax.random.fold_in(
      jax.random.key(s), _AUGMENT)) for s in grid.seeds])


def auto_batching(model: nn.Module, sample: AnyArray,
                  backend: str | None = None) -> str:
  """The member batching that measured fastest for ``model`` on ``backend``
  (default: JAX's): ``'vmap'`` on accelerators and for models without
  convolutions, ``'separate'`` for convolutional models on CPUs, where XLA
  turns a vmapped convolution into a grouped one (BUILD_NOTES.md, issue 15
  point 4: on 2 cores, 4 members of a small VGG at 0.25x of one member's
  images/s vmapped and 0.91x separately; an MLP at 1.10x vmapped and 0.97x
  separately). ``sample``: an input batch (only its shape is read)."""
  backend = backend or jax.default_backend()
  if backend != 'cpu':
    return 'vmap'
  return 'separate' if is_convolutional(model, sample) else 'vmap'


def shape_grid(num_seeds: int, num_kinks: int) -> Grid:
  """A grid of that shape and nothing else, for building its programs
  (they depend on the grid only through its shape: the kink values and
  seeds are their arguments). Its ``kinks`` are None, which fails if used."""
  no_kinks: Any = None
  return Grid(tuple(range(num_seeds)), no_kinks, ('',) * num_kinks,
              ({},) * num_kinks)


_ONE_MEMBER = shape_grid(1, 1)


def _member_state(state: TrainState, m: int) -> TrainState:
  """Member ``m`` of ``state`` as a one-member state."""
  take = lambda tree: jax.tree.map(lambda a: a[m:m + 1], tree)
  return TrainState(take(state.params), take(state.opt_state),
                    take(state.batch_stats), take(state.dropout_key),
                    take(state.diverged), take(state.diverged_step),
                    state.step)


def _separate(one: Callable, grid: Grid) -> Callable:
  """``batching='separate'``: the grid's epoch as one one-member program
  (``one``, compiled once) called for each member in turn, each on its own
  seed's minibatches and augmentation stream, so every member computes
  exactly what a one-member grid computes."""
  k = grid.num_kinks

  def epoch(state, kinks, images, labels, order, aug_keys):
    states, losses, corrects = [], [], []
    for m in range(grid.members):
      si, ki = divmod(m, k)
      st, loss, correct = one(
          _member_state(state, m),
          jax.tree.map(lambda a: a[ki:ki + 1], kinks), images, labels,
          order[si:si + 1], aug_keys[si:si + 1])
      states.append(st)
      losses.append(loss)
      corrects.append(correct)
    cat = lambda *a: jnp.concatenate(a)
    merged = jax.tree.map(cat, *[dataclasses.replace(st, step=None)
                                 for st in states])
    return (dataclasses.replace(merged, step=states[-1].step),
            jnp.concatenate(losses, axis=1), jnp.concatenate(corrects, axis=1))

  return epoch


def make_eval(model: nn.Module, policy: Policy, grid: Grid, *,
              dataset: str, batching: str = 'vmap') -> Callable:
  """A jitted evaluation: ``evaluate(state, kinks, images, labels, mask)``.

  ``images`` ``(batches, B, H, W, C)`` uint8, ``labels`` and ``mask``
  ``(batches, B)`` (see :func:`eval_batches`); batch norm uses its running
  statistics, dropout is off. Returns per member the summed cross-entropy
  and the number of correct predictions over the unmasked examples.
  ``batching='unroll'`` evaluates the kink members of a seed one after the
  other (unbatched convolutions; see :func:`make_train_step`).
  """
  if batching == 'separate' and grid.members > 1:
    one = make_eval(model, policy, _ONE_MEMBER, dataset=dataset)
    k = grid.num_kinks

    def separately(state, kinks, images, labels, mask):
      outs = [one(_member_state(state, m),
                  jax.tree.map(lambda a: a[m % k:m % k + 1], kinks),
                  images, labels, mask) for m in range(grid.members)]
      return tuple(jnp.concatenate(a) for a in zip(*outs))

    return separately
  s = grid.num_seeds

  def member_eval(params, batch_stats, kinks, x, y, mask):
    variables = {'params': params}
    if batch_stats:
      variables['batch_stats'] = batch_stats
    logits = policy.cast_loss(model.apply(variables, x, kinks, train=False))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    loss = jnp.sum(jnp.where(mask, loss, 0))
    correct = jnp.sum((jnp.argmax(logits, -1) == y) & mask, dtype=jnp.int32)
    return loss, correct

  def unrolled(params, stats, kinks, x, y, mask):
    take = lambda tree, i: jax.tree.map(lambda a: a[i], tree)
    outs = [member_eval(take(params, i), take(stats, i), take(kinks, i), x, y,
                        mask) for i in range(grid.num_kinks)]
    return jax.tree.map(lambda *a: jnp.stack(a), *outs)

  per_kink = (unrolled if batching == 'unroll' else
              jax.vmap(member_eval, in_axes=(0, 0, 0, None, None, None)))
  per_seed = jax.vmap(per_kink, in_axes=(0, 0, None, None, None, None))

  @jax.jit
  def evaluate(state, kinks, images, labels, mask):
    params = _by_seed(state.params, s)
    stats = _by_seed(state.batch_stats, s)

    def body(acc, batch):
      im, y, mk = batch
      x = data_lib.preprocess(im, dataset, dtype=policy.input_dtype)
      loss, correct = per_seed(params, stats, kinks, x, y, mk)
      return (acc[0] + loss.reshape(-1).astype(acc[0].dtype),
              acc[1] + correct.reshape(-1)), None

    acc = jnp.promote_types(policy.loss_dtype, jnp.float32)
    init = (jnp.zeros((grid.members,), acc),
            jnp.zeros((grid.members,), jnp.int32))
    (loss, correct), _ = jax.lax.scan(body, init, (images, labels, mask))
    return loss, correct

  return evaluate


def eval_batches(images: np.ndarray, labels: np.ndarray,
                 batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The whole split in fixed-size batches, the last one padded and masked:
  ``(batches, B, ...)`` images, labels and mask."""
  n = len(labels)
  nb = -(-n // batch_size)
  pad = nb * batch_size - n
  im = np.concatenate([images, np.zeros((pad, *images.shape[1:]),
                                        images.dtype)])
  lb = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
  mask = np.arange(nb * batch_size) < n
  return (im.reshape(nb, batch_size, *images.shape[1:]),
          lb.reshape(nb, batch_size), mask.reshape(nb, batch_size))


@functools.partial(jax.jit, static_argnames='num_seeds')
def weight_distances(params: PyTree, num_seeds: int = 1) -> tuple[Array, Array]:
  """Per member, ``(L1, L2)`` distance of its parameters to those of the
  first kink configuration of its seed (TMLR Fig. 6's
  ``||theta_beta - theta_0||``), accumulated in float32 (float64 if
  enabled)."""
  acc = jnp.float64 if jax.config.read('jax_enable_x64') else jnp.float32

  def dist(p, q):
    leaves = jax.tree.leaves(jax.tree.map(
        lambda u, v: (jnp.sum(jnp.abs(u.astype(acc) - v.astype(acc))),
                      jnp.sum(jnp.square(u.astype(acc) - v.astype(acc)))),
        p, q))
    l1 = sum(leaves[0::2], jnp.zeros((), acc))
    l2 = jnp.sqrt(sum(leaves[1::2], jnp.zeros((), acc)))
    return l1, l2

  by_seed = jax.tree.map(
      lambda a: a.reshape(num_seeds, -1, *a.shape[1:]), params)

  def per_seed(p):
    first = jax.tree.map(lambda a: a[0], p)
    return jax.vmap(lambda q: dist(q, first))(p)

  l1, l2 = jax.vmap(per_seed)(by_seed)
  return l1.reshape(-1), l2.reshape(-1)
