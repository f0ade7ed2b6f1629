"""Lockstep SGD: copies of one network that differ only in their kink values.

The bifurcation experiment of Bertoin et al. (NeurIPS 2021, Section 3.1,
Figure 1) trains copies of a network from the same weights on the same
minibatches, one with ReLU'(0) = 0, one with ReLU'(0) = 1, and a second
ReLU'(0) = 0 copy as a control. Their weights stay bit-identical until an
iteration at which some pre-activation is exactly on a kink; from then on the
s = 0 and s = 1 copies differ while the control never does.

Here the copies are the members of one ``jax.vmap`` over the kink value,
inside one jitted step: the same program computes every member, so a
difference between members can only come from the kink value (a separately
compiled program could round differently: see BUILD_NOTES.md). Each step
returns a :class:`StepRecord` read from the very forward pass the gradients
use (``capture_intermediates`` inside the differentiated function).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxkink import hits as hits_lib
from jaxkink.kinks import Kinks
from jaxkink.precision import Policy
from jaxkink.typing import Array, PyTree

__all__ = (
    'StepRecord',
    'hidden_preactivations',
    'kinks_for',
    'l1_distance',
    'make_step',
    'replicate',
)


class StepRecord(NamedTuple):
  """What one lockstep step saw, per member (leading axis) and layer.

  Attributes:
    loss: ``(members,)`` minibatch loss before the update.
    min_distance: ``(members, layers)`` smallest distance of a hidden
      pre-activation to a kink on this minibatch (``|z|`` for ReLU).
    hits: ``(members, layers)`` number of pre-activations exactly on a kink.
    closest: ``(members, layers, 2)`` the (sample, neuron) of the
      pre-activation closest to a kink (the one that hit, when ``hits > 0``).
    l1_to_first: ``(members,)`` ``||theta_m - theta_0||_1`` after the update.
  """
  loss: Array
  min_distance: Array
  hits: Array
  closest: Array
  l1_to_first: Array


def l1_distance(a: PyTree, b: PyTree) -> Array:
  """``sum |a - b|`` over every leaf, accumulated in float64 when enabled."""
  acc = jnp.float64 if jax.config.read('jax_enable_x64') else jnp.float32
  leaves = jax.tree.leaves(jax.tree.map(
      lambda u, v: jnp.sum(jnp.abs(u.astype(acc) - v.astype(acc))), a, b))
  return sum(leaves, jnp.zeros((), acc))


def hidden_preactivations(intermediates: PyTree) -> list[Array]:
  """The outputs of every ``nn.Dense`` but the last (the logits), in order.

  For an MLP without batch norm these are exactly the inputs of the kinked
  activations.
  """
  dense = intermediates['intermediates']
  names = sorted((k for k in dense if k.startswith('Dense_')),
                 key=lambda k: int(k.split('_')[1]))
  return [dense[k]['__call__'][0] for k in names[:-1]]


def _closest(distance: Array) -> Array:
  flat = jnp.argmin(distance.reshape(-1))
  return jnp.stack(jnp.unravel_index(flat, distance.shape)).astype(jnp.int32)


def make_step(model: nn.Module, policy: Policy, *,
              activation: str = 'relu', batching: str = 'vmap') -> Callable:
  """A jitted lockstep SGD step for ``model``.

  The returned function is ``step(params, kinks, x, y, lr) -> (params,
  record)``: ``params`` and ``kinks`` carry a leading member axis (the
  members are vmapped), ``x`` and ``y`` are one minibatch shared by every
  member, ``lr`` the step size. The loss is the mean cross-entropy in the
  policy's loss dtype (PyTorch's ``CrossEntropyLoss()``), the update plain
  SGD ``theta - lr * grad`` in the parameter dtype.

  Args:
    model: a flax module called as ``model.apply(variables, x, kinks)``
      whose hidden layers are ``nn.Dense`` (an MLP without batch norm).
    policy: the precision policy (casts inputs, loss and parameters).
    activation: ``'relu'`` (kink at 0) or ``'relu6'`` (kinks at 0 and 6),
      for the hit counters.
    batching: ``'vmap'`` computes the members as one batched program;
      ``'unroll'`` writes one copy of the member's computation per member
      into the same jitted program (plain matrix products instead of batched
      ones, faster on CPUs: see BUILD_NOTES.md).
  """
  if batching not in ('vmap', 'unroll'):
    raise ValueError(f"batching must be 'vmap' or 'unroll', got {batching!r}")
  points = hits_lib.RELU6_KINKS if activation == 'relu6' else hits_lib.RELU_KINKS

  def loss_fn(params, kinks, x, y):
    logits, state = model.apply(
        {'params': params}, x, kinks, capture_intermediates=True,
        mutable=['intermediates'])
    logits = policy.cast_loss(logits)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, hidden_preactivations(state)

  def member(params, kinks, x, y, lr):
    (loss, pre), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, kinks, x, y)
    new = jax.tree.map(lambda p, g: (p - lr * g).astype(p.dtype), params,
                       grads)
    dist = [hits_lib.kink_distance(z, points) for z in pre]
    return (new, loss, jnp.stack([jnp.min(d) for d in dist]),
            jnp.stack([jnp.sum(d == 0, dtype=jnp.int32) for d in dist]),
            jnp.stack([_closest(d) for d in dist]))

  @jax.jit
  def step(params, kinks, x, y, lr):
    x = policy.cast_inputs(x)
    lr = jnp.asarray(lr, policy.param_dtype)
    if batching == 'vmap':
      new, loss, dist, hit, closest = jax.vmap(
          member, in_axes=(0, 0, None, None, None))(params, kinks, x, y, lr)
    else:
      take = lambda tree, m: jax.tree.map(lambda a: a[m], tree)
      outs = [member(take(params, m), take(kinks, m), x, y, lr)
              for m in range(jax.tree.leaves(kinks)[0].shape[0])]
      new, loss, dist, hit, closest = jax.tree.map(
          lambda *a: jnp.stack(a), *outs)
    first = jax.tree.map(lambda a: a[0], new)
    l1 = jax.vmap(lambda p: l1_distance(p, first))(new)
    return new, StepRecord(loss, dist, hit, closest, l1)

  return step


def replicate(tree: PyTree, members: int) -> PyTree:
  """Stacks ``members`` identical copies of every leaf (a leading axis)."""
  return jax.tree.map(
      lambda a: jnp.broadcast_to(a, (members, *jnp.shape(a))), tree)


def kinks_for(activation: str, values: Any) -> Kinks:
  """A ``Kinks`` whose kink for ``activation`` takes ``values`` (per member).

  For ReLU6 both kinks (at 0 and at 6) take the value, as in the paper's
  Figure 8 comparison of ReLU6'(0) = ReLU6'(6) = 0 against 1.
  """
  values = jnp.asarray(values)
  base = replicate(Kinks(), values.shape[0])  # every leaf gets the member axis
  if activation == 'relu':
    return base.replace(relu_s=values)
  if activation == 'relu6':
    return base.replace(relu6_alpha=values, relu6_beta=values)
  if activation == 'leaky_relu':
    return base.replace(leaky_s=values)
  raise ValueError(f'unknown activation {activation!r}; valid: relu, relu6, '
                   'leaky_relu')
