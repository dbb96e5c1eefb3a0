"""The mSPRT by simulation: A/A tests looked at 20 times stay within α + 0.01; a true effect equal to the MDE
is detected by the planned sample size. Vectorised over simulations and looks, seeded, a second or two."""

from __future__ import annotations

import numpy as np
import pytest

from worker.abtests.fixed import compare
from worker.abtests.power import sample_size
from worker.abtests.readout import ABConfig, MetricSpec, readout
from worker.abtests.sequential import (
    always_valid_p_value,
    boundary_multiplier,
    mixing_variance,
    planned_multiplier,
    sequential_compare,
)
from worker.abtests.stats import ArmStats, rate_stats

SIMULATIONS = 2_000
LOOKS = 20
ALPHA = 0.05


def _looks(n_per_arm: int) -> np.ndarray:
    return np.linspace(n_per_arm / LOOKS, n_per_arm, LOOKS).round().astype(int)


def _cumulative_conversions(rng: np.random.Generator, p: float, looks: np.ndarray) -> np.ndarray:
    batches = np.diff(looks, prepend=0)
    return rng.binomial(batches, p, size=(SIMULATIONS, LOOKS)).cumsum(axis=1)


def _rejected_by_end(
    conv_c: np.ndarray, conv_t: np.ndarray, looks: np.ndarray, planned: int
) -> tuple[np.ndarray, np.ndarray]:
    """Whether the always-valid p-value went below α at any of the looks, and the final difference's sign."""
    p_c, p_t = conv_c / looks, conv_t / looks
    var_c, var_t = p_c * (1 - p_c), p_t * (1 - p_t)
    variance = var_c / looks + var_t / looks
    planned_variance = var_c / planned + var_t / planned  # the readout's plug-in for V_planned
    with np.errstate(divide="ignore", invalid="ignore"):
        tau2 = mixing_variance(planned_variance=1.0, alpha=ALPHA) * planned_variance
        total = variance + tau2
        log_lr = 0.5 * np.log(variance / total) + tau2 * (p_t - p_c) ** 2 / (2 * variance * total)
    p_values = np.where(variance > 0, np.exp(-np.maximum(log_lr, 0.0)), 1.0)
    running = np.minimum.accumulate(p_values, axis=1)
    return running[:, -1] <= ALPHA, p_t[:, -1] - p_c[:, -1]


def test_vectorised_statistic_is_the_one_the_readout_uses() -> None:
    control, treatment = rate_stats(conversions=400, n=4_000), rate_stats(conversions=470, n=4_000)
    planned = 7_000
    config = ABConfig(
        arms=("c", "t"), split=(0.5, 0.5), primary=MetricSpec("conv", "rate"), mde=0.02, planned_total=2 * planned
    )
    result = readout(config=config, primary={"c": control, "t": treatment})
    conv_c, conv_t, looks = np.array([[400]]), np.array([[470]]), np.array([4_000])
    p_c, p_t = conv_c / looks, conv_t / looks
    variance = p_c * (1 - p_c) / looks + p_t * (1 - p_t) / looks
    tau2 = mixing_variance(planned_variance=float((p_c * (1 - p_c) + p_t * (1 - p_t))[0, 0] / planned), alpha=ALPHA)
    expected = always_valid_p_value(difference=(p_t - p_c)[0, 0], variance=variance[0, 0], tau2=tau2)
    assert result.comparisons[0].sequential.p_value == pytest.approx(expected, rel=1e-12)
    assert result.comparisons[0].sequential.tau2 == pytest.approx(tau2, rel=1e-12)


def test_aa_rates_false_positive_rate_within_alpha() -> None:
    rng = np.random.default_rng(20170813)
    plan = sample_size(kind="rate", baseline=0.1, mde=0.02, alpha=ALPHA, power=0.8)
    n = plan.per_arm[0]
    looks = _looks(n)
    rejected, _ = _rejected_by_end(
        _cumulative_conversions(rng, 0.1, looks), _cumulative_conversions(rng, 0.1, looks), looks, n
    )
    assert rejected.mean() <= ALPHA + 0.01


def test_aa_rates_low_baseline_false_positive_rate_within_alpha() -> None:
    rng = np.random.default_rng(11)
    plan = sample_size(kind="rate", baseline=0.02, mde=0.25, relative=True, alpha=ALPHA, power=0.8)
    n = plan.per_arm[0]
    looks = _looks(n)
    rejected, _ = _rejected_by_end(
        _cumulative_conversions(rng, 0.02, looks), _cumulative_conversions(rng, 0.02, looks), looks, n
    )
    assert rejected.mean() <= ALPHA + 0.01


