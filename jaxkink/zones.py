"""Summaries of Monte Carlo zone records, with confidence intervals.

From the per-(theta, minibatch) records of :mod:`jaxkink.montecarlo`:

* the proportion of thetas in the bifurcation zone S01 (some minibatch's
  gradients differ), with Hoeffding's margin ``sqrt(ln(2/a) / (2M))``;
* the proportion of impacted (theta, minibatch) pairs, with McDiarmid's
  margin ``sqrt(0.5 (1/M + 1/R) ln(2/a))`` (the pairs of one theta are not
  independent; Boustany, TMLR, Appendix A.6.3);
* the quartiles of the relative L2 difference over impacted pairs, of the
  full gradient and of the first layer's kernel gradient;
* Table 1's three lines as the reference repository's R script computes
  them (:func:`mkplot_lines`);
* with a threshold ``tau`` on the L1 difference ``D`` (TMLR Criteria 1), the
  split of the impacted pairs into minor (``0 < D <= tau``, compensation
  errors) and major (``D > tau``, bifurcations), and the zone ``S(tau)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = (
    'METRICS',
    'MKPLOT_HEADER',
    'TABLE_HEADER',
    'decade_histogram',
    'first_difference_curve',
    'format_interval',
    'format_mkplot',
    'format_quartiles',
    'format_summary',
    'hoeffding_margin',
    'mcdiarmid_margin',
    'mkplot_lines',
    'percent',
    'pow10',
    'r_summary',
    'summarize',
    'tau_table',
    'thresholds',
    'variation_split',
)


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


def _quartiles(values: np.ndarray) -> list[float] | None:
  return (np.quantile(values, [0.25, 0.5, 0.75]).tolist() if values.size
          else None)


def r_summary(values: Any) -> dict[str, float] | None:
  """R's ``summary()`` of a numeric vector: min, quartiles (R's default
  quantile type 7, numpy's default ``'linear'``), mean and max; None when
  empty."""
  v = np.asarray(values, np.float64).ravel()
  if not v.size:
    return None
  q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75]).tolist()
  return {'min': float(v.min()), 'q1': q1, 'median': med,
          'mean': float(v.mean()), 'q3': q3, 'max': float(v.max())}


def mkplot_lines(records: Any) -> dict[str, Any]:
  """Table 1's lines as ``deel-ai/relu-prime``'s
  ``paper_results/section_3/mkPlot.R`` computes them from the notebook's
  ``norm_diff_estimation_MNIST.csv`` (one row per (theta, minibatch)).

  The script's "differs" is ``diff_L1 > 0`` on the first layer's weight
  gradient (lines 1 and 2) and ``same == "False"``, i.e. not
  ``torch.equal`` on that gradient (line 3); both are ``differs_first``
  here (they part only on NaNs). Its ``M`` is ``max(run_id + 1)``.

  Args:
    records: a :class:`~jaxkink.montecarlo.PairRecord`, leading axes
      ``(M, R)``.

  Returns:
    ``run_affected_pct`` (line 1: the percentage of thetas with some
    impacted minibatch), ``minibatch_affected_pct`` (the percentage of
    impacted pairs), ``minibatch_affected_pct_printed`` (line 2 as the
    script prints it: that percentage divided by ``M`` once more) and
    ``relative_difference`` (line 3: :func:`r_summary` of ``rel_l2_first``
    over the impacted pairs).
  """
  differs = np.asarray(records.differs_first, bool)
  m = differs.shape[0]
  # nAffect <- nAffect + (sum(dataTemp$diff_L1>0)>0) * 100, per run_id.
  run_pct = 100.0 * float(differs.any(axis=1).mean())
  # nAffect <- sum(toPlot$diff_L1>0) / nrow(toPlot) * 100, printed / M.
  pair_pct = 100.0 * float(differs.mean())
  rel = np.asarray(records.rel_l2_first, np.float64)[differs]
  return {'samples': int(m), 'run_affected_pct': run_pct,
          'minibatch_affected_pct': pair_pct,
          'minibatch_affected_pct_printed': pair_pct / m,
          'relative_difference': r_summary(rel)}


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
  rel_first = np.asarray(records.rel_l2_first, np.float64)[impacted]
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
      'rel_l2_quartiles': _quartiles(rel),
      'rel_l2_first_quartiles': _quartiles(rel_first),
      'mkplot': mkplot_lines(records),
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
      # TMLR: Figure 1's split at tau, Table 4's thresholds.
      'variation_split': variation_split(records, tau, alpha),
      'thresholds': thresholds(records),
  }
  return summary


def percent(v: float) -> str:
  """A proportion as a percentage with 3 significant digits: ``0.288`` ->
  ``'28.8'``, ``2e-6`` -> ``'0.0002'``."""
  return f'{100 * v:.3g}'


def format_interval(iv: dict[str, float]) -> str:
  """``p [low, high]`` in percent, the bounds clipped to [0, 100%]."""
  low, high = max(0.0, iv['low']), min(1.0, iv['high'])
  return f'{percent(iv["p"])}% [{percent(low)}, {percent(high)}]'


def format_quartiles(q: Any) -> str:
  """``Q1 / median / Q3`` with 3 significant digits, ``-`` for None."""
  return '-' if q is None else ' / '.join(f'{v:.3g}' for v in q)


def format_summary(name: str, s: dict[str, Any]) -> str:
  """One row of :data:`TABLE_HEADER`'s table, e.g. for a markdown summary."""
  return (f'| {name} | {s["samples"]} | {s["minibatches"]} | '
          f'{format_interval(s["theta_in_zone"])} | '
          f'{format_interval(s["impacted_pairs"])} | '
          f'{format_quartiles(s["rel_l2_quartiles"])} | '
          f'{format_quartiles(s.get("rel_l2_first_quartiles"))} | '
          f'{s["screen_violations"]} |')


