"""TensorBoard scalars of the commands (``--tensorboard``).

The event files go to ``<run directory>/tensorboard/`` and are written by
`tensorboardX <https://github.com/lanpa/tensorboardX>`_, which writes
TensorBoard's event format without TensorFlow (flax's own
``flax.metrics.tensorboard`` and CLU's default writer need TensorFlow).
It is the optional extra ``jaxkink[tensorboard]``, with TensorBoard itself
to view them: ``tensorboard --logdir runs/``.

A resumed run appends a new event file; the steps it had written before
are not written again.
"""

from __future__ import annotations

import importlib.util
import os
import re
from typing import Any, Mapping

from absl import flags

from jaxkink import cli

__all__ = ('DIRECTORY', 'INSTALL_HINT', 'Writer', 'available', 'define_flag',
           'tag')

# The directory of the event files, inside the run directory.
DIRECTORY = 'tensorboard'
INSTALL_HINT = ("--tensorboard needs tensorboardX: pip install "
                "'jaxkink[tensorboard]'")


def available() -> bool:
  """Whether tensorboardX can be imported."""
  return importlib.util.find_spec('tensorboardX') is not None


def define_flag(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines ``--tensorboard``, refused at parse time without tensorboardX."""
  flags.DEFINE_bool('tensorboard', False, 'Also write TensorBoard scalars '
                    f'into <run directory>/{DIRECTORY}/ (needs the '
                    "'tensorboard' extra).", flag_values=flag_values)
  cli.check('tensorboard', lambda v: not v or available(), INSTALL_HINT,
            flag_values=flag_values)


def tag(name: str) -> str:
  """``name`` as a TensorBoard tag: ``'test_acc/seed0_s=1'`` ->
  ``'test_acc/seed0_s_1'`` (TensorBoard's tags hold ``[-/\\w.]`` only)."""
  return re.sub(r'[^-/\w.]', '_', name)


class Writer:
  """Scalars into ``<run_path>/tensorboard/``, flushed after each step.

  Raises:
    ImportError: tensorboardX is not installed (with :data:`INSTALL_HINT`).
  """

  def __init__(self, run_path: str):
    try:
      import tensorboardX  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(INSTALL_HINT) from e
    self.logdir = os.path.join(run_path, DIRECTORY)
    self._writer = tensorboardX.SummaryWriter(self.logdir)

  def scalars(self, step: int, values: Mapping[str, Any]) -> None:
    """Writes ``{tag: value}`` at ``step``; None values are left out. A
    tag's characters other than letters, digits, ``_-/.`` become ``_``
    (:func:`tag`)."""
    for name, value in values.items():
      if value is not None:
        self._writer.add_scalar(tag(name), float(value), global_step=step)
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()

  def __enter__(self) -> Writer:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()
