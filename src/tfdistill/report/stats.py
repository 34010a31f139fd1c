"""The statistics of a report -- its one statistics module: mean and sample std over seeds, the difference of two
means with its Welch interval (:func:`difference`), and the mean of paired differences with its t-interval
(:func:`paired_difference`: runs paired by seed, initial weights and data order, see :mod:`.pairing`)."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence


@dataclass(frozen=True)
class Stat:
    """Summary of one group's values (one per seed)."""

    n: int
    mean: Optional[float]
    std: Optional[float]
    """Sample standard deviation (ddof=1); None for n < 2."""
    min: Optional[float]
    max: Optional[float]
    median: Optional[float]

    @property
    def sem(self) -> Optional[float]:
        """Standard error of the mean (std / sqrt(n)); None for n < 2."""
        return None if self.std is None else self.std / math.sqrt(self.n)


def describe(values: Iterable[float]) -> Stat:
    xs = [float(v) for v in values]
    if not xs:
        return Stat(0, None, None, None, None, None)
    std = statistics.stdev(xs) if len(xs) > 1 else None
    return Stat(len(xs), statistics.fmean(xs), std, min(xs), max(xs), statistics.median(xs))


CONFIDENCE = 0.95
"""The level of the interval on a gain."""


@dataclass(frozen=True)
class Diff:
    """``a.mean - b.mean``, its combined standard error ``sqrt(sa^2/na + sb^2/nb)`` and the Welch 95 % confidence
    interval ``value ± t(0.975, df) * se`` with the Welch-Satterthwaite degrees of freedom ``df`` (the two groups'
    variances are not assumed equal). ``se``, ``df``, ``lo`` and ``hi`` are None when a group has fewer than 2
    values; with two constant groups ``se`` is 0 and the interval is the point."""

    value: float
    se: Optional[float]
    df: Optional[float] = None
    lo: Optional[float] = None
    hi: Optional[float] = None
    pairs: Optional[int] = None
    """For a paired difference (:func:`paired_difference`): the number of pairs; None for Welch's."""

    @property
    def excludes_zero(self) -> Optional[bool]:
        """Whether the interval lies entirely above or below 0 (None without an interval)."""
        if self.lo is None or self.hi is None:
            return None
        return self.lo > 0 or self.hi < 0


def welch_df(a: Stat, b: Stat) -> Optional[float]:
    """Welch-Satterthwaite degrees of freedom of ``a.mean - b.mean`` (None for n < 2 or two constant groups)."""
    if a.std is None or b.std is None:
        return None
    va, vb = a.std ** 2 / a.n, b.std ** 2 / b.n
    if va + vb == 0:
        return None
    return (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t distribution with ``df`` degrees of freedom (scipy)."""
    from scipy.stats import t

    return float(t.ppf(q, df))


def difference(a: Stat, b: Stat, level: float = CONFIDENCE) -> Optional[Diff]:
    if a.mean is None or b.mean is None:
        return None
    value = a.mean - b.mean
    if a.std is None or b.std is None:
        return Diff(value, None)
    se = math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)
    df = welch_df(a, b)
    if df is None:  # both groups constant: no spread, the interval is the point
        return Diff(value, se, None, value, value)
    half = t_quantile(0.5 + level / 2, df) * se
    return Diff(value, se, df, value - half, value + half)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = CONFIDENCE) -> Optional[Diff]:
    """The mean of the paired differences ``a[i] - b[i]``, its standard error ``sd(d) / sqrt(n)`` and the 95 %
    t-interval with ``n - 1`` degrees of freedom (scipy's ``ttest_rel``'s interval); ``pairs`` = n. None without
    pairs; no interval for one pair; with constant differences the interval is the point."""
    if len(a) != len(b):
        raise ValueError(f"paired values of unequal length: {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    n = len(d)
    if n == 0:
        return None
    value = statistics.fmean(d)
    if n < 2:
        return Diff(value, None, pairs=n)
    se = statistics.stdev(d) / math.sqrt(n)
    if se == 0:
        return Diff(value, 0.0, None, value, value, pairs=n)
    half = t_quantile(0.5 + level / 2, n - 1) * se
    return Diff(value, se, float(n - 1), value - half, value + half, pairs=n)


def aggregate(stat: Stat, how: str) -> Optional[float]:
    """The value of ``stat`` under a paper's seed statistic: best-of-N -> max, mean-of-N -> mean, median-of-N ->
    median, single -> the mean (the single run when n = 1)."""
    kind = how.split("-of-")[0] if how else "mean"
    return {"best": stat.max, "median": stat.median}.get(kind, stat.mean)