def test_aa_means_false_positive_rate_within_alpha() -> None:
    rng = np.random.default_rng(2023)
    mean, sd = 50.0, 30.0
    plan = sample_size(kind="mean", baseline=mean, sd=sd, mde=2.0, alpha=ALPHA, power=0.8)
    n = plan.per_arm[0]
    looks = _looks(n)
    batches = np.diff(looks, prepend=0)
    arms = []
    for _ in range(2):
        # A batch of m normal draws: its sum is N(m μ, m σ²), its centred sum of squares σ² χ²(m - 1), independent.
        sums = rng.normal(batches * mean, np.sqrt(batches) * sd, size=(SIMULATIONS, LOOKS))
        centred = sd**2 * rng.chisquare(batches - 1, size=(SIMULATIONS, LOOKS))
        sumsq = centred + sums**2 / batches
        arms.append((sums.cumsum(axis=1), sumsq.cumsum(axis=1)))
    (sum_c, sq_c), (sum_t, sq_t) = arms
    var_c = (sq_c - sum_c**2 / looks) / (looks - 1)
    var_t = (sq_t - sum_t**2 / looks) / (looks - 1)
    difference = sum_t / looks - sum_c / looks
    tau2 = mixing_variance(planned_variance=1.0, alpha=ALPHA) * (var_c + var_t) / n
    p_values = always_valid_p_value(difference=difference, variance=var_c / looks + var_t / looks, tau2=tau2)
    assert (np.minimum.accumulate(p_values, axis=1)[:, -1] <= ALPHA).mean() <= ALPHA + 0.01


def test_true_mde_detected_by_the_planned_sample() -> None:
    rng = np.random.default_rng(7)
    plan = sample_size(kind="rate", baseline=0.1, mde=0.02, alpha=ALPHA, power=0.8)
    n = plan.per_arm[0]
    looks = _looks(n)
    rejected, difference = _rejected_by_end(
        _cumulative_conversions(rng, 0.1, looks), _cumulative_conversions(rng, 0.12, looks), looks, n
    )
    assert (rejected & (difference > 0)).mean() >= 0.75


def test_the_fixed_horizon_sample_is_not_enough_for_the_sequential_test() -> None:
    """Why the planner inflates: at the fixed-horizon size the mSPRT detects the MDE far below 75 % of the time."""
    rng = np.random.default_rng(8)
    plan = sample_size(kind="rate", baseline=0.1, mde=0.02, alpha=ALPHA, power=0.8)
    n = plan.fixed_horizon_per_arm[0]
    looks = _looks(n)
    rejected, difference = _rejected_by_end(
        _cumulative_conversions(rng, 0.1, looks), _cumulative_conversions(rng, 0.12, looks), looks, n
    )
    assert (rejected & (difference > 0)).mean() < 0.7
    assert plan.per_arm[0] > 1.8 * n


def test_p_value_below_alpha_exactly_when_the_sequence_excludes_zero() -> None:
    tau2 = mixing_variance(planned_variance=1e-4, alpha=ALPHA)
    variance = np.full(200, 2e-4)
    difference = np.linspace(-0.08, 0.08, 200)
    p_values = always_valid_p_value(difference=difference, variance=variance, tau2=tau2)
    half_width = boundary_multiplier(variance=variance, tau2=tau2, alpha=ALPHA) * np.sqrt(variance)
    assert np.array_equal(p_values < ALPHA, np.abs(difference) > half_width)


def test_planned_multiplier_is_wider_than_one_look() -> None:
    assert planned_multiplier(0.05) == pytest.approx(3.035, abs=1e-3)
    assert planned_multiplier(0.05) > 1.96


def test_running_minimum_and_intersection_over_looks() -> None:
    first = compare(control=ArmStats(1_000, 100, 100), treatment=ArmStats(1_000, 150, 150), kind="rate", alpha=ALPHA)
    second = compare(control=ArmStats(2_000, 200, 200), treatment=ArmStats(2_000, 210, 210), kind="rate", alpha=ALPHA)
    earlier = sequential_compare(fixed=first, planned_variance=3e-5, alpha=ALPHA)
    alone = sequential_compare(fixed=second, planned_variance=3e-5, alpha=ALPHA)
    later = sequential_compare(
        fixed=second, planned_variance=3e-5, alpha=ALPHA, previous={"p_value": earlier.p_value, **_bounds(earlier)}
    )
    assert later.p_value == min(earlier.p_value, alone.p_value)
    assert later.cs_low == max(earlier.cs_low, alone.cs_low)
    assert later.cs_high == min(earlier.cs_high, alone.cs_high)


def _bounds(result: object) -> dict[str, float]:
    return {key: getattr(result, key) for key in ("cs_low", "cs_high", "lift_cs_low", "lift_cs_high")}
