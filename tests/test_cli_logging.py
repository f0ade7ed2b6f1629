"""jaxkink.cli hides JAX's backend-probing line and nothing else."""

from __future__ import annotations

import logging

import pytest

from jaxkink import cli

PROBE = ("Unable to initialize backend 'tpu': INTERNAL: Failed to open "
         'libtpu.so: libtpu.so: cannot open shared object file')


def _record(level: int, message: str,
            name: str = 'jax._src.xla_bridge') -> logging.LogRecord:
  return logging.getLogger(name).makeRecord(name, level, 'xla_bridge.py',
                                            849, message, (), None)


@pytest.fixture
def levels():
  """Restores the root and 'jax' logger levels a test changes."""
  root, jax_logger = logging.getLogger(), logging.getLogger('jax')
  saved = root.level, jax_logger.level
  yield root, jax_logger
  root.setLevel(saved[0])
  jax_logger.setLevel(saved[1])


def test_only_the_probe_line_is_dropped(levels):
  root, jax_logger = levels
  root.setLevel(logging.INFO)  # as absl's app.run leaves it
  jax_logger.setLevel(logging.NOTSET)
  logger = logging.getLogger('jax._src.xla_bridge')
  cli.quiet_backend_probing()  # again: still one filter
  ours = [f for f in logger.filters
          if isinstance(f, cli._BackendProbeFilter)]  # pylint: disable=protected-access
  assert len(ours) == 1
  assert not logger.filter(_record(logging.INFO, PROBE))
  assert logger.filter(_record(logging.WARNING, PROBE))
  assert logger.filter(_record(logging.INFO, "Initializing backend 'cpu'"))
  assert logger.filter(_record(
      logging.WARNING, 'An NVIDIA GPU may be present on this machine, but a '
      'CUDA-enabled jaxlib is not installed.'))


@pytest.mark.parametrize('root_level, jax_level', [
    (logging.DEBUG, logging.NOTSET),  # absl --verbosity=1
    (logging.INFO, logging.INFO),     # JAX_LOGGING_LEVEL=INFO
    (logging.WARNING, logging.DEBUG),  # JAX_LOGGING_LEVEL=DEBUG
])
def test_asking_for_the_logs_shows_the_probe_line(levels, root_level,
                                                  jax_level):
  root, jax_logger = levels
  root.setLevel(root_level)
  jax_logger.setLevel(jax_level)
  assert logging.getLogger('jax._src.xla_bridge').filter(
      _record(logging.INFO, PROBE))
