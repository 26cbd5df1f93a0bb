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


def test_p_values_are_the_tests_behind_the_intervals():
    a, b = {0: 565.0, 1: 708.0, 2: 479.0}, {0: 444.0, 1: 608.0, 2: 370.0}
    assert stats.p_value(a, b) == pytest.approx(scipy_stats.ttest_rel(list(a.values()), list(b.values())).pvalue)
    c = {3: 10.0, 4: 12.0, 5: 11.0}
    assert stats.p_value(a, c) == pytest.approx(
        scipy_stats.ttest_ind(list(a.values()), list(c.values()), equal_var=False).pvalue)
    assert stats.p_value(a, 500.0) == pytest.approx(scipy_stats.ttest_1samp(list(a.values()), 500.0).pvalue)
    assert math.isnan(stats.p_value({0: 1.0}, {0: 2.0}))
    # No spread: a difference that is the same at every seed is certain, one of zero is no difference.
    assert stats.p_value({0: 16.0, 1: 16.0}, 16.0) == 1.0 and stats.p_value({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0}) == 0.0


def test_holm_adjusts_a_family_as_the_textbook_and_statsmodels_do():
    from statsmodels.stats.multitest import multipletests

    # Sorted 0.005, 0.01, 0.03, 0.04 -> 4 x 0.005, 3 x 0.01, 2 x 0.03, max(1 x 0.04, 0.06): step-down, monotone.
    family = [0.01, 0.04, 0.03, 0.005]
    adjusted = stats.holm(family)
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert adjusted == pytest.approx(list(multipletests(family, method="holm")[1]))
    # A comparison without a test (one seed a side) stays untested and does not enlarge the family.
    with_gap = stats.holm([0.01, math.nan, 0.04])
    assert with_gap[0] == pytest.approx(0.02) and math.isnan(with_gap[1]) and with_gap[2] == pytest.approx(0.04)


def test_the_prediction_interval_covers_a_reruns_mean_at_its_nominal_rate_and_the_mean_interval_does_not():
    rng = np.random.default_rng(2)
    predicted = confidence = 0
    draws = 2000
    for _ in range(draws):
        study, rerun = rng.normal(446.0, 90.0, size=5), rng.normal(446.0, 90.0, size=5)
        predicted += stats.prediction_interval(study).includes(rerun.mean())
        confidence += stats.mean_interval(study).includes(rerun.mean())
    assert 0.935 <= predicted / draws <= 0.965  # nominal 95%; binomial sd about 0.5 points
    assert confidence / draws < 0.91  # about 88% at n = 5: the CI of the mean is not where a rerun falls
    single = stats.prediction_interval([446.0])
    assert not single.has_interval
    # One new seed: wider still, by sqrt(1 + 1/n) against sqrt(2/n) for n new seeds.
    values = [1.0, 2.0, 4.0, 3.0, 5.0]
    ratio = stats.prediction_interval(values, new=1).half_width / stats.prediction_interval(values).half_width
    assert ratio == pytest.approx(math.sqrt((1 + 1 / 5) / (2 / 5)))
