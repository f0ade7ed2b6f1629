"""Precision policies: one name selects every dtype and the matmul precision.

A :class:`Policy` says the dtype of the parameters, of the inputs, of the
computation (activations) and of the loss and its reduction, and the
precision of matrix products and convolutions. Fewer mantissa bits make
pre-activations land exactly on a kink more often, so the policy in force is
part of every result and is saved with it (:meth:`Policy.to_dict`).

On NVIDIA GPUs (Ampere and later) JAX computes float32 products in TF32 by
default. The ``float32`` policy therefore asks for ``'highest'`` (true IEEE
float32 products and convolutions) explicitly, and ``tf32`` asks for
``'tensorfloat32'``. The level is applied with
``jax.default_matmul_precision``, which takes effect at trace time: wrap the
*call* of a jitted function (or its definition's tracing) in
:meth:`Policy.scope`. On a CPU every level computes in full float32.

The policy idea (and cast-only-floating-leaves rule) follows
``jmp.Policy`` (google-deepmind/jmp); it is reimplemented here in a few lines
rather than depended on, as jmp has had no release since 2023.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxkink.typing import PyTree

MATMUL_PRECISIONS = ('highest', 'tensorfloat32', 'bfloat16', 'default')


@dataclasses.dataclass(frozen=True)
class Policy:
  """A precision policy.

  Attributes:
    name: the name it is selected by.
    param_dtype: dtype parameters are stored (and updated) in.
    input_dtype: dtype inputs are cast to.
    compute_dtype: dtype of activations and layer computations.
    loss_dtype: dtype of the loss and of its reduction over the batch.
    matmul_precision: ``jax.default_matmul_precision`` level for dots and
      convolutions: ``'highest'`` (true float32 or float64), ``'tensorfloat32'``,
      ``'bfloat16'`` or ``'default'`` (leave JAX's default in place).
  """
  name: str
  param_dtype: Any
  input_dtype: Any
  compute_dtype: Any
  loss_dtype: Any
  matmul_precision: str = 'highest'

  def __post_init__(self):
    if self.matmul_precision not in MATMUL_PRECISIONS:
      raise ValueError(f'matmul_precision must be one of {MATMUL_PRECISIONS}, '
                       f'got {self.matmul_precision!r}')
    for field in ('param_dtype', 'input_dtype', 'compute_dtype', 'loss_dtype'):
      object.__setattr__(self, field, jnp.dtype(getattr(self, field)))

  @property
  def needs_x64(self) -> bool:
    """Whether any dtype of the policy is 64 bits wide."""
    return any(jnp.dtype(d).itemsize == 8 for d in (
        self.param_dtype, self.input_dtype, self.compute_dtype,
        self.loss_dtype))

  def check(self) -> 'Policy':
    """Raises if the policy cannot run in this process; returns ``self``.

    Raises:
      RuntimeError: for a 64-bit policy while ``jax_enable_x64`` is off (JAX
        would silently compute in 32 bits).
    """
    if self.needs_x64 and not jax.config.read('jax_enable_x64'):
      raise RuntimeError(
          f'precision policy {self.name!r} needs 64-bit floats, but JAX runs '
          'with jax_enable_x64 off (it would silently compute in float32). '
          'Enable it before any JAX computation: set the environment variable '
          'JAX_ENABLE_X64=1, or call '
          "jax.config.update('jax_enable_x64', True) at program start.")
    return self

  def cast_params(self, tree: PyTree) -> PyTree:
    """Casts the floating leaves of a parameter pytree to ``param_dtype``."""
    return _cast_floating(tree, self.param_dtype)

  def cast_inputs(self, tree: PyTree) -> PyTree:
    """Casts the floating leaves of the inputs to ``input_dtype``."""
    return _cast_floating(tree, self.input_dtype)

  def cast_to_compute(self, tree: PyTree) -> PyTree:
    """Casts floating leaves (e.g. parameters inside the forward) to compute."""
    return _cast_floating(tree, self.compute_dtype)

  def cast_loss(self, tree: PyTree) -> PyTree:
    """Casts floating leaves (logits, per-example losses) to ``loss_dtype``."""
    return _cast_floating(tree, self.loss_dtype)

  @property
  def jax_precision(self) -> str | None:
    """The level for ``jax.default_matmul_precision`` (None: JAX's default)."""
    return None if self.matmul_precision == 'default' else self.matmul_precision

  @contextlib.contextmanager
  def scope(self) -> Iterator['Policy']:
    """Context in which tracing uses this policy's matmul precision.

    Also checks the policy can run (see :meth:`check`). The precision is part
    of jit's cache key, so the same jitted function traced under two policies
    compiles twice, as it must.
    """
    self.check()
    with jax.default_matmul_precision(self.jax_precision):
      yield self

  def to_dict(self) -> dict[str, str]:
    """A JSON-friendly description, saved with every result."""
    return {
        'name': self.name,
        'param_dtype': self.param_dtype.name,
        'input_dtype': self.input_dtype.name,
        'compute_dtype': self.compute_dtype.name,
        'loss_dtype': self.loss_dtype.name,
        'matmul_precision': self.matmul_precision,
    }

  def __str__(self) -> str:
    d = self.to_dict()
    return (f"{d['name']}: params {d['param_dtype']}, inputs "
            f"{d['input_dtype']}, compute {d['compute_dtype']}, loss "
            f"{d['loss_dtype']}, matmul precision {d['matmul_precision']}")


def _cast_floating(tree: PyTree, dtype) -> PyTree:
  def cast(x):
    if isinstance(x, (jax.Array, np.ndarray, np.generic, float)) and (
        jnp.issubdtype(jnp.result_type(x), jnp.floating)):
      return jnp.asarray(x, dtype)
    return x
  return jax.tree.map(cast, tree)


_f64, _f32, _bf16, _f16 = jnp.float64, jnp.float32, jnp.bfloat16, jnp.float16

POLICIES: dict[str, Policy] = {p.name: p for p in (
    Policy('float64', _f64, _f64, _f64, _f64, 'highest'),
    Policy('float32', _f32, _f32, _f32, _f32, 'highest'),
    Policy('tf32', _f32, _f32, _f32, _f32, 'tensorfloat32'),
    Policy('bfloat16', _bf16, _bf16, _bf16, _bf16, 'default'),
    Policy('float16', _f16, _f16, _f16, _f16, 'default'),
    # Mixed: float32 master parameters and loss, half-precision compute.
    Policy('mixed_float16', _f32, _f16, _f16, _f32, 'default'),
    Policy('mixed_bfloat16', _f32, _bf16, _bf16, _f32, 'default'),
)}

# Short names people type on the command line.
_ALIASES = {'f64': 'float64', '64': 'float64', 'f32': 'float32',
            '32': 'float32', 'bf16': 'bfloat16', 'f16': 'float16',
            '16': 'float16', 'half': 'float16', 'mixed': 'mixed_float16',
            'mixed_f16': 'mixed_float16', 'mixed_bf16': 'mixed_bfloat16'}


def get_policy(name: str | Policy, *, check: bool = True) -> Policy:
  """The policy of this name (or the policy itself), checked to be runnable.

  Names: ``float64``, ``float32``, ``tf32``, ``bfloat16``, ``float16``,
  ``mixed_float16``, ``mixed_bfloat16``, and the aliases ``f64``/``64``,
  ``f32``/``32``, ``bf16``, ``f16``/``16``/``half``, ``mixed``.

  Args:
    name: a policy name or alias (case-insensitive), or a :class:`Policy`.
    check: also check that it can run here (see :meth:`Policy.check`); pass
      False to look a name up before enabling x64.

  Raises:
    ValueError: for an unknown name (the message lists the valid ones).
    RuntimeError: for a 64-bit policy while ``jax_enable_x64`` is off.
  """
  if isinstance(name, Policy):
    return name.check() if check else name
  key = _ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
  if key not in POLICIES:
    raise ValueError(
        f'unknown precision policy {name!r}; valid names: '
        f'{", ".join(POLICIES)} (aliases: {", ".join(sorted(_ALIASES))})')
  return POLICIES[key].check() if check else POLICIES[key]


def policies_for_program(names: Sequence[str | Policy]) -> list[Policy]:
  """The named policies, for a program that will run them all.

  Turns ``jax_enable_x64`` on when one of them is 64 bits wide (a global
  switch: call this at program start, before any JAX computation), then
  checks each policy. Policies with fewer bits keep their own dtypes
  explicitly, so they compute as before.

  Raises:
    ValueError: for an unknown name (the message lists the valid ones).
  """
  policies = [get_policy(n, check=False) for n in names]
  if any(p.needs_x64 for p in policies):
    jax.config.update('jax_enable_x64', True)
  return [p.check() for p in policies]