TABLE_HEADER = ('| setting | M | R | theta in S (95% Hoeffding) | impacted '
                'pairs (95% McDiarmid) | rel. L2, full gradient (Q1 / median '
                '/ Q3) | rel. L2, first-layer kernel (Q1 / median / Q3) | '
                'screen violations |\n|---|---|---|---|---|---|---|---|')

# One line per column of TABLE_HEADER: what it is.
METRICS = (
    ('theta in S', 'the proportion of the M weight samples theta for which '
     'some minibatch gives different gradients under the two kink values '
     '(S01 of the paper); "differs" is exact (`!=`) on the full gradient, or '
     "on the first layer's kernel gradient for runs with first_layer_only; "
     "95% Hoeffding interval sqrt(ln(2/a) / (2M)), clipped to [0, 100%]."),
    ('impacted pairs', 'the proportion of the M x R (theta, minibatch) pairs '
     'whose gradients differ (same test); 95% McDiarmid interval '
     'sqrt(0.5 (1/M + 1/R) ln(2/a)), clipped to [0, 100%].'),
    ('rel. L2, full gradient', '||g1 - g0||_2 / ||g0||_2 over all parameters '
     '(g0: the first kink value, e.g. ReLU\'(0) = 0), quartiles over the '
     'impacted pairs.'),
    ('rel. L2, first-layer kernel', 'the same ratio over the first layer\'s '
     'weight (kernel) gradient only, no bias: the reference notebook\'s '
     'diff_L2 / net1_L2; quartiles over the impacted pairs.'),
    ('screen violations', 'pairs with no kink hit in the forward pass whose '
     'gradients differ (0: the screen that skips their backward passes was '
     'exact).'),
)


def format_mkplot(name: str, s: dict[str, Any]) -> str:
  """One row of :data:`MKPLOT_HEADER`'s table: :func:`mkplot_lines` of a
  summary, as the R script prints them."""
  k = s['mkplot']
  rel = k['relative_difference']
  rel = ('-' if rel is None else ' / '.join(
      f'{rel[f]:.3g}' for f in ('min', 'q1', 'median', 'mean', 'q3', 'max')))
  return (f'| {name} | {k["samples"]} | {k["run_affected_pct"]:.3g} | '
          f'{k["minibatch_affected_pct_printed"]:.3g} '
          f'({k["minibatch_affected_pct"]:.3g} before / M) | {rel} |')


MKPLOT_HEADER = ('| setting | M | line 1: % run affected | line 2: % '
                 'minibatch affected, as printed | line 3: summary(diff_L2 / '
                 'net1_L2): min / Q1 / median / mean / Q3 / max |\n'
                 '|---|---|---|---|---|')


