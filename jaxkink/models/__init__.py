"""The model zoo: Flax Linen networks whose kinks are runtime values.

Every ReLU, ReLU6, LeakyReLU and MaxPool goes through the ``Kinks`` value
given at call time, ``model.apply(variables, x, kinks, train)``, so one
compiled function serves every kink value and ``jax.vmap`` sweeps kink
values and weight samples::

  model = jaxkink.models.get('vgg11', batch_norm=True)
  variables = jax.vmap(model.init, in_axes=(0, None, None))(
      jax.random.split(key, 8), x, jaxkink.Kinks())
  logits, updates = jax.vmap(
      lambda v: model.apply(v, x, kinks, train=True, mutable=['batch_stats'])
  )(variables)

Batch-norm statistics live in the ``'batch_stats'`` collection; dropout uses
the ``'dropout'`` rng. Models take ``dtype`` (compute), ``param_dtype`` and
``precision``; :func:`with_policy` (or ``get(..., policy=...)``) sets them
from a precision policy. ``init_scheme`` selects the initialiser (``INITS``;
``'pytorch'``, the papers' Monte Carlo draw, by default).
"""

from jaxkink.models.densenet import DenseNet
from jaxkink.models.external import External
from jaxkink.models.initializers import INITS
from jaxkink.models.layers import ACTIVATIONS
from jaxkink.models.lenet import LeNet5
from jaxkink.models.mlp import MLP
from jaxkink.models.mobilenet import MobileNetV3Small
from jaxkink.models.registry import get
from jaxkink.models.registry import is_convolutional
from jaxkink.models.registry import names
from jaxkink.models.registry import options
from jaxkink.models.registry import with_policy
from jaxkink.models.resnet import ResNet
from jaxkink.models.resnet import ResNet18
from jaxkink.models.resnet import ResNet34
from jaxkink.models.resnet import ResNet50
from jaxkink.models.vgg import VGG

__all__ = (
    'ACTIVATIONS',
    'DenseNet',
    'External',
    'INITS',
    'LeNet5',
    'MLP',
    'MobileNetV3Small',
    'ResNet',
    'ResNet18',
    'ResNet34',
    'ResNet50',
    'VGG',
    'get',
    'is_convolutional',
    'names',
    'options',
    'with_policy',
)
