"""Monte Carlo estimation of the volume of the bifurcation zone.

For M weight samples theta and every minibatch B of a data set, the engine
compares the full parameter gradient of the minibatch loss under two kink
settings (ReLU'(0) = 0 against 1, native against minimal MaxPool, ...) and
records, per (theta, B): whether some element differs exactly (in the full
gradient and in the first layer's kernel gradient), the relative L2
difference (of both) and the L1 difference, and per kinked operation the
number of kink hits and the smallest distance to a kink (DESIGN.md section 4;
Bertoin et al., NeurIPS 2021, Section 3 and Appendix C; Boustany, TMLR,
Section 3.2).

How it is computed, per chunk of thetas (one jitted program, ``vmap`` over
the thetas, ``lax.scan`` over the minibatches):

* the weights are drawn on the device from ``fold_in(key, index)``, so theta
  number ``m`` is the same whatever the chunking, device count or precision
  policy (PyTorch-style draws are made in float32 and rounded). The draws
  use threefry with ``jax_threefry_partitionable=False``: the same bits on
  every backend, and a third of the compile time on CPUs (BUILD_NOTES.md);
* **one** forward pass per (theta, B) (``jax.vjp``) saves the residuals of
  both kink settings: vmapped over the two kink values, the forward values,
  which never depend on the kink value, are computed once, and only the
  kink masks and the backward passes are batched over the pair;
* the kink counters read the pre-activations of that same forward
  (:class:`~jaxkink.hits.TapedKinks`, behind an optimisation barrier);
* **screening**: the two pullbacks run inside ``lax.cond`` on the chunk's
  "some kink was hit" flag (a scalar, so the branch is really skipped; with
  ``theta_loop='map'``, the theta's flag, and below 32 bits no branch, see
  :func:`make_chunk_fn`). With
  no hit, both backward passes execute the same operations on the same
  values, so the gradients are bit-identical and need not be computed. Pairs
  in a flagged chunk are all computed; a record says which were
  (``computed``), and an unflagged pair that was computed and differed would
  be counted in ``Summary.screen_violations`` (zero means the claim held).

On CPUs, convolutional networks run ``theta_loop='programs'`` instead: the
host loops over the (theta, minibatch) pairs and calls three small programs
(draw, forward, backward) that hold no loop and no conditional, because
XLA's CPU backend runs a convolution inside a ``while`` or ``cond`` as a
generic loop nest, 4-11x slower (jax-ml/jax#12868; :func:`make_pair_programs`).

The theta axis is split over the local devices with ``jax.shard_map`` (each
device computes ``chunk`` thetas, the same shapes as a one-device run, so the
results are bit-identical), and several processes (``jax.distributed``) each
take every ``process_count``-th chunk (``<out>`` on a filesystem they all
share; ``jaxkink-volume --distributed``, tests/test_distributed.py: the same
bits as one process); each finished chunk is written atomically to
``<out>/chunks/`` and a re-run skips the chunks already there.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from jaxkink import rundir
from jaxkink.hits import TapedKinks
from jaxkink.kinks import Kinks
from jaxkink.models.registry import is_convolutional
from jaxkink.precision import Policy
from jaxkink.typing import AnyArray, Array, KinkModel, PyTree

__all__ = (
    'Engine',
    'KINDS',
    'PairRecord',
    'Progress',
    'PairPrograms',
    'Reporter',
    'THETA_LOOPS',
    'auto_theta_loop',
    'engine_settings',
    'kink_pair',
    'load_records',
    'make_chunk_fn',
    'make_pair_programs',
    'run',
    'stack_batches',
)

KINDS = ('relu', 'relu6', 'leaky_relu', 'pool')
THETA_LOOPS = ('vmap', 'map', 'programs')
_FIELDS = {'relu': ('relu_s',), 'relu6': ('relu6_alpha', 'relu6_beta'),
           'leaky_relu': ('leaky_s',), 'pool': ('pool_beta',)}


class PairRecord(NamedTuple):
  """What one (theta, minibatch) comparison found.

  Leading axes are (thetas, minibatches) in the engine's results. The
  fields are JAX arrays inside the program and NumPy arrays in what
  :meth:`Engine.run_chunks`, :func:`run` and :func:`load_records` return.

  Attributes:
    differs: some element of the full parameter gradient differs (``!=``).
    differs_first: the first layer's kernel gradient differs (the reference
      notebook's ``torch.equal(net1[0].weight.grad, net2[0].weight.grad)``;
      "first" is the first ``kernel`` in flattened parameter order).
    rel_l2: ``||g1 - g0||_2 / ||g0||_2`` over the full gradient.
    rel_l2_first: the same over the first layer's kernel gradient only (the
      leaf of ``differs_first``; no bias): the reference notebook's
      ``diff_L2 / net1_L2``, which ``paper_results/section_3/mkPlot.R``
      summarises into Table 1's third line (``g0``: the first kink value).
    l1: ``||g1 - g0||_1`` (the TMLR paper's backprop variation ``D``).
    hits: ``(ops,)`` kink hits per kinked operation, in call order.
    min_distance: ``(ops,)`` smallest distance to a kink per operation.
    computed: the comparison fields come from the backward passes (False:
      screened out, the gradients are identical by the exactness argument,
      and the fields are False, 0 and ``finite`` True).
    finite: both gradients are finite.
  """
  differs: AnyArray
  differs_first: AnyArray
  rel_l2: AnyArray
  rel_l2_first: AnyArray
  l1: AnyArray
  hits: AnyArray
  min_distance: AnyArray
  computed: AnyArray
  finite: AnyArray


def kink_pair(kind: str, values: Sequence[float], *,
              legacy_relu_grad: bool = False,
              base: Kinks | None = None) -> Kinks:
  """A ``Kinks`` with a leading axis of two: the two settings compared.

  Args:
    kind: which kink takes the two values: ``'relu'`` (ReLU'(0)),
      ``'relu6'`` (ReLU6'(0) and ReLU6'(6) together), ``'leaky_relu'`` or
      ``'pool'`` (the MaxPool tie rule beta: 0 native, 1 minimal).
    values: the two values, e.g. ``(0, 1)``; equal values give a control.
    legacy_relu_grad: the 2021 reference code's assigning ReLU backward.
    base: the other kink values (default ``Kinks()``).
  """
  if kind not in KINDS:
    raise ValueError(f'unknown kink kind {kind!r}; valid: {", ".join(KINDS)}')
  values = tuple(float(v) for v in values)
  if len(values) != 2:
    raise ValueError(f'a kink pair needs two values, got {values}')
  base = (base or Kinks()).replace(legacy_relu_grad=legacy_relu_grad)
  pair = jax.tree.map(lambda a: jnp.stack([jnp.asarray(a)] * 2), base)
  return pair.replace(**{f: jnp.asarray(values) for f in _FIELDS[kind]})


def _first_kernel_index(params: PyTree) -> int:
  paths = jax.tree_util.tree_flatten_with_path(params)[0]
  for i, (path, _) in enumerate(paths):
    if getattr(path[-1], 'key', None) == 'kernel':
      return i
  return 0


def _compare_grads(g0: PyTree, g1: PyTree, acc: Any) -> tuple:
  """The comparison fields of two gradients (same structure): differs,
  differs_first, rel_l2, rel_l2_first, l1, finite."""
  leaves = list(zip(jax.tree.leaves(g0), jax.tree.leaves(g1)))
  first = _first_kernel_index(g0)
  neq = [jnp.any(g0 != g1) for g0, g1 in leaves]
  diff = [g1.astype(acc) - g0.astype(acc) for g0, g1 in leaves]
  # Per-leaf sums, so the first layer's ratio reuses the full gradient's
  # terms: no extra pass over the gradients.
  sq = [jnp.sum(d * d) for d in diff]
  base = [jnp.sum(jnp.square(g0.astype(acc))) for g0, _ in leaves]
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g0)) & jnp.all(
      jnp.isfinite(g1)) for g0, g1 in leaves]))
  return (jnp.any(jnp.stack(neq)), neq[first], jnp.sqrt(sum(sq) / sum(base)),
          jnp.sqrt(sq[first] / base[first]),
          sum(jnp.sum(jnp.abs(d)) for d in diff), finite)


def _below_32_bits(policy: Policy) -> bool:
  """The map loop's half-precision program: the minibatch tied to the
  theta, and the screen without a conditional (:func:`make_chunk_fn`)."""
  return policy.compute_dtype.itemsize < 4


def _accumulator() -> Any:
  return jnp.float64 if jax.config.read('jax_enable_x64') else jnp.float32


def _loss_and_tape(model: KinkModel, policy: Policy, pair: Kinks,
                   batch_norm_mode: str) -> Callable:
  """``f(params, extra, x, y, kinks) -> (loss, tape)``: the minibatch loss
  and the kink counters of its forward pass (``extra``: the variables other
  than ``'params'``, e.g. batch statistics)."""
  if pair.blended_pool_forward:
    raise ValueError('blended_pool_forward makes the forward value depend on '
                     'beta, so the pair cannot share one forward pass')
  if batch_norm_mode not in ('batch', 'running'):
    raise ValueError("batch_norm_mode must be 'batch' or 'running', got "
                     f'{batch_norm_mode!r}')
  train = batch_norm_mode == 'batch'

  def loss_and_tape(params, extra, x, y, kinks):
    taped = TapedKinks.of(kinks)
    variables = {'params': params, **extra}
    if extra and train:
      logits, _ = model.apply(variables, x, taped, True,
                              mutable=list(extra))
    else:
      logits = model.apply(variables, x, taped, False)
    logits = policy.cast_loss(logits)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, tuple(taped.tape)

  return loss_and_tape


def _unstacked_pair(loss_and_tape: Callable, policy: Policy, pair: Kinks
                    ) -> tuple[Callable, Callable]:
  """``forward(variables, x, y) -> (hits, min_distance, pullbacks)`` and
  ``backward(pullbacks) -> comparison fields`` of one (theta, minibatch)
  pair, the two kink settings traced as two ``jax.vjp`` of the same
  function, not vmapped over the pair.

  Their forward passes are the same operations on the same values, so XLA
  computes them once (common subexpressions), and the residuals the two
  pullbacks share (the input, the pre-activations) are one buffer each. A
  vmap over the pair would broadcast every residual to a pair axis of two,
  the input included: written for every pair, needed only for the flagged
  ones. A vmapped convolution's cotangent would also become a grouped
  convolution (1.5x slower on CPUs).
  """
  one = jnp.ones((), policy.loss_dtype)
  acc = _accumulator()
  settings = [jax.tree.map(lambda a, i=i: a[i], pair) for i in range(2)]

  def forward(variables, x, y):
    params = variables['params']
    extra = {k: v for k, v in variables.items() if k != 'params'}
    pullbacks, tapes = [], []
    for kinks in settings:
      _, pullback, tape = jax.vjp(
          lambda p, k=kinks: loss_and_tape(p, extra, x, y, k), params,
          has_aux=True)
      pullbacks.append(pullback)
      tapes.append(tape)
    tape = tapes[0]   # the counters read the forward values: the same
    hits = jnp.stack([t.count for t in tape])
    dist = jnp.stack([t.min_distance.astype(acc) for t in tape])
    return hits, dist, tuple(pullbacks)

  def backward(pullbacks):
    return _compare_grads(*(f(one)[0] for f in pullbacks), acc)

  return forward, backward


class PairPrograms(NamedTuple):
  """The three programs of ``theta_loop='programs'`` (not jitted).

  Attributes:
    init: ``init(key, x) -> variables``: one theta, drawn as the chunk
      programs draw it (``x``: one input, for the shapes).
    forward: ``forward(variables, x, y) -> (hits, min_distance,
      pullbacks)``: one forward pass of minibatch ``(x, y)``, its kink
      counters, and the pullbacks of both kink settings.
    backward: ``backward(pullbacks) -> (differs, differs_first, rel_l2,
      rel_l2_first, l1, finite)``: both backward passes and the comparison.
  """
  init: Callable
  forward: Callable
  backward: Callable


def make_pair_programs(model: KinkModel, policy: Policy, pair: Kinks, *,
                       batch_norm_mode: str = 'batch') -> PairPrograms:
  """The programs of one (theta, minibatch) pair, for a loop on the host.

  No program holds a loop or a conditional. XLA's CPU backend hands a
  convolution to its fast library only outside them: inside a
  ``while`` or ``cond`` it emits a generic loop nest, 4-11x slower at
  LeNet-5's shapes (jax-ml/jax#12868; BUILD_NOTES.md, issue 17). The host
  reads the forward's hits and runs the backward program only where the
  screen needs it, on the residuals of that same forward (exact, as with
  the other loops).

  The two settings are two ``jax.vjp`` of the same function
  (:func:`_unstacked_pair`), as in ``make_chunk_fn(theta_loop='map')``.
  """
  loss_and_tape = _loss_and_tape(model, policy, pair, batch_norm_mode)
  forward, backward = _unstacked_pair(loss_and_tape, policy, pair)

  def init(key, x):
    return model.init(key, x, Kinks())

  return PairPrograms(init, forward, backward)


def make_chunk_fn(model: KinkModel, policy: Policy, pair: Kinks, *,
                  screen: bool = True, batch_norm_mode: str = 'batch',
                  theta_loop: str = 'vmap') -> Callable:
  """The per-device work: ``fn(keys, xs, ys) -> PairRecord``.

  ``keys`` holds one PRNG key per theta (``(C,)``), ``xs`` / ``ys`` the
  minibatches stacked (``(R, B, ...)``, already cast to the policy's input
  dtype). The result has leading axes ``(C, R)``. Not jitted: see
  :class:`Engine`.

  Args:
    model: a zoo model (``apply(variables, x, kinks, train)``) whose
      ``dtype`` / ``param_dtype`` follow ``policy``.
    policy: the precision policy (loss dtype; inputs are cast by the caller).
    pair: the two kink settings (:func:`kink_pair`).
    screen: skip the backward passes where the forward hit no kink: per
      theta with ``theta_loop='map'`` (a ``lax.cond`` inside the loop), per
      chunk with ``'vmap'`` (where a per-theta condition would compute both
      branches). ``PairRecord.computed`` says which pairs ran. Below 32
      bits (float16, bfloat16, mixed), where nearly every pair hits a kink,
      the map loop computes every pair's backward passes and gives the
      pairs without a hit the screened-out record: the same records,
      without the conditional's cost (:meth:`Engine.screen_settings`).
    batch_norm_mode: with batch norm, ``'batch'`` normalises with the
      minibatch's statistics (PyTorch modules are in training mode unless
      ``.eval()`` is called, as in the reference notebooks) and
      ``'running'`` with the initial running averages.
    theta_loop: how the chunk's thetas are computed: ``'vmap'`` (batched
      matrix products: best on GPUs) or ``'map'`` (``lax.map``, a loop of
      plain matrix products inside the program: about 1.5x faster on CPUs,
      BUILD_NOTES.md; each theta's two kink settings are two ``jax.vjp``,
      :func:`_unstacked_pair`). The two may round differently (other GEMM
      shapes).
      (:class:`Engine` also takes ``'programs'``: :func:`make_pair_programs`
      looped on the host.)
  """
  if theta_loop not in ('vmap', 'map'):
    raise ValueError(f"theta_loop must be 'vmap' or 'map', got {theta_loop!r}")
  loss_and_tape = _loss_and_tape(model, policy, pair, batch_norm_mode)
  one = jnp.ones((), policy.loss_dtype)
  acc = _accumulator()

  def theta_forward(params, extra, x, y):
    def for_kinks(kinks):
      _, pullback, tape = jax.vjp(
          lambda p: loss_and_tape(p, extra, x, y, kinks), params,
          has_aux=True)
      return tape, pullback
    tape, pullbacks = jax.vmap(for_kinks, out_axes=(None, 0))(pair)
    hits = jnp.stack([t.count for t in tape])
    dist = jnp.stack([t.min_distance.astype(acc) for t in tape])
    return hits, dist, pullbacks

  def compare(pullbacks):
    grads = jax.vmap(lambda f: f(one)[0])(pullbacks)  # (2, ...) per leaf
    return _compare_grads(jax.tree.map(lambda g: g[0], grads),
                          jax.tree.map(lambda g: g[1], grads), acc)

  def skipped(pullbacks, c=None):
    shape = () if c is None else (c,)
    false = jnp.zeros(shape, bool)
    zero = jnp.zeros(shape, acc)
    return false, false, zero, zero, zero, jnp.ones(shape, bool)

  pair_forward, pair_backward = _unstacked_pair(loss_and_tape, policy, pair)
  half = _below_32_bits(policy)

  def theta_record(v, x, y):
    # One theta's forward and backward passes inside the loop over thetas,
    # so no theta's residuals are stacked with the others', nor (two vjp,
    # not a vmap over the pair) with themselves. Screened, the theta is
    # screened on its own: the predicate and the pullbacks come from the
    # same forward pass, and a theta without a hit skips its backward
    # passes.
    if half:
      # Ties the minibatch to the theta. XLA's CPU backend converts a
      # float16 or bfloat16 input to float32 for its products, once per
      # setting; hoisted out of the loop over thetas, the two converts
      # became two loop operands, the two settings' forward passes were no
      # longer one expression, and both ran (one device: BUILD_NOTES.md,
      # 2026-12-04). Inside the loop, XLA merges them.
      v, x = lax.optimization_barrier((v, x))
    hits, dist, pullbacks = pair_forward(v, x, y)
    if screen:
      flagged = jnp.any(hits > 0)
      if half:
        # Below 32 bits nearly every pair of a real-sized network hits a
        # kink (all of Table 1's: "in 16 bits, it systematically fills up
        # the whole space", Bertoin et al., Section 1), so a conditional
        # skips nothing and costs: XLA's CPU backend converts the
        # residuals to float32 again inside the branch, out of reach of
        # the forward's float32 copies (screened ran at 0.94-0.96 of
        # unscreened). The backward passes run unconditionally and a pair
        # without a hit gets the screened-out record. (A tiny network,
        # which hits no kink in most pairs, runs at the unscreened speed;
        # BUILD_NOTES.md, 2026-12-04.)
        out = jax.tree.map(lambda a, b: jnp.where(flagged, a, b),
                           pair_backward(pullbacks), skipped(pullbacks))
      else:
        out = lax.cond(flagged, pair_backward, skipped, pullbacks)
    else:
      flagged = jnp.ones((), bool)
      out = pair_backward(pullbacks)
    return (*out, hits, dist, flagged)

  def batch_records(variables, x, y):
    if theta_loop == 'map':
      (differs, first, rel, rel_first, l1, finite, hits, dist,
       computed) = lax.map(lambda v: theta_record(v, x, y), variables)
      return PairRecord(differs, first, rel, rel_first, l1, hits, dist,
                        computed, finite)
    extra = {k: v for k, v in variables.items() if k != 'params'}
    thetas = (variables['params'], extra)
    hits, dist, pullbacks = jax.vmap(
        lambda v: theta_forward(v[0], v[1], x, y))(thetas)
    run = jax.vmap(compare)
    if screen:
      # Batched over thetas, a per-theta condition would become a select
      # that computes both branches: the chunk is screened as a whole.
      flagged = jnp.any(hits > 0)
      c = hits.shape[0]
      out = lax.cond(flagged, run, lambda pb: skipped(pb, c), pullbacks)
      computed = jnp.broadcast_to(flagged, hits.shape[:1])
    else:
      out = run(pullbacks)
      computed = jnp.ones(hits.shape[:1], bool)
    differs, first, rel, rel_first, l1, finite = out
    return PairRecord(differs, first, rel, rel_first, l1, hits, dist,
                      computed, finite)

  def chunk_fn(keys, xs, ys):
    variables = jax.vmap(lambda k: model.init(k, xs[0, :1], Kinks()))(keys)
    _, records = lax.scan(
        lambda c, b: (c, batch_records(variables, b[0], b[1])), None,
        (xs, ys))
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), records)

  return chunk_fn


@dataclasses.dataclass
class Engine:
  """Runs the comparison over ``samples`` thetas and a stacked data set.

  Attributes:
    model, policy, pair, screen, batch_norm_mode: see :func:`make_chunk_fn`.
    theta_loop: ``'vmap'`` or ``'map'`` (one program per chunk, see
      :func:`make_chunk_fn`), or ``'programs'`` (a host loop over the pairs
      of :func:`make_pair_programs`, each device computing its chunk's
      thetas one after the other: the CPU path for convolutional networks,
      :func:`auto_theta_loop`). They may round differently.
    samples: M, the number of weight samples.
    chunk: thetas per device per program call.
    seed: theta ``m`` is drawn from ``fold_in(key(seed), m)``.
    devices: the local devices to shard the thetas over (default, empty:
      all).
  """
  model: KinkModel
  policy: Policy
  pair: Kinks
  samples: int
  chunk: int = 16
  seed: int = 0
  screen: bool = True
  batch_norm_mode: str = 'batch'
  theta_loop: str = 'vmap'
  devices: Sequence[Any] = ()

  def __post_init__(self):
    if self.theta_loop not in THETA_LOOPS:
      raise ValueError(f'theta_loop must be one of {", ".join(THETA_LOOPS)}, '
                       f'got {self.theta_loop!r}')
    if self.samples < 1:
      raise ValueError(f'samples must be >= 1, got {self.samples}')
    if self.chunk < 1:
      raise ValueError(f'chunk must be >= 1, got {self.chunk}')
    self.devices = list(self.devices or jax.local_devices())
    if self.theta_loop == 'programs':
      self._programs = PairPrograms(*map(jax.jit, make_pair_programs(
          self.model, self.policy, self.pair,
          batch_norm_mode=self.batch_norm_mode)))
      return
    fn = make_chunk_fn(self.model, self.policy, self.pair, screen=self.screen,
                       batch_norm_mode=self.batch_norm_mode,
                       theta_loop=self.theta_loop)
    if len(self.devices) > 1:
      mesh = Mesh(np.array(self.devices), ('theta',))
      # Each device runs the whole per-device program on its own thetas,
      # no collective inside; check_vma=False lets the pullbacks take a
      # replicated cotangent.
      fn = jax.shard_map(fn, mesh=mesh, in_specs=(P('theta'), P(), P()),
                         out_specs=P('theta'), check_vma=False)
    self._fn = jax.jit(fn)

  @property
  def screen_unit(self) -> str | None:
    """What the screen skips at once: ``'theta'`` (one theta's backward
    passes on one minibatch, ``theta_loop='map'`` or ``'programs'``),
    ``'chunk'`` (``'vmap'``) or None."""
    if not self.screen:
      return None
    return 'chunk' if self.theta_loop == 'vmap' else 'theta'

  def screen_settings(self) -> dict[str, str]:
    """What changed the program since the first runs, for a run's
    settings: the screen's unit where it is not the chunk;
    ``backward_loop: 'theta'`` for an unscreened ``theta_loop='map'`` run
    (each theta's backward passes inside the loop over thetas, since
    2026-12-02; before, all the chunk's forward passes ran first); and
    ``pair_trace: 'two_vjp'`` for ``theta_loop='map'`` (the two kink
    settings as two ``jax.vjp``, since 2026-12-03; before, one vmapped over
    the pair); ``screen_branch: 'select'`` for a screened
    ``theta_loop='map'`` run below 32 bits (no conditional, since
    2026-12-04). Runs of the old programs are then refused, not mixed
    (their pairs may round otherwise)."""
    settings = {}
    if self.screen_unit == 'theta':
      settings['screen_unit'] = 'theta'
      if self.theta_loop == 'map' and _below_32_bits(self.policy):
        settings['screen_branch'] = 'select'
    elif not self.screen and self.theta_loop == 'map':
      settings['backward_loop'] = 'theta'
    if self.theta_loop == 'map':
      settings['pair_trace'] = 'two_vjp'
    return settings

  @property
  def num_chunks(self) -> int:
    return -(-self.samples // self.chunk)

  def keys(self, chunk_indices: Sequence[int]) -> Array:
    """The PRNG keys of the thetas of the given chunks, in order."""
    index = (np.asarray(chunk_indices)[:, None] * self.chunk
             + np.arange(self.chunk)[None, :]).reshape(-1)
    return self._theta_keys(index)

  def _theta_keys(self, indices: Sequence[int] | np.ndarray) -> Array:
    base = jax.random.key(self.seed)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(
        jnp.asarray(indices, jnp.uint32))

  def sample(self, indices: Sequence[int] | np.ndarray, x: AnyArray
             ) -> PyTree:
    """The variables of thetas ``indices`` (leading axis), as the engine
    draws them; ``x`` is an input batch (for the shapes)."""
    with self.policy.scope(), jax.threefry_partitionable(False):
      return jax.jit(jax.vmap(
          lambda k: self.model.init(k, x[:1], Kinks())))(
              self._theta_keys(indices))

  def run_chunks(self, chunk_indices: Sequence[int], xs: AnyArray,
                 ys: AnyArray) -> list[PairRecord]:
    """Computes ``len(devices)`` chunks (one per device) in one call.

    Returns one host-side :class:`PairRecord` per chunk, thetas past
    ``samples`` dropped.
    """
    if len(chunk_indices) != len(self.devices):
      raise ValueError(f'need one chunk per device ({len(self.devices)}), '
                       f'got {len(chunk_indices)}')
    with self.policy.scope(), jax.threefry_partitionable(False):
      if self.theta_loop == 'programs':
        out = self._run_programs(self.keys(chunk_indices), xs, ys)
      else:
        out = jax.tree.map(np.asarray,
                           self._fn(self.keys(chunk_indices), xs, ys))
    records = []
    for j, c in enumerate(chunk_indices):
      keep = min(self.chunk, self.samples - c * self.chunk)
      records.append(jax.tree.map(
          lambda a: a[j * self.chunk:j * self.chunk + keep], out))
    return records

  def _run_programs(self, keys: Array, xs: AnyArray, ys: AnyArray
                    ) -> PairRecord:
    """``theta_loop='programs'``: device ``d`` computes thetas ``keys[d *
    chunk:(d + 1) * chunk]``, one (theta, minibatch) pair per program
    call. The host walks the devices in step, so that each has its next
    forward pass queued while it reads another's hits."""
    programs = self._programs
    xs, ys = np.asarray(xs), np.asarray(ys)
    r = xs.shape[0]
    batches = [[jax.device_put((xs[b], ys[b]), d) for b in range(r)]
               for d in self.devices]
    first = xs[0, :1]
    per_device = [jax.device_put(keys[d * self.chunk:(d + 1) * self.chunk],
                                 dev) for d, dev in enumerate(self.devices)]
    acc = _accumulator()
    skipped = (np.False_, np.False_, acc(0), acc(0), acc(0), np.True_)
    fields: list[list[tuple]] = [[] for _ in self.devices]
    for j in range(self.chunk):
      variables = [programs.init(k[j], jax.device_put(first, dev))
                   for k, dev in zip(per_device, self.devices)]
      for b in range(r):
        forward = [programs.forward(v, *batch[b])
                   for v, batch in zip(variables, batches)]
        for d, (hits, dist, pullbacks) in enumerate(forward):
          flagged = not self.screen or bool(np.asarray(hits).any())
          out = programs.backward(pullbacks) if flagged else skipped
          fields[d].append((*out, hits, dist, flagged))
    records = []
    for rows in fields:
      columns = [np.stack([np.asarray(v) for v in col]) for col in zip(*rows)]
      differs, first_, rel, rel_first, l1, finite, hits, dist, computed = [
          c.reshape(self.chunk, r, *c.shape[1:]) for c in columns]
      records.append(PairRecord(differs, first_, rel, rel_first, l1, hits,
                                dist, computed, finite))
    return jax.tree.map(lambda *a: np.concatenate(a), *records)


def auto_theta_loop(model: KinkModel, sample: AnyArray,
                    backend: str | None = None) -> str:
  """The theta loop that measured fastest for ``model`` on ``backend``
  (default: JAX's): ``'vmap'`` on accelerators; on CPUs ``'programs'`` for
  convolutional networks (LeNet-5 MNIST pool pairs: 48-58 pairs/s on two
  cores against 6.9-8.1 with ``'map'``, BUILD_NOTES.md, issue 17) and
  ``'map'`` otherwise. ``sample``: an input batch (only its shape is
  read)."""
  backend = backend or jax.default_backend()
  if backend != 'cpu':
    return 'vmap'
  return 'programs' if is_convolutional(model, sample) else 'map'


def stack_batches(x: AnyArray, y: AnyArray, batch_size: int
                  ) -> tuple[tuple[AnyArray, AnyArray],
                             tuple[AnyArray, AnyArray] | None]:
  """Splits a data set into ``(R, B, ...)`` full batches and the remainder.

  Returns ``((xs, ys), tail)`` with ``tail = (x, y)`` of the last partial
  batch (PyTorch's ``DataLoader`` default, ``drop_last=False``) or None.
  """
  n = x.shape[0]
  if batch_size < 1 or batch_size > n:
    raise ValueError(f'batch_size must be in 1..{n} (the data set size), got '
                     f'{batch_size}')
  r = n // batch_size
  full = (x[:r * batch_size].reshape(r, batch_size, *x.shape[1:]),
          y[:r * batch_size].reshape(r, batch_size))
  tail = None if r * batch_size == n else (x[None, r * batch_size:],
                                           y[None, r * batch_size:])
  return full, tail


def _chunk_name(index: int) -> str:
  return os.path.join('chunks', f'chunk_{index:06d}.npz')


def engine_settings(engine: Engine, x: AnyArray, y: AnyArray,
                    batch_size: int) -> dict[str, Any]:
  """Everything of a run that can change its records: the run directory's
  settings when :func:`run` is given a path. (The device count is not in
  it: every device runs the same program shapes, so it changes no bit.)"""
  pair = {k: np.asarray(v).tolist() for k, v in dataclasses.asdict(
      engine.pair).items()}
  return {'model': repr(engine.model), 'policy': engine.policy.to_dict(),
          'pair': pair, 'samples': engine.samples, 'chunk': engine.chunk,
          'seed': engine.seed, 'screen': engine.screen,
          'batch_norm_mode': engine.batch_norm_mode,
          'theta_loop': engine.theta_loop, 'batch_size': int(batch_size),
          'data': rundir.array_digest(x, y), **engine.screen_settings()}


def _record_check(thetas: int, batches: int
                  ) -> Callable[[dict[str, np.ndarray]], str | None]:
  """A check that a chunk file holds every field with ``(thetas, batches)``
  leading axes."""
  def check(arrays):
    missing = [k for k in PairRecord._fields if k not in arrays]
    if missing:
      return f'lacks the fields {", ".join(missing)}'
    bad = [f'{k} {arrays[k].shape}' for k in PairRecord._fields
           if arrays[k].shape[:2] != (thetas, batches)]
    if bad or arrays['hits'].shape != arrays['min_distance'].shape:
      return (f'has shapes {", ".join(bad) or "of hits != min_distance"}, '
              f'expected leading axes ({thetas}, {batches})')
    return None
  return check


def load_records(out: str | rundir.RunDir, num_chunks: int) -> PairRecord:
  """All chunks of a finished run, concatenated along the theta axis.

  Only for reading a finished run (e.g. for plots): files are read as they
  are; :func:`run` checks each one against its run's manifest.
  """
  path = out.path if isinstance(out, rundir.RunDir) else out
  parts = []
  for i in range(num_chunks):
    with np.load(os.path.join(path, _chunk_name(i)), allow_pickle=False) as f:
      parts.append(PairRecord(**{k: f[k] for k in PairRecord._fields}))
  return jax.tree.map(lambda *a: np.concatenate(a), *parts)


class Reporter(Protocol):
  """What :func:`run` tells as it goes, for a progress bar or a writer of
  metrics; its calls do not change the records."""

  def start(self, thetas: int, batches: int,
            resumed: Sequence[PairRecord]) -> None:
    """Before the first call: this process's ``thetas`` over ``batches``
    minibatches, and the records of its chunks found on disk (in chunk
    order)."""

  def chunk(self, index: int, record: PairRecord) -> None:
    """After chunk ``index`` was computed and saved."""


class Progress:
  """A one-line progress report: thetas done, pairs/s, ETA."""

  def __init__(self, total: int, batches: int, write: Callable[[str], Any],
               done: int = 0):
    self.total, self.batches, self.write = total, batches, write
    self.start_done, self.done, self.t0 = done, done, time.perf_counter()

  def update(self, thetas: int) -> None:
    self.done += thetas
    dt = time.perf_counter() - self.t0
    rate = (self.done - self.start_done) * self.batches / max(dt, 1e-9)
    left = (self.total - self.done) * self.batches / max(rate, 1e-9)
    self.write(f'thetas {self.done}/{self.total} '
               f'({100 * self.done / self.total:.0f}%)  {rate:,.0f} pairs/s  '
               f'ETA {_clock(left)}')


def _clock(seconds: float) -> str:
  m, s = divmod(int(round(seconds)), 60)
  h, m = divmod(m, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


def run(engine: Engine, x: AnyArray, y: AnyArray, batch_size: int,
        out: str | rundir.RunDir, *,
        progress: Callable[[str], Any] | None = None,
        reporter: Reporter | None = None,
        max_calls: int | None = None, wait_timeout: float = 3600.0
        ) -> PairRecord | None:
  """Runs (or resumes) an estimation, saving each chunk in ``out/chunks``.

  Chunks already on disk are not recomputed, so an interrupted run started
  again with the same settings continues, and ends with the same records as
  an uninterrupted one. Every chunk file carries its index and the run
  directory's manifest digest; a file that fails its checks (damaged,
  truncated, another chunk's, another run's, wrong shapes) is moved into
  ``out/corrupt/`` with a warning and recomputed. With several processes,
  each computes the chunks ``i`` with ``i % process_count ==
  process_index`` and process 0 gathers.

  Args:
    engine: the :class:`Engine`.
    x: the whole data set, preprocessed in the policy's input dtype.
    y: its labels.
    batch_size: minibatch size; a last partial batch is kept.
    out: the run directory: an open :class:`~jaxkink.rundir.RunDir`, or a
      path, opened with :func:`engine_settings` as its settings (a
      directory holding a run of other settings is refused).
    progress: called with a progress line after each call.
    reporter: told the work of this process and the chunks it resumed,
      then each chunk as it is computed (a progress bar, a TensorBoard
      writer: see :class:`Reporter`).
    max_calls: stop after this many program calls (tests, time limits).
    wait_timeout: how long process 0 waits for the other processes' chunks.

  Returns:
    The records of every theta and minibatch (``(M, R)`` leading axes), or
    None when stopped early or on processes other than 0.

  Raises:
    jaxkink.rundir.RefusedError: ``out`` holds a run of other settings or
      another process writes it.
  """
  if not isinstance(out, rundir.RunDir):
    with rundir.RunDir.open(out, engine_settings(engine, x, y, batch_size)
                            ) as run_dir:
      return run(engine, x, y, batch_size, run_dir, progress=progress,
                 reporter=reporter, max_calls=max_calls,
                 wait_timeout=wait_timeout)
  (xs, ys), tail = stack_batches(x, y, batch_size)
  r = xs.shape[0] + (tail is not None)
  pid, nproc = jax.process_index(), jax.process_count()
  size = lambda i: min(engine.chunk, engine.samples - i * engine.chunk)

  def load(i: int) -> PairRecord | None:
    arrays = out.load_npz(_chunk_name(i), i, _record_check(size(i), r))
    return None if arrays is None else PairRecord(
        **{k: arrays[k] for k in PairRecord._fields})

  mine = [i for i in range(engine.num_chunks) if i % nproc == pid]
  records = {i: rec for i in mine if (rec := load(i)) is not None}
  todo = [i for i in mine if i not in records]
  report = Progress(sum(map(size, mine)), r, progress or (lambda s: None),
                    done=sum(size(i) for i in records))
  if reporter is not None:
    reporter.start(report.total, r, [records[i] for i in sorted(records)])
  width = len(engine.devices)
  calls = 0

  def compute(indices: list[int]) -> bool:
    nonlocal calls
    for start in range(0, len(indices), width):
      if max_calls is not None and calls >= max_calls:
        return False
      group = indices[start:start + width]
      padded = group + [group[-1]] * (width - len(group))
      computed = engine.run_chunks(padded, xs, ys)
      if tail is not None:
        extra = engine.run_chunks(padded, *tail)
        computed = [jax.tree.map(
            lambda a, b: np.concatenate([a, b], axis=1), full, last)
                    for full, last in zip(computed, extra)]
      for index, record in zip(group, computed):
        out.save_npz(_chunk_name(index), index, **record._asdict())
        records[index] = record
        if reporter is not None:
          reporter.chunk(index, record)
      calls += 1
      report.update(sum(len(rec.differs) for rec in computed[:len(group)]))
    return True

  if not compute(todo):
    return None
  if pid != 0:
    return None
  deadline = time.monotonic() + wait_timeout
  while True:
    damaged = []
    for i in range(engine.num_chunks):
      if i in records or not os.path.exists(out.file(_chunk_name(i))):
        continue
      rec = load(i)
      if rec is None:  # moved aside: computed here (any process can)
        damaged.append(i)
      else:
        records[i] = rec
    compute(damaged)
    missing = [i for i in range(engine.num_chunks) if i not in records]
    if not missing:
      break
    if time.monotonic() > deadline:
      raise TimeoutError(f'chunks {missing} missing in {out.path} after '
                         f'{wait_timeout:.0f} s')
    time.sleep(1.0)
  parts = [records[i] for i in range(engine.num_chunks)]
  return jax.tree.map(lambda *a: np.concatenate(a), *parts)