# --- The TMLR MaxPool paper's quantities (Boustany, TMLR; BUILD_NOTES.md,
# issue 13 point 4). ``D`` is the records' ``l1``, ``||g1 - g0||_1`` over the
# full parameter gradient (Definition 7; ``ryanboustany/MaxPool-numerical``
# ``notebooks/threshold_maxpool.ipynb`` ``compute_norms``).


def decade_histogram(d: Any, low: int, high: int) -> dict[str, Any]:
  """The share of pairs per decade of ``D``, as the authors bin it.

  ``threshold_maxpool.ipynb`` ``plot_histogram``: ``np.histogram`` with the
  edges ``[0, 10^low, 10^(low+1), ..., 10^high]``, percentages of the
  binned values, then the first bin ``[0, 10^low)`` replaced by the exact
  zeros (as a percentage of all values). Here: the share of exact zeros,
  of ``0 < D < 10^low`` (the authors drop it), of each decade
  ``[10^k, 10^(k+1))`` (the last one closed, as numpy's), and of
  ``D > 10^high`` (outside the authors' edges), all over every pair.

  Args:
    d: the ``D`` values, any shape.
    low, high: the decades' exponents (the authors use -9, -1 for 32 bits).

  Returns:
    ``{'n', 'zero', 'below', 'decades': [(k, share), ...], 'above'}``.
  """
  v = np.asarray(d, np.float64).ravel()
  n = v.size
  if not n:
    raise ValueError('no D values')
  edges = 10.0 ** np.arange(low, high + 1)
  counts, _ = np.histogram(v[v > 0], bins=edges)
  return {'n': int(n), 'zero': float(np.mean(v == 0)),
          'below': float(np.mean((v > 0) & (v < edges[0]))),
          'decades': [(int(k), float(c / n))
                      for k, c in zip(range(low, high), counts)],
          'above': float(np.mean(v > edges[-1]))}


def variation_split(records: Any, tau: float,
                    alpha: float = 0.05) -> dict[str, Any]:
  """TMLR Figure 1's split of the pairs by their backprop variation ``D``.

  Over all ``M x R`` (theta, minibatch) pairs: no variation (the gradients
  are bit-identical), *minor* (they differ and ``D <= tau``: compensation
  errors near machine precision) and *major* (``D > tau``: bifurcations).
  The paper (Section 3.1) reports 98.78% minor and 1.22% major for LeNet-5
  on MNIST in float32; its text puts the minor ones between 1e-8 and 1e-7
  and the major ones around 1e-3, so any ``tau`` in the gap splits alike.

  Each share has two margins: McDiarmid's (the pairs of one theta are not
  independent; what the engine reports) and Hoeffding's with ``n = M R``
  (the paper's Appendix A.6.3 formula, which treats the pairs as i.i.d.).

  Args:
    records: a :class:`~jaxkink.montecarlo.PairRecord`, leading ``(M, R)``.
    tau: the threshold on ``D``.
    alpha: risk level.
  """
  differs = np.asarray(records.differs, bool)
  l1 = np.asarray(records.l1, np.float64)
  m, r = differs.shape
  parts = {'none': ~differs, 'minor': differs & (l1 <= tau),
           'major': differs & (l1 > tau)}
  mcd = mcdiarmid_margin(m, r, alpha)
  hoe = hoeffding_margin(m * r, alpha)
  out: dict[str, Any] = {'tau': tau, 'pairs': int(m * r)}
  for name, mask in parts.items():
    p = float(mask.mean())
    out[name] = {'count': int(mask.sum()), **_interval(p, mcd),
                 'margin_hoeffding_pairs': hoe}
  return out


