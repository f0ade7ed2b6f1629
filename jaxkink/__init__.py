"""jaxkink: the derivative autodiff picks at a kink, as a runtime value.

Kinked primitives (ReLU, ReLU6, LeakyReLU, MaxPool) whose derivative at the
kink is an ordinary traced array, a ``Kinks`` pytree that carries those values
through a model, kink-hit counters, and precision policies; the subpackages
``models`` (the papers' networks), ``data`` (datasets from native files) and
``lockstep`` (copies of a network trained side by side, vmapped over kinks),
``montecarlo`` (the Monte Carlo volume engine), ``zones`` (its summaries
with confidence intervals), ``rundir`` (run directories that prove their
settings) and ``training`` (grids of seeds x kink values
trained as one vmapped program); ``kinkify`` and ``audit`` take programs
written without jaxkink (plain ``jax.nn`` / flax / ``jnp``).

Only the names below are public API; modules whose names start with an
underscore are not.
"""

from jaxkink import data
from jaxkink import lockstep
from jaxkink import models
from jaxkink import montecarlo
from jaxkink import rundir
from jaxkink import training
from jaxkink import weights
from jaxkink import zones
from jaxkink.activations import leaky_relu
from jaxkink.activations import random_kink_relu
from jaxkink.activations import relu
from jaxkink.activations import relu6
from jaxkink.audit import AuditRecord
from jaxkink.audit import AuditReport
from jaxkink.audit import audit
from jaxkink.hits import KinkHits
from jaxkink.hits import TapedKinks
from jaxkink.hits import kink_distance
from jaxkink.hits import pool_hits
from jaxkink.hits import relu6_hits
from jaxkink.hits import relu_hits
from jaxkink.kinkify import kinkify
from jaxkink.kinks import Kinks
from jaxkink.pooling import max_pool
from jaxkink.pooling import pool_output_shape
from jaxkink.precision import POLICIES
from jaxkink.precision import Policy
from jaxkink.precision import get_policy
from jaxkink.precision import policies_for_program

__version__ = '0.1.0'

__all__ = (
    'AuditRecord',
    'AuditReport',
    'KinkHits',
    'Kinks',
    'POLICIES',
    'Policy',
    'TapedKinks',
    'audit',
    'data',
    'get_policy',
    'kink_distance',
    'kinkify',
    'leaky_relu',
    'lockstep',
    'max_pool',
    'models',
    'montecarlo',
    'policies_for_program',
    'pool_hits',
    'pool_output_shape',
    'random_kink_relu',
    'rundir',
    'relu',
    'relu6',
    'relu6_hits',
    'relu_hits',
    'training',
    'weights',
    'zones',
)
