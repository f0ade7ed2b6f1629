"""Progress of the commands: a bar on a terminal, log lines otherwise.

A :class:`Bar` draws a `tqdm <https://tqdm.github.io>`_ bar on stderr when
stderr is a terminal. When it is not (CI, ``nohup``, a pipe), the same
progress goes out as absl ``INFO`` lines, at most one every ``log_every``
seconds and always the last one, so a log file is not flooded with bar
redraws and still says where the run stands::

  I1202 12:00:00 progress.py:80] table1_f32: 1,280/4,690 pairs (27%),
      312 pairs/s, ETA 0m11s
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO, TypeVar

from absl import logging
import tqdm

__all__ = ('Bar', 'Reporting', 'clock')

_R = TypeVar('_R', bound='Reporting')


def clock(seconds: float) -> str:
  """``'1h02m03s'`` or ``'2m03s'``."""
  m, s = divmod(int(round(seconds)), 60)
  h, m = divmod(m, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


class Bar:
  """Progress over ``total`` units, started at ``initial`` (a resumed run).

  Args:
    total: the units of the whole job.
    desc: what is counted, shown first (e.g. the run's name).
    unit: the unit's name (``'pair'``, ``'epoch'``, ``'step'``).
    initial: units already done before this process started.
    stream: where the bar goes (default stderr); a bar is drawn when it is
      a terminal, log lines are written otherwise.
    log_every: the least seconds between two log lines.
  """

  def __init__(self, total: int, desc: str, unit: str, *, initial: int = 0,
               stream: TextIO | None = None, log_every: float = 30.0):
    self.total, self.desc, self.unit = total, desc, unit
    self.n = self.initial = initial
    self.postfix = ''
    self.log_every = log_every
    self._t0 = self._last_log = time.perf_counter()
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, 'isatty', None)
    self._bar: tqdm.tqdm | None = None
    if isatty is not None and isatty():
      self._bar = tqdm.tqdm(total=total, initial=initial, desc=desc,
                            unit=unit, file=stream, dynamic_ncols=True,
                            leave=True)

  @property
  def is_bar(self) -> bool:
    """Whether a tqdm bar is drawn (else log lines are written)."""
    return self._bar is not None

  def update(self, n: int = 1, postfix: str | None = None) -> None:
    """Advances by ``n`` units; ``postfix`` replaces the text after the
    counts (e.g. the latest test accuracy)."""
    self.set(self.n + n, postfix)

  def set(self, n: int, postfix: str | None = None) -> None:
    """Moves to ``n`` units done."""
    step, self.n = n - self.n, n
    if postfix is not None:
      self.postfix = postfix
    if self._bar is not None:
      if postfix is not None:
        self._bar.set_postfix_str(postfix, refresh=False)
      self._bar.update(step)
      return
    now = time.perf_counter()
    if n >= self.total or now - self._last_log >= self.log_every:
      self._last_log = now
      logging.info('%s', self.line(now))

  def line(self, now: float | None = None) -> str:
    """The progress as one line: counts, percent, rate, ETA, postfix."""
    now = time.perf_counter() if now is None else now
    rate = (self.n - self.initial) / max(now - self._t0, 1e-9)
    left = (self.total - self.n) / rate if rate > 0 else float('inf')
    eta = clock(left) if left != float('inf') else '?'
    pct = 100 * self.n / self.total if self.total else 100.0
    speed = (f'{rate:,.1f} {self.unit}s/s' if rate >= 1 or rate == 0 else
             f'{1 / rate:,.1f} s/{self.unit}')
    text = (f'{self.desc}: {self.n:,}/{self.total:,} {self.unit}s '
            f'({pct:.0f}%), {speed}, ETA {eta}')
    return f'{text}, {self.postfix}' if self.postfix else text

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()

  def __enter__(self) -> Bar:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


class Reporting:
  """Base of the commands' reporters: a :class:`Bar` made when the work is
  known (``bar``) and an optional metrics ``writer``; both are closed at
  the end of the ``with`` block."""

  def __init__(self, writer: Any = None):
    self.writer = writer
    self.bar: Bar | None = None

  def __enter__(self: _R) -> _R:
    return self

  def __exit__(self, *exc: Any) -> None:
    if self.bar is not None:
      self.bar.close()
    if self.writer is not None:
      self.writer.close()
