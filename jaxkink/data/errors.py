"""The one exception the data layer raises for bad or missing data."""

from __future__ import annotations


class DataError(ValueError):
  """A data file is missing, malformed or refused.

  The message names the file (or the directories searched) and what was
  expected, so a user can fix the problem without reading a traceback from
  inside numpy, gzip, tarfile or pickle. The original exception, when there is
  one, is chained as ``__cause__``.
  """
