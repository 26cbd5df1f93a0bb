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

Tests and families. A comparison's p-value is the two-sided t-test that matches its interval
(paired, Welch, or one sample against a fixed value). Comparisons that answer one question form a
family (a trend's neighbouring steps, the GANs at each latent_dim), and a verdict reads the
family's p-values after Holm's step-down adjustment (`holm`), which keeps the chance of any false
"the runs tell them apart" in the family at 5%, at every set of true effects.

A prediction interval (`prediction_interval`) answers a different question from the mean's
interval: where the mean of a rerun of m new seeds should fall, 95% of the time. It is wider by
sqrt(1 + n/m), because the rerun's own mean varies as much as this one's.

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
    if all(v == values[0] for v in values):  # no spread: exactly none, not rounding's 1e-16
        return Interval(mean, mean, mean, n, confidence, paired)
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


def difference(a: Mapping[int, float], b: Mapping[int, float] | float, confidence: float = CONFIDENCE,
               pair: bool = True) -> Interval:
    """mean(a) - mean(b) for two sets of runs keyed by seed: paired over the shared seeds when at
    least two seeds are shared and `pair` (the t-interval of a[s] - b[s]), else Welch's interval
    over all. With `b` a number: the t-interval of a[s] - b (one sample against a fixed value)."""
    if not isinstance(b, Mapping):
        return mean_interval([float(v) - float(b) for v in a.values()], confidence)
    shared = sorted(set(a) & set(b))
    if pair and len(shared) >= 2:
        return mean_interval([a[s] - b[s] for s in shared], confidence, paired=True)
    return welch_interval(list(a.values()), list(b.values()), confidence)


def p_value(a: Mapping[int, float], b: Mapping[int, float] | float, pair: bool = True) -> float:
    """The two-sided p-value of "mean(a) = mean(b)" by the test behind `difference`: paired t over
    the shared seeds when at least two are shared and `pair`, else Welch's t. With `b` a number, the
    one-sample t-test of a against it. NaN where there is no interval (one value a side), 0 or 1
    where the values do not vary (a difference that is the same at every seed: 0 unless it is 0).
    Computed from the same sums as the intervals (`_variance`): scipy's t-tests give the same values
    but warn of cancellation where the seeds' values agree to many digits."""
    from scipy import stats

    if not isinstance(b, Mapping):
        values = [float(v) - float(b) for v in a.values()]
    else:
        shared = sorted(set(a) & set(b))
        if pair and len(shared) >= 2:
            values = [a[s] - b[s] for s in shared]
        else:
            xs, ys = [float(v) for v in a.values()], [float(v) for v in b.values()]
            if min(len(xs), len(ys)) < 2:
                return math.nan
            var_x, var_y = _variance(xs) / len(xs), _variance(ys) / len(ys)
            mean = math.fsum(xs) / len(xs) - math.fsum(ys) / len(ys)
            if var_x + var_y == 0:
                return 1.0 if mean == 0 else 0.0
            dof = (var_x + var_y) ** 2 / (var_x**2 / (len(xs) - 1) + var_y**2 / (len(ys) - 1))
            return float(2 * stats.t.sf(abs(mean) / math.sqrt(var_x + var_y), dof))
    if len(values) < 2:
        return math.nan
    variance = _variance(values)
    mean = math.fsum(values) / len(values)
    if variance == 0:
        return 1.0 if mean == 0 else 0.0
    return float(2 * stats.t.sf(abs(mean) / math.sqrt(variance / len(values)), len(values) - 1))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values of one family (statsmodels' `multipletests`, method
    "holm"): reject where the adjusted value is below the level. NaN entries (no test) stay NaN and
    do not count towards the family's size."""
    from statsmodels.stats.multitest import multipletests

    tested = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    adjusted = [math.nan] * len(p_values)
    if tested:
        values = multipletests([p_values[i] for i in tested], method="holm")[1]
        for i, value in zip(tested, values):
            adjusted[i] = float(value)
    return adjusted


def prediction_interval(values: Sequence[float], new: int | None = None,
                        confidence: float = CONFIDENCE) -> Interval:
    """Where the mean of `new` fresh seeds (default: as many as `values`) falls with probability
    `confidence`, from the n values measured: mean ± t(1 - α/2, n - 1) · s · sqrt(1/n + 1/new),
    assuming normal seed-to-seed spread. Needs two values; one gives the mean alone."""
    values = [float(v) for v in values]
    n = len(values)
    new = n if new is None else new
    if n == 0 or new < 1:
        raise ValueError("prediction_interval needs at least one value and one new seed")
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, confidence)
    if all(v == values[0] for v in values):
        return Interval(mean, mean, mean, n, confidence)
    half = _t_quantile(confidence, n - 1) * math.sqrt(_variance(values)) * math.sqrt(1 / n + 1 / new)
    return Interval(mean, mean - half, mean + half, n, confidence)


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
