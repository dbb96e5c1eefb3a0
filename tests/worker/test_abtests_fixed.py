"""Fixed-horizon tests, SRM and Holm against statsmodels and scipy on the same data (to 1e-9)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats import proportion as sm_proportion  # its test_* names would be collected as tests
from statsmodels.stats.multitest import multipletests

from worker.abtests.fixed import compare
from worker.abtests.multiple import holm
from worker.abtests.srm import SRM_P_THRESHOLD, srm_check
from worker.abtests.stats import ArmStats, arm_stats, rate_stats

TOL = 1e-9


@pytest.mark.parametrize(
    ("control", "treatment"),
    [((120, 1000), (150, 1000)), ((4_810, 50_000), (5_022, 49_700)), ((3, 40), (9, 37)), ((990, 1000), (970, 1010))],
)
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_rates_match_statsmodels_wald(control: tuple[int, int], treatment: tuple[int, int], alpha: float) -> None:
    result = compare(
        control=rate_stats(conversions=control[0], n=control[1]),
        treatment=rate_stats(conversions=treatment[0], n=treatment[1]),
        kind="rate",
        alpha=alpha,
    )
    reference = sm_proportion.test_proportions_2indep(*treatment, *control, method="wald", compare="diff")
    low, high = sm_proportion.confint_proportions_2indep(
        *treatment, *control, method="wald", compare="diff", alpha=alpha
    )
    assert result.statistic == pytest.approx(reference.statistic, abs=TOL)
    assert result.p_value == pytest.approx(reference.pvalue, abs=TOL)
    assert result.ci_low == pytest.approx(low, abs=TOL)
    assert result.ci_high == pytest.approx(high, abs=TOL)
    # The unpooled test and its interval agree: significant exactly when the interval excludes 0.
    assert (result.p_value < alpha) == (result.ci_low > 0 or result.ci_high < 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_means_match_scipy_welch(seed: int, alpha: float) -> None:
    rng = np.random.default_rng(seed)
    control = rng.lognormal(3.0, 1.0, size=400 + 50 * seed)
    treatment = rng.lognormal(3.1, 1.3, size=350)
    result = compare(control=arm_stats(control), treatment=arm_stats(treatment), kind="mean", alpha=alpha)
    reference = scipy_stats.ttest_ind(treatment, control, equal_var=False)
    interval = reference.confidence_interval(1 - alpha)
    assert result.statistic == pytest.approx(reference.statistic, abs=TOL)
    assert result.df == pytest.approx(reference.df, abs=TOL)
    assert result.p_value == pytest.approx(reference.pvalue, abs=TOL)
    assert result.ci_low == pytest.approx(interval.low, abs=TOL)
    assert result.ci_high == pytest.approx(interval.high, abs=TOL)


def test_relative_lift_interval_is_the_delta_method() -> None:
    control, treatment = ArmStats(500, 6_000.0, 90_000.0), ArmStats(480, 6_300.0, 99_000.0)
    result = compare(control=control, treatment=treatment, kind="mean", alpha=0.05)
    c, t = control.mean, treatment.mean
    var_c, var_t = control.sample_variance / control.n, treatment.sample_variance / treatment.n
    # Gradient of t/c - 1 by central differences, independent of the closed form in fixed.py.
    h = 1e-6
    grad_t = ((t + h) / c - (t - h) / c) / (2 * h)
    grad_c = (t / (c + h) - t / (c - h)) / (2 * h)
    se = math.sqrt(grad_t**2 * var_t + grad_c**2 * var_c)
    z = scipy_stats.norm.isf(0.025)
    assert result.lift == pytest.approx(t / c - 1, abs=TOL)
    assert result.lift_std_error == pytest.approx(se, rel=1e-6)
    assert result.lift_ci_low == pytest.approx(result.lift - z * se, rel=1e-6)
    assert result.lift_ci_high == pytest.approx(result.lift + z * se, rel=1e-6)


def test_relative_lift_interval_covers_the_true_lift() -> None:
    rng = np.random.default_rng(7)
    p_c, p_t, n, runs = 0.2, 0.23, 5_000, 4_000
    conv_c = rng.binomial(n, p_c, size=runs)
    conv_t = rng.binomial(n, p_t, size=runs)
    covered = 0
    for c, t in zip(conv_c, conv_t, strict=True):
        result = compare(
            control=rate_stats(conversions=int(c), n=n),
            treatment=rate_stats(conversions=int(t), n=n),
            kind="rate",
            alpha=0.05,
        )
        covered += result.lift_ci_low <= p_t / p_c - 1 <= result.lift_ci_high
    assert 0.935 <= covered / runs <= 0.965


@pytest.mark.parametrize(
    ("control", "treatment", "reason"),
    [
        (rate_stats(conversions=0, n=500), rate_stats(conversions=0, n=500), "no variance"),
        (rate_stats(conversions=500, n=500), rate_stats(conversions=500, n=500), "no variance"),
        (rate_stats(conversions=0, n=0), rate_stats(conversions=10, n=100), "at least a unit"),
    ],
)
def test_degenerate_rates_are_none_with_a_reason(control: ArmStats, treatment: ArmStats, reason: str) -> None:
    result = compare(control=control, treatment=treatment, kind="rate", alpha=0.05)
    assert result.p_value is None and result.ci_low is None and result.lift is None
    assert reason in result.reason


def test_zero_conversions_in_control_leave_the_lift_undefined_but_test_the_difference() -> None:
    result = compare(
        control=rate_stats(conversions=0, n=500), treatment=rate_stats(conversions=25, n=500), kind="rate", alpha=0.05
    )
    assert result.p_value is not None and result.ci_low > 0
    assert result.lift is None and "control mean is 0" in result.reason


def test_means_need_two_units_and_some_variance() -> None:
    one = compare(control=arm_stats(np.array([3.0])), treatment=arm_stats(np.ones(10)), kind="mean", alpha=0.05)
    assert one.p_value is None and "two units" in one.reason
    flat = compare(control=arm_stats(np.full(10, 2.0)), treatment=arm_stats(np.full(10, 2.0)), kind="mean", alpha=0.05)
    assert flat.p_value is None and "no variance" in flat.reason


def test_arm_stats_leaves_missing_outcomes_out() -> None:
    assert arm_stats(np.array([1.0, np.nan, 3.0])) == ArmStats(2, 4.0, 10.0)


def test_conversions_beyond_n_are_refused() -> None:
    with pytest.raises(ValueError, match="conversions"):
        rate_stats(conversions=11, n=10)
    with pytest.raises(ValueError, match="treatment: conversions"):
        compare(control=ArmStats(10, 1, 1), treatment=ArmStats(10, 12, 12), kind="rate", alpha=0.05)


@pytest.mark.parametrize(
    ("counts", "split"),
    [([5_000, 5_100], (0.5, 0.5)), ([9_000, 11_000], (0.5, 0.5)), ([300, 330, 290], (0.3, 0.4, 0.3))],
)
def test_srm_matches_scipy_chisquare(counts: list[int], split: tuple[float, ...]) -> None:
    result = srm_check(counts=counts, split=split)
    reference = scipy_stats.chisquare(counts, np.sum(counts) * np.asarray(split))
    assert result.chi2 == pytest.approx(reference.statistic, abs=TOL)
    assert result.p_value == pytest.approx(reference.pvalue, abs=TOL)
    assert result.invalid == (reference.pvalue < SRM_P_THRESHOLD)
    assert result.df == len(counts) - 1


def test_srm_flags_a_ten_percent_skew_and_passes_a_fair_split() -> None:
    assert srm_check(counts=[10_000, 11_000], split=(0.5, 0.5)).invalid
    assert "sample ratio mismatch" in srm_check(counts=[10_000, 11_000], split=(0.5, 0.5)).reason
    assert not srm_check(counts=[10_000, 10_050], split=(0.5, 0.5)).invalid


def test_srm_without_assignments_is_not_computed() -> None:
    result = srm_check(counts=[0, 0], split=(0.5, 0.5))
    assert result.p_value is None and not result.invalid and result.reason == "no assignments yet"


@pytest.mark.parametrize("p_values", [[0.01, 0.04, 0.03], [0.2, 0.001, 0.04, 0.04, 0.5], [0.3]])
def test_holm_matches_statsmodels(p_values: list[float]) -> None:
    expected = multipletests(p_values, method="holm")[1]
    assert holm(p_values) == pytest.approx(tuple(expected), abs=TOL)


def test_holm_counts_an_undefined_p_value_as_one() -> None:
    adjusted = holm([0.01, None, 0.04])
    assert adjusted[1] is None
    assert adjusted[0] == pytest.approx(multipletests([0.01, 1.0, 0.04], method="holm")[1][0], abs=TOL)
