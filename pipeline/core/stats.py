"""Replicate statistics: a configuration's mean over seeds with its 95% interval, and the interval
of a difference between two configurations, paired by seed where they share seeds.

Why a t-interval and not the bootstrap: our configurations have 3 to 5 seeds. The percentile
bootstrap resamples those few values and takes quantiles of the resampled means; with n = 3 there
are only 10 distinct resamples, and its interval is too narrow (it uses the plug-in spread and a
normal-like quantile where a t quantile with n - 1 degrees of freedom is due). Student's t-interval,
mean ± t(0.975, n - 1) · s / √n, is exact when the seed-to-seed spread is normal and stays close
to its nominal coverage for moderate departures. `benchmarks/interval_coverage.py` measures both
on synthetic data (docs/benchmarks.md has the figures: the bootstrap covers the true mean far less
often than 95% at these n); `tests/test_stats.py` checks the t-interval's coverage.

A difference is paired when both sides were run at the same seeds: the two GANs of one run, or two
configurations swept over the same seeds. The seed then fixes the same weights' starting draws and
batches on both sides, and the interval is the t-interval of the per-seed differences, which
removes the seed's shared part of the noise. Otherwise the difference gets Welch's interval.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A mean (or a mean difference) and its two-sided interval at `confidence`, from `n` values.
    With one value there is no interval: `low` and `high` are NaN."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float = CONFIDENCE
    paired: bool = False

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def has_interval(self) -> bool:
        return not math.isnan(self.low)

    def includes(self, value: float) -> bool:
        """Whether `value` lies inside the interval (False when there is none)."""
        return self.has_interval and self.low <= value <= self.high

    @property
    def excludes_zero(self) -> bool:
        """An interval of a difference that lies wholly on one side of zero: the runs can tell."""
        return self.has_interval and not self.includes(0.0)


def _t_quantile(confidence: float, dof: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2, dof))


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE, paired: bool = False) -> Interval:
    """The mean of `values` with Student's t-interval: mean ± t(1 - α/2, n - 1) · s / √n,
    s the sample standard deviation (divisor n - 1). One value gives the mean alone."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        raise ValueError("mean_interval needs at least one value")
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, confidence, paired)
    half = _t_quantile(confidence, n - 1) * math.sqrt(_variance(values)) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, confidence, paired)


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """mean(a) - mean(b) with Welch's interval (unequal variances, Welch–Satterthwaite degrees of
    freedom), for two sets of runs that share no seeds. Needs two values on each side for an
    interval; `n` is the smaller side's count."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if not a or not b:
        raise ValueError("welch_interval needs values on both sides")
    mean = math.fsum(a) / len(a) - math.fsum(b) / len(b)
    n = min(len(a), len(b))
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, confidence)
    var_a, var_b = (_variance(side) / len(side) for side in (a, b))
    se = math.sqrt(var_a + var_b)
    if se == 0:
        return Interval(mean, mean, mean, n, confidence)
    dof = (var_a + var_b) ** 2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
    half = _t_quantile(confidence, dof) * se
    return Interval(mean, mean - half, mean + half, n, confidence)


def _variance(values: Sequence[float]) -> float:
    """The sample variance (divisor n - 1)."""
    mean = math.fsum(values) / len(values)
    return math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)


def difference(a: Mapping[int, float], b: Mapping[int, float], confidence: float = CONFIDENCE) -> Interval:
    """mean(a) - mean(b) for two sets of runs keyed by seed: paired over the shared seeds when at
    least two seeds are shared (the t-interval of a[s] - b[s]), else Welch's interval over all."""
    shared = sorted(set(a) & set(b))
    if len(shared) >= 2:
        return mean_interval([a[s] - b[s] for s in shared], confidence, paired=True)
    return welch_interval(list(a.values()), list(b.values()), confidence)


def mean_rows(tables: Sequence[Sequence[Mapping[str, float | None]]]) -> list[dict[str, float | None]]:
    """Row by row, the mean of each column over several tables of the same shape (the seeds'
    histories, epoch by epoch): None where any table has None, the value itself where every table
    has the same one (the epoch stays a whole number)."""
    means = []
    for rows in zip(*tables):
        row: dict[str, float | None] = {}
        for key in rows[0]:
            values = [r[key] for r in rows]
            if any(v is None for v in values):
                row[key] = None
            elif all(v == values[0] for v in values):
                row[key] = values[0]
            else:
                row[key] = sum(values) / len(values)
        means.append(row)
    return means
