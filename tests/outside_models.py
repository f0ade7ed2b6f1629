"""Models written outside jaxkink, for tests/test_external_models.py.

``PlainCNN`` knows nothing of jaxkink (``nn.relu``, ``nn.max_pool``,
``jnp.maximum``); ``KinkCNN`` is the same network written with a ``Kinks``
argument. Both name their layers alike, so one key gives both the same
parameters. ``--model=outside_models:plain_cnn`` with ``tests/`` on
``PYTHONPATH``.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class PlainCNN(nn.Module):
  features: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(self.features, (3, 3), dtype=self.dtype,
                param_dtype=self.param_dtype)(x)
    x = nn.max_pool(nn.relu(x), (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    x = jnp.maximum(nn.Dense(16, dtype=self.dtype,
                             param_dtype=self.param_dtype)(x), 0.0)
    return nn.Dense(10, dtype=self.dtype, param_dtype=self.param_dtype)(x)


class KinkCNN(nn.Module):
  features: int = 4
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, kinks):
    x = nn.Conv(self.features, (3, 3), dtype=self.dtype,
                param_dtype=self.param_dtype)(x)
    x = kinks.max_pool(kinks.relu(x), (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    x = kinks.relu(nn.Dense(16, dtype=self.dtype,
                            param_dtype=self.param_dtype)(x))
    return nn.Dense(10, dtype=self.dtype, param_dtype=self.param_dtype)(x)


class NoDtype(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def plain_cnn(features: int | str = 4) -> PlainCNN:
  return PlainCNN(features=int(features))


def kink_cnn(features: int | str = 4) -> KinkCNN:
  return KinkCNN(features=int(features))


def no_dtype() -> NoDtype:
  return NoDtype()


def not_a_module():
  return lambda x: x
