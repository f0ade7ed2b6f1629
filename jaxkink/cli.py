"""Flag checks shared by the experiment scripts and benchmarks.

Every bad flag value is refused while absl parses the command line (flag
validators), so the user sees one line naming the flag and what is allowed,
the exit status is non-zero and no traceback is printed. Errors that can only
be found later (a batch size larger than the data set, a run directory
holding another run) are turned into the same kind of one-line message by
:func:`main`.

Importing this module also hides JAX's line about a backend it probed and
could not start (``Unable to initialize backend 'tpu': ... libtpu.so``, on
every machine without a TPU): see :func:`quiet_backend_probing`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
from typing import Any, Callable, Iterable, Sequence

from absl import app
from absl import flags

from jaxkink import precision
from jaxkink.data import datasets as data_sources
from jaxkink.data.errors import DataError
from jaxkink.rundir import RefusedError

# Exit status of a refused run directory (settings differ, or another
# process holds it): 2, as for a usage error of a command-line tool.
EXIT_REFUSED = 2

__all__ = ('DEVICE_COUNT_XLA_FLAG', 'EXIT_REFUSED', 'RefusedError',
           'UsageValueError', 'check', 'check_choice', 'check_output_dir',
           'check_output_file', 'check_policies', 'check_positive',
           'check_together', 'define_data_flags', 'fail', 'finite_float',
           'finite_floats', 'host_cores', 'main', 'positive_ints',
           'quiet_backend_probing', 'run', 'use_host_devices')

# The logger and the start of the INFO message with which JAX reports a
# backend that failed to start and may fail quietly (jax._src.xla_bridge,
# ``backends()``). A backend that must not fail raises instead.
_PROBE_LOGGER = 'jax._src.xla_bridge'
_PROBE_MESSAGE = 'Unable to initialize backend'


class _BackendProbeFilter(logging.Filter):
  """Drops JAX's below-WARNING "Unable to initialize backend" records,
  unless JAX's own logging level (``JAX_LOGGING_LEVEL``) or absl's
  ``--verbosity=1`` (DEBUG) asks for them."""

  def filter(self, record: logging.LogRecord) -> bool:
    if (record.levelno >= logging.WARNING
        or not record.getMessage().startswith(_PROBE_MESSAGE)):
      return True
    jax_level = logging.getLogger('jax').level  # NOTSET unless JAX's set
    return (bool(jax_level) and jax_level <= record.levelno) or (
        logging.getLogger().getEffectiveLevel() <= logging.DEBUG)


def quiet_backend_probing() -> None:
  """Hides JAX's INFO line about each backend it probed and could not
  start (``Unable to initialize backend 'tpu': ... libtpu.so``).

  absl's ``app.run`` sets Python logging to INFO, so every script printed
  it first. Only that message of that logger is dropped: JAX's warnings
  (e.g. a GPU that its jaxlib cannot use) still show, ``JAX_PLATFORMS`` is
  left alone, and ``JAX_LOGGING_LEVEL=INFO`` or ``--verbosity=1`` shows the
  line again. Called when this module is imported; calling it again does
  nothing.
  """
  logger = logging.getLogger(_PROBE_LOGGER)
  if not any(isinstance(f, _BackendProbeFilter) for f in logger.filters):
    logger.addFilter(_BackendProbeFilter())


quiet_backend_probing()


def finite_float(text: Any, what: str) -> float:
  """``float(text)``, refusing NaN, infinities and non-numbers.

  Raises:
    ValueError: naming ``what`` and the value.
  """
  try:
    value = float(text)
  except (TypeError, ValueError):
    raise ValueError(f'{what}: {text!r} is not a number') from None
  if not math.isfinite(value):
    raise ValueError(f'{what}: {text!r} is not a finite number')
  return value


def finite_floats(values: Iterable[Any], what: str, *,
                  count: int | None = None) -> tuple[float, ...]:
  """Finite floats from a list flag; ``count`` values exactly, if given."""
  out = tuple(finite_float(v, what) for v in values)
  if not out:
    raise ValueError(f'{what} is empty')
  if count is not None and len(out) != count:
    raise ValueError(f'{what} takes exactly {count} values, got {len(out)}')
  return out


def positive_ints(values: Iterable[Any], what: str, *,
                  count: int | None = None) -> tuple[int, ...]:
  """Integers >= 1 from a list flag; ``count`` values exactly, if given.

  Raises:
    ValueError: naming ``what`` and the bad value.
  """
  out = []
  for v in values:
    try:
      n = int(str(v).strip())
    except ValueError:
      raise ValueError(f'{what}: {v!r} is not an integer') from None
    if n < 1:
      raise ValueError(f'{what}: {v!r} must be >= 1')
    out.append(n)
  if not out:
    raise ValueError(f'{what} is empty')
  if count is not None and len(out) != count:
    raise ValueError(f'{what} takes exactly {count} values, got {len(out)}')
  return tuple(out)

def check(flag: str, predicate: Callable[[Any], Any], message: str,
          flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Registers a parse-time check: ``predicate(value)`` must be true
  (None, the "not given" value of optional flags, always passes).

  ``predicate`` may also raise ValueError; its message is then shown.
  """
  def validate(value):
    if value is None:
      return True
    try:
      ok = predicate(value)
    except ValueError as e:
      raise flags.ValidationError(str(e)) from None
    if not ok:
      raise flags.ValidationError(message)
    return True
  flags.register_validator(flag, validate, message=message,
                           flag_values=flag_values)