def thresholds(records: Any) -> dict[str, Any]:
  """TMLR Table 4's thresholds from one run's records.

  ``tau1`` (eq. 13) is the largest ``D`` over all pairs of a run that
  compares a program with a copy of itself; ``tau2`` (eq. 14) the smallest
  nonzero ``D`` of a run comparing ReLU'(0) = 0 with ReLU'(0) = 1. Both are
  computed for every run (``max`` and ``min_nonzero``); which one is Table
  4's depends on the run. ``threshold_maxpool.ipynb`` ``diffMaxpool``
  returns ``df['norm'].max()``, or for 16 bits ``df[df['norm'] >
  0]['norm'].min()``. The paper prints powers of ten ("approximated as
  powers of 10"): ``*_pow10`` is ``10^round(log10 value)``; the paper's
  Table 1 rounds 5.96e-8 to 1e-7 that way. An empty minimum (no nonzero
  ``D``) is 0, as Table 4 prints tau2 in 64 bits.
  """
  l1 = np.asarray(records.l1, np.float64).ravel()
  pos = l1[l1 > 0]
  big = float(l1.max()) if l1.size else 0.0
  small = float(pos.min()) if pos.size else 0.0
  return {'max': big, 'max_pow10': pow10(big), 'min_nonzero': small,
          'min_nonzero_pow10': pow10(small), 'nonzero_pairs': int(pos.size),
          'pairs': int(l1.size)}


def pow10(v: float) -> float:
  """``10^round(log10 v)`` for ``v > 0``; 0 for 0."""
  if v < 0 or not math.isfinite(v):
    raise ValueError(f'expected a finite value >= 0, got {v}')
  return 0.0 if v == 0 else 10.0 ** round(math.log10(v))


def tau_table(records: Any, taus: Any,
              alpha: float = 0.05) -> list[dict[str, Any]]:
  """Theta in ``S(tau)`` and impacted pairs (``differs`` and ``D > tau``)
  for several thresholds on the same records (TMLR eq. 18 and 19; tau = 0:
  any exact difference)."""
  differs = np.asarray(records.differs, bool)
  l1 = np.asarray(records.l1, np.float64)
  m, r = differs.shape
  rows = []
  for tau in taus:
    tau = float(tau)
    impacted = differs & (l1 > tau) if tau > 0 else differs
    in_zone = impacted.any(axis=1)
    rows.append({'tau': tau,
                 'theta_in_zone': {'count': int(in_zone.sum()),
                                   **_interval(float(in_zone.mean()),
                                               hoeffding_margin(m, alpha))},
                 'impacted_pairs': {'count': int(impacted.sum()),
                                    **_interval(float(impacted.mean()),
                                                mcdiarmid_margin(m, r,
                                                                 alpha))}})
  return rows


def first_difference_curve(differs: Any, batch_sizes: Any,
                           alpha: float = 0.05) -> dict[str, np.ndarray]:
  """The proportion of thetas with a difference within the first examples.

  For each r = 1..R: the thetas whose first r minibatches hold at least one
  impacted pair, against the examples those minibatches hold. This is the
  sample-size panel of ReLU'(0) Figure 2 (``MNIST_volume_estimation.ipynb``
  cells 2 and 4: each theta runs until its first difference and
  ``prepare_volume_plot`` draws the proportion that stopped by minibatch i;
  it puts minibatch i at ``i x batch size`` with i from 0, one minibatch
  earlier than here). On data in a fixed order it equals separate runs on
  the first ``examples[r - 1]`` examples.

  Args:
    differs: ``(M, R)`` booleans, the pairs' ``differs`` records.
    batch_sizes: the R minibatch sizes (the last one may be partial).
    alpha: risk of the two-sided Hoeffding interval, clipped to [0, 1].

  Returns:
    ``examples`` ``(R,)``, ``thetas`` (counts), ``p``, ``low``, ``high``.

  Raises:
    ValueError: when ``batch_sizes`` does not give one size per minibatch.
  """
  d = np.asarray(differs, bool)
  sizes = np.asarray(batch_sizes, np.int64)
  if d.ndim != 2 or sizes.shape != (d.shape[1],):
    raise ValueError(f'differs {d.shape} needs one minibatch size per '
                     f'column; got {sizes.shape[0]} sizes')
  thetas = np.logical_or.accumulate(d, axis=1).sum(axis=0)
  p = thetas / d.shape[0]
  margin = hoeffding_margin(d.shape[0], alpha)
  return {'examples': np.cumsum(sizes), 'thetas': thetas, 'p': p,
          'low': np.maximum(p - margin, 0.0),
          'high': np.minimum(p + margin, 1.0)}
