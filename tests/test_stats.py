"""The replicate statistics: coverage of the intervals on synthetic data with a known mean, and
the paired and unpaired differences."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from pipeline.core import stats


@pytest.mark.parametrize("n", [3, 5])
def test_the_t_interval_covers_the_true_mean_at_about_its_nominal_rate(n):
    rng = np.random.default_rng(0)
    true_mean = 446.0
    covered = sum(stats.mean_interval(rng.normal(true_mean, 90.0, size=n)).includes(true_mean) for _ in range(400))
    assert 0.92 <= covered / 400 <= 0.98  # nominal 95%; 400 draws put the binomial sd near 1.1 points


def test_the_interval_is_student_t_and_one_value_has_none():
    values = [565.0, 708.0, 479.0]
    interval = stats.mean_interval(values)
    low, high = scipy_stats.t.interval(0.95, 2, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert (interval.mean, interval.n) == (pytest.approx(584.0), 3)
    assert (interval.low, interval.high) == (pytest.approx(low), pytest.approx(high))
    single = stats.mean_interval([446.0])
    assert single.mean == 446.0 and not single.has_interval and not single.includes(446.0)
    assert math.isnan(single.half_width)
    with pytest.raises(ValueError):
        stats.mean_interval([])


def test_pairing_by_seed_tells_a_difference_the_unpaired_ranges_hide():
    # The measurement: VAE samples at latent_dim 8 and 16, seeds 0, 1, 2. The ranges overlap;
    # paired by seed, 8 is worse every time.
    at_8, at_16 = {0: 565.0, 1: 708.0, 2: 479.0}, {0: 444.0, 1: 608.0, 2: 370.0}
    paired = stats.difference(at_8, at_16)
    assert paired.paired and paired.n == 3
    assert paired.mean == pytest.approx(110.0) and paired.excludes_zero
    unpaired = stats.welch_interval(list(at_8.values()), list(at_16.values()))
    assert not unpaired.paired and not unpaired.excludes_zero
    assert unpaired.mean == pytest.approx(paired.mean)


def test_a_difference_without_two_shared_seeds_is_welch_and_one_run_a_side_has_no_interval():
    a, b = {0: 1.0, 1: 2.0, 2: 3.0}, {3: 10.0, 4: 12.0, 5: 11.0}
    welch = stats.difference(a, b)
    reference = scipy_stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False).confidence_interval(0.95)
    assert not welch.paired
    assert (welch.low, welch.high) == (pytest.approx(reference.low), pytest.approx(reference.high))
    assert welch.excludes_zero
    assert not stats.difference({0: 1.0}, {0: 2.0}).has_interval


def test_the_paired_interval_covers_the_true_difference_at_about_its_nominal_rate():
    rng = np.random.default_rng(1)
    covered = 0
    for _ in range(400):
        seed_effect = rng.normal(0, 100.0, size=4)  # shared by both sides: pairing removes it
        a = dict(enumerate(500 + seed_effect + rng.normal(0, 10.0, size=4)))
        b = dict(enumerate(450 + seed_effect + rng.normal(0, 10.0, size=4)))
        covered += stats.difference(a, b).includes(50.0)
    assert 0.92 <= covered / 400 <= 0.98