def check_positive(names: Sequence[str],
                   flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Parse-time checks that integer flags ``names`` are >= 1."""
  for name in names:
    check(name, lambda v: int(v) >= 1, f'--{name} must be >= 1',
          flag_values=flag_values)


def check_choice(name: str, choices: Iterable[str],
                 flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Parse-time check that a string (or every item of a list) flag is one
  of ``choices``."""
  choices = tuple(choices)
  def ok(value):
    items = value if isinstance(value, (list, tuple)) else [value]
    bad = [v for v in items if v not in choices]
    if bad:
      raise ValueError(f'--{name}: unknown {", ".join(map(repr, bad))}; '
                       f'valid: {", ".join(choices)}')
    return True
  check(name, ok, f'--{name} must be one of {", ".join(choices)}',
        flag_values=flag_values)


def check_together(names: Sequence[str],
                   predicate: Callable[[dict[str, Any]], Any], message: str,
                   flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Registers a parse-time check of several flags at once:
  ``predicate({name: value})`` must be true (or raise ValueError, whose
  message is then shown)."""
  def validate(values):
    try:
      ok = predicate(values)
    except ValueError as e:
      raise flags.ValidationError(str(e)) from None
    if not ok:
      raise flags.ValidationError(message)
    return True
  flags.register_multi_flags_validator(list(names), validate, message=message,
                                       flag_values=flag_values)


def define_data_flags(flag_values: flags.FlagValues = flags.FLAGS
                      ) -> tuple[flags.FlagHolder[str], flags.FlagHolder[str]]:
  """Defines ``--data_source`` and ``--data_order``, the two arguments of
  :func:`jaxkink.data.load` that every experiment script passes on, and
  records only when not at their defaults (:func:`jaxkink.data.requested`).
  Returns their holders."""
  source = flags.DEFINE_enum(
      'data_source', 'auto', list(data_sources.SOURCES),
      'Where the data comes from (jaxkink.data.load): the native files, a '
      "prepared tensorflow-datasets directory (tfds), the bundled MNIST "
      "sample; 'auto': native when a data directory is configured, else the "
      'sample. Recorded in the settings when not auto.',
      flag_values=flag_values)
  order = flags.DEFINE_enum(
      'data_order', 'stored', list(data_sources.ORDERS),
      "'native': the order of the dataset's native files (for tfds, which "
      'stores its own shuffled order: the same records as the native '
      "source); 'stored': the source's order. Recorded in the settings when "
      'native.', flag_values=flag_values)
  return source, order


def check_policies(name: str,
                   flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Parse-time check that a string (or every item of a non-empty list) flag
  names a precision policy (``jaxkink.POLICIES`` or an alias)."""
  def ok(value):
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
      raise ValueError(f'--{name} is empty; valid: '
                       f'{", ".join(precision.POLICIES)}')
    for item in items:
      try:
        precision.get_policy(item, check=False)
      except ValueError as e:
        raise ValueError(f'--{name}: {e}') from None
    return True
  check(name, ok, f'--{name} must name precision policies: '
        f'{", ".join(precision.POLICIES)}', flag_values=flag_values)


def _writable(path: str, what: str, directory: bool) -> bool:
  """Raises ValueError unless ``path`` can be created (or written) as a file
  (``directory=False``) or a directory."""
  if not str(path).strip():
    raise ValueError(f'{what} is empty')
  if os.path.exists(path) and os.path.isdir(path) != directory:
    want, got = ('directory', 'file') if directory else ('file', 'directory')
    raise ValueError(f'{what}={path!r} is a {got}; expected a {want}')
  parent = os.path.abspath(path if directory else os.path.dirname(
      os.path.abspath(path)))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ValueError(f'{what}={path!r}: {parent!r} is not a directory')
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ValueError(f'{what}={path!r}: {parent!r} is not writable')
  return True


def check_output_file(name: str,
                      flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Parse-time check that a path flag names a file this run can write (not
  empty, not a directory, under a writable directory)."""
  check(name, lambda v: _writable(v, f'--{name}', directory=False),
        f'--{name} must be a writable file path', flag_values=flag_values)


def check_output_dir(name: str,
                     flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Parse-time check that a path flag names a directory this run can
  create or write into (not empty, not a file)."""
  check(name, lambda v: _writable(v, f'--{name}', directory=True),
        f'--{name} must be a writable directory path', flag_values=flag_values)

class UsageValueError(ValueError):
  """A setting that can only be checked after parsing is wrong (e.g. a
  batch size larger than the data set)."""


def fail(message: str, status: int = 1) -> None:
  """Ends the program with ``error: message`` on stderr (no traceback)."""
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(status)


def main(fn: Callable[[Sequence[str]], Any]) -> Callable[[Sequence[str]],
                                                         Any]:
  """Wraps an absl ``main``: bad input found after parsing ends the program
  with one line on stderr instead of a traceback or absl's usage page.

  * :class:`RefusedError` (a run directory that holds another run, or is
    held by another process): exit status 2 (``EXIT_REFUSED``);
  * ``app.UsageError``, :class:`UsageValueError` and
    :class:`~jaxkink.data.DataError` (missing or malformed data): exit
    status 1.

  Other exceptions are bugs and keep their traceback.
  """
  @functools.wraps(fn)
  def wrapped(argv: Sequence[str]) -> Any:
    try:
      return fn(argv)
    except RefusedError as e:
      fail(f'refused: {e}', EXIT_REFUSED)
    except (app.UsageError, UsageValueError, DataError) as e:
      fail(str(e))
  return wrapped


# The XLA flag with which a user chooses the CPU device count
# (:func:`use_host_devices` then leaves it alone).
DEVICE_COUNT_XLA_FLAG = 'xla_force_host_platform_device_count'


def host_cores() -> int:
  """The cores this process may run on (``taskset`` and cgroup cpusets
  included), else ``os.cpu_count()``."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


def use_host_devices(count: int | None = None) -> int | None:
  """Splits the CPU into ``count`` JAX devices (default: one per core of
  :func:`host_cores`), unless the user chose a count.

  On CPUs the volume engine gives each device its own chunk of thetas
  (the same program shapes, so the same bits), and on the 2-core machine
  of BUILD_NOTES.md ("2026-12-02 (d)") two host devices computed 1.4-1.5x
  the pairs per second of one device with XLA's intra-op threads. The count
  only shapes JAX's CPU client: a GPU or TPU backend is not touched.

  Must run before JAX initialises a backend (before the first array is
  made); the modules of jaxkink create none when imported. Left alone when
  ``XLA_FLAGS`` names ``--xla_force_host_platform_device_count``, when
  ``jax_num_cpu_devices`` is set (``JAX_NUM_CPU_DEVICES`` or in code), and,
  with a warning, when a backend is already running.

  Returns:
    The count set, or None where it was left alone.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if (DEVICE_COUNT_XLA_FLAG in os.environ.get('XLA_FLAGS', '')
      or jax.config.values['jax_num_cpu_devices'] >= 0):
    return None
  count = host_cores() if count is None else count
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError:  # a backend is initialised: its devices stay
    logging.getLogger(__name__).warning(
        'JAX is already running; its CPU device count stays as it is (set '
        'XLA_FLAGS=--%s=N before the start)', DEVICE_COUNT_XLA_FLAG)
    return None
  return count


def run(fn: Callable[[Sequence[str]], Any], doc: str | None) -> None:
  """Runs an absl ``main`` as a command, with ``doc`` as its ``--help`` text.

  absl prints the docstring of the ``__main__`` module above the flags; a
  console command's ``__main__`` is the launcher pip writes, which has none,
  so the experiment module's docstring is given to it.
  """
  main_module = sys.modules.get('__main__')
  if main_module is not None and not main_module.__doc__:
    main_module.__doc__ = doc
  app.run(fn)
