"""Summaries of Monte Carlo zone records, with confidence intervals.

From the per-(theta, minibatch) records of :mod:`jaxkink.montecarlo`:

* the proportion of thetas in the bifurcation zone S01 (some minibatch's
  gradients differ), with Hoeffding's margin ``sqrt(ln(2/a) / (2M))``;
* the proportion of impacted (theta, minibatch) pairs, with McDiarmid's
  margin ``sqrt(0.5 (1/M + 1/R) ln(2/a))`` (the pairs of one theta are not
  independent; Boustany, TMLR, Appendix A.6.3);
* the quartiles of the relative L2 difference over impacted pairs;
* with a threshold ``tau`` on the L1 difference ``D`` (TMLR Criteria 1), the
  split of the impacted pairs into minor (``0 < D <= tau``, compensation
  errors) and major (``D > tau``, bifurcations), and the zone ``S(tau)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def hoeffding_margin(n: int, alpha: float = 0.05) -> float:
  """Half-width of Hoeffding's ``1 - alpha`` interval for a mean of n draws
  in [0, 1]."""
  if n < 1:
    raise ValueError(f'need at least one draw, got n={n}')
  return math.sqrt(math.log(2 / alpha) / (2 * n))


def mcdiarmid_margin(m: int, r: int, alpha: float = 0.05) -> float:
  """Half-width of McDiarmid's ``1 - alpha`` interval for the proportion of
  impacted pairs over ``m`` weight samples and ``r`` minibatches."""
  if m < 1 or r < 1:
    raise ValueError(f'need m, r >= 1, got m={m}, r={r}')
  return math.sqrt(0.5 * (1 / m + 1 / r) * math.log(2 / alpha))


def _interval(p: float, margin: float) -> dict[str, float]:
  return {'p': p, 'margin': margin, 'low': max(0.0, p - margin),
          'high': min(1.0, p + margin)}


def summarize(records: Any, *, tau: float = 0.0, alpha: float = 0.05,
              first_layer_only: bool = False) -> dict[str, Any]:
  """The zone estimates of a run's records.

  Args:
    records: a :class:`~jaxkink.montecarlo.PairRecord` with leading axes
      ``(M, R)`` (numpy arrays).
    tau: threshold on the L1 difference ``D``; a pair is impacted when it
      differs and ``D > tau`` (``tau = 0``: any exact difference).
    alpha: risk level of the intervals.
    first_layer_only: decide "differs" on the first layer's kernel gradient
      only (the reference notebook's test).

  Returns:
    A JSON-ready dict.
  """
  differs = np.asarray(records.differs_first if first_layer_only
                       else records.differs, bool)
  l1 = np.asarray(records.l1, np.float64)
  m, r = differs.shape
  impacted = differs & (l1 > tau) if tau > 0 else differs
  in_zone = impacted.any(axis=1)
  rel = np.asarray(records.rel_l2, np.float64)[impacted]
  hits = np.asarray(records.hits)
  flagged = hits.sum(axis=-1) > 0
  first = np.where(in_zone, impacted.argmax(axis=1), -1)
  minor = differs & (l1 <= tau)
  summary = {
      'samples': int(m),
      'minibatches': int(r),
      'tau': tau,
      'alpha': alpha,
      'first_layer_only': first_layer_only,
      'theta_in_zone': {'count': int(in_zone.sum()),
                        **_interval(float(in_zone.mean()),
                                    hoeffding_margin(m, alpha))},
      'impacted_pairs': {'count': int(impacted.sum()),
                         **_interval(float(impacted.mean()),
                                     mcdiarmid_margin(m, r, alpha))},
      'rel_l2_quartiles': (np.quantile(rel, [0.25, 0.5, 0.75]).tolist()
                           if rel.size else None),
      'first_impacted_minibatch': {
          'median': (float(np.median(first[in_zone])) if in_zone.any()
                     else None)},
      'pairs_with_kink_hits': int(flagged.sum()),
      'kink_hits_per_operation': hits.reshape(m * r, -1).sum(0).tolist(),
      'min_distance_per_operation': np.asarray(
          records.min_distance, np.float64).reshape(m * r, -1).min(0).tolist(),
      'pairs_computed': int(np.asarray(records.computed).sum()),
      'nonfinite_pairs': int((~np.asarray(records.finite, bool)).sum()),
      # The exactness claim: no pair without a kink hit differs.
      'screen_violations': int((np.asarray(records.differs, bool)
                                & ~flagged).sum()),
      'minor_pairs': int(minor.sum()),
      'major_pairs': int((differs & (l1 > tau)).sum()),
  }
  return summary


def format_summary(name: str, s: dict[str, Any]) -> str:
  """One table row, e.g. for a markdown summary."""
  z, p = s['theta_in_zone'], s['impacted_pairs']
  q = s['rel_l2_quartiles']
  quart = ('-' if q is None else ' / '.join(f'{v:.2g}' for v in q))
  return (f'| {name} | {s["samples"]} | {s["minibatches"]} | '
          f'{100 * z["p"]:.1f}% [{100 * z["low"]:.1f}, {100 * z["high"]:.1f}]'
          f' | {100 * p["p"]:.2f}% [{100 * p["low"]:.2f}, '
          f'{100 * p["high"]:.2f}] | {quart} | {s["screen_violations"]} |')


TABLE_HEADER = ('| setting | M | R | theta in S (95% Hoeffding) | impacted '
                'pairs (95% McDiarmid) | rel. L2 quartiles | screen '
                'violations |\n|---|---|---|---|---|---|---|')
