"""The statistics of a report: mean and sample std over seeds, and the difference of two means with its error."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Optional


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


@dataclass(frozen=True)
class Diff:
    """``a.mean - b.mean`` and its combined standard error ``sqrt(sa^2/na + sb^2/nb)`` (Welch; None if n < 2)."""

    value: float
    se: Optional[float]


def difference(a: Stat, b: Stat) -> Optional[Diff]:
    if a.mean is None or b.mean is None:
        return None
    se = None
    if a.std is not None and b.std is not None:
        se = math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)
    return Diff(a.mean - b.mean, se)


def aggregate(stat: Stat, how: str) -> Optional[float]:
    """The value of ``stat`` under a paper's seed statistic: best-of-N -> max, mean-of-N -> mean, median-of-N ->
    median, single -> the mean (the single run when n = 1)."""
    kind = how.split("-of-")[0] if how else "mean"
    return {"best": stat.max, "median": stat.median}.get(kind, stat.mean)
