"""Sample size and duration: the fixed-horizon plan matches statsmodels' NormalIndPower; the sequential plan
is inflated by the mSPRT's wider boundary; bad input names the field."""

from __future__ import annotations

import math

import pytest
from statsmodels.stats.power import NormalIndPower, zt_ind_solve_power

from worker.abtests.power import sample_size
from worker.abtests.sequential import planned_multiplier


@pytest.mark.parametrize(("alpha", "power"), [(0.05, 0.8), (0.01, 0.9), (0.1, 0.8)])
@pytest.mark.parametrize("split", [(0.5, 0.5), (1 / 3, 2 / 3), (80, 20)])
def test_means_fixed_horizon_matches_normal_ind_power(alpha: float, power: float, split: tuple[float, float]) -> None:
    plan = sample_size(
        kind="mean", baseline=20.0, sd=8.0, mde=1.5, alpha=alpha, power=power, split=split, sequential=False
    )
    ratio = split[1] / split[0]
    control = NormalIndPower().solve_power(effect_size=1.5 / 8.0, alpha=alpha, power=power, ratio=ratio)
    assert plan.per_arm[0] == pytest.approx(math.ceil(control), abs=1)
    assert plan.per_arm[1] == pytest.approx(math.ceil(control * ratio), abs=1)
    assert plan.per_arm == plan.fixed_horizon_per_arm
    assert plan.total == sum(plan.per_arm)


@pytest.mark.parametrize(("baseline", "mde", "relative"), [(0.1, 0.02, False), (0.03, 0.1, True), (0.5, 0.05, False)])
def test_rates_fixed_horizon_matches_zt_ind_solve_power(baseline: float, mde: float, relative: bool) -> None:
    plan = sample_size(kind="rate", baseline=baseline, mde=mde, relative=relative, sequential=False)
    difference = mde * baseline if relative else mde
    treated = baseline + difference
    # Equal arms: the unpooled variance p0 q0 + p1 q1 is twice the average unit variance.
    effect = difference / math.sqrt((baseline * (1 - baseline) + treated * (1 - treated)) / 2)
    control = zt_ind_solve_power(effect_size=effect, alpha=0.05, power=0.8, ratio=1.0)
    assert plan.per_arm[0] == pytest.approx(math.ceil(control), abs=1)
    assert plan.mde_absolute == pytest.approx(difference)


def test_more_arms_plan_each_comparison_at_the_bonferroni_level() -> None:
    plan = sample_size(kind="mean", baseline=0.0, sd=1.0, mde=0.1, split=(1 / 3,) * 3, sequential=False)
    control = NormalIndPower().solve_power(effect_size=0.1, alpha=0.025, power=0.8, ratio=1.0)
    assert plan.alpha_per_comparison == pytest.approx(0.025)
    assert plan.per_arm == pytest.approx((math.ceil(control),) * 3, abs=1)


def test_sequential_plan_is_inflated_by_the_boundary_and_gives_a_duration() -> None:
    plan = sample_size(kind="rate", baseline=0.1, mde=0.02, traffic_per_day=2_000)
    z_alpha, z_power = 1.959963984540054, 0.8416212335729143
    assert plan.sequential
    assert plan.inflation == pytest.approx(((planned_multiplier(0.05) + z_power) / (z_alpha + z_power)) ** 2)
    assert plan.per_arm[0] == pytest.approx(plan.fixed_horizon_per_arm[0] * plan.inflation, abs=2)
    assert plan.expected_days == pytest.approx(plan.total / 2_000)
    assert sample_size(kind="rate", baseline=0.1, mde=0.02).expected_days is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"alpha": 0}, "alpha"),
        ({"alpha": 1.2}, "alpha"),
        ({"power": 1}, "power"),
        ({"mde": 0}, "mde"),
        ({"mde": -0.01}, "mde"),
        ({"mde": 0.95}, "mde"),
        ({"split": (0.5, 0.6)}, "split"),
        ({"split": (60, 50)}, "split"),
        ({"split": (1.0,)}, "split"),
        ({"split": (1.0, 0.0)}, "split"),
        ({"baseline": 1.0}, "baseline"),
        ({"kind": "median"}, "kind"),
        ({"traffic_per_day": 0}, "traffic_per_day"),
    ],
)
def test_bad_input_names_the_field(changes: dict, field: str) -> None:
    arguments = {"kind": "rate", "baseline": 0.1, "mde": 0.02} | changes
    with pytest.raises(ValueError, match=field):
        sample_size(**arguments)


def test_a_mean_needs_its_standard_deviation() -> None:
    with pytest.raises(ValueError, match="sd"):
        sample_size(kind="mean", baseline=10.0, mde=1.0)
