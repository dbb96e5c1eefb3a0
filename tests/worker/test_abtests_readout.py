"""The readout: decisions, guardrails, SRM, Holm across arms, the Bayesian numbers, degenerate data, bad config."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from statsmodels.stats.multitest import multipletests

from worker.abtests.bayes import bayes_means, bayes_rates
from worker.abtests.fixed import compare
from worker.abtests.readout import ABConfig, Decision, GuardrailSpec, MetricSpec, readout
from worker.abtests.stats import ArmStats, arm_stats, rate_stats

CONVERSION = MetricSpec("conversion", "rate")
ERRORS = GuardrailSpec("error_rate", "rate", margin=0.005)


def _config(**changes: object) -> ABConfig:
    values = {
        "arms": ("control", "treatment"),
        "split": (50, 50),
        "primary": CONVERSION,
        "mde": 0.02,
        "planned_total": 20_000,
        "guardrails": (ERRORS,),
    } | changes
    return ABConfig(**values)


def _rates(**arms: tuple[int, int]) -> dict[str, ArmStats]:
    return {arm: rate_stats(conversions=c, n=n) for arm, (c, n) in arms.items()}


def _json(result: object) -> dict:
    text = json.dumps(result.to_dict(), allow_nan=False)  # raises on NaN or infinity
    return json.loads(text)


def test_a_clear_lift_makes_the_treatment_win() -> None:
    result = readout(config=_config(), primary=_rates(control=(1_000, 10_000), treatment=(1_250, 10_000)))
    assert result.decision == Decision.TREATMENT_WINS
    assert result.winner == "treatment"
    assert result.analysis == "sequential"
    comparison = result.comparisons[0]
    assert comparison.sequential_p_value_holm < 0.05
    assert comparison.sequential.cs_low > 0
    assert comparison.bayesian.prob_treatment_better > 0.99
    assert not result.srm.invalid
    _json(result)


def test_a_clear_drop_makes_the_control_win() -> None:
    result = readout(config=_config(), primary=_rates(control=(1_250, 10_000), treatment=(1_000, 10_000)))
    assert result.decision == Decision.CONTROL_WINS and result.winner is None


def test_an_interval_inside_the_mde_is_no_detectable_difference() -> None:
    result = readout(config=_config(), primary=_rates(control=(10_000, 100_000), treatment=(10_050, 100_000)))
    comparison = result.comparisons[0]
    assert -0.02 < comparison.sequential.cs_low and comparison.sequential.cs_high < 0.02
    assert result.decision == Decision.NO_DIFFERENCE


def test_relative_mde_is_judged_on_the_relative_lift() -> None:
    data = _rates(control=(10_000, 100_000), treatment=(10_050, 100_000))
    assert readout(config=_config(mde=0.1, mde_relative=True), primary=data).decision == Decision.NO_DIFFERENCE
    # 1 % relative is narrower than the lift's confidence sequence: undecided.
    assert readout(config=_config(mde=0.01, mde_relative=True), primary=data).decision == Decision.KEEP_RUNNING


def test_too_little_data_keeps_running() -> None:
    result = readout(config=_config(), primary=_rates(control=(10, 100), treatment=(13, 100)))
    assert result.decision == Decision.KEEP_RUNNING
    assert "treatment:" in result.reason


def test_a_breached_guardrail_overrides_a_win() -> None:
    result = readout(
        config=_config(),
        primary=_rates(control=(1_000, 10_000), treatment=(1_250, 10_000)),
        guardrails={"error_rate": _rates(control=(20, 10_000), treatment=(300, 10_000))},
    )
    assert result.decision == Decision.CONTROL_WINS
    assert result.winner is None
    guardrail = result.comparisons[0].guardrails[0]
    assert guardrail.breached and guardrail.deterioration_low > ERRORS.margin
    assert "guardrail breached" in result.reason and "error_rate" in result.reason


def test_a_guardrail_within_its_margin_lets_the_win_stand() -> None:
    result = readout(
        config=_config(),
        primary=_rates(control=(1_000, 10_000), treatment=(1_250, 10_000)),
        guardrails={"error_rate": _rates(control=(20, 10_000), treatment=(40, 10_000))},
    )
    assert result.decision == Decision.TREATMENT_WINS
    assert not result.comparisons[0].guardrails[0].breached


def test_a_guardrail_where_higher_is_better_breaches_on_a_drop() -> None:
    accuracy = GuardrailSpec("accuracy", "rate", margin=0.01, higher_is_better=True)
    result = readout(
        config=_config(guardrails=(accuracy,)),
        primary=_rates(control=(1_000, 10_000), treatment=(1_250, 10_000)),
        guardrails={"accuracy": _rates(control=(9_000, 10_000), treatment=(8_500, 10_000))},
    )
    assert result.comparisons[0].guardrails[0].breached
    assert result.decision == Decision.CONTROL_WINS


def test_a_guardrail_without_data_does_not_breach() -> None:
    result = readout(config=_config(), primary=_rates(control=(1_000, 10_000), treatment=(1_250, 10_000)))
    guardrail = result.comparisons[0].guardrails[0]
    assert not guardrail.breached and guardrail.reason
    assert result.decision == Decision.TREATMENT_WINS


def test_sample_ratio_mismatch_decides_nothing() -> None:
    result = readout(
        config=_config(),
        primary=_rates(control=(1_000, 10_000), treatment=(1_400, 11_000)),
        assignments={"control": 10_000, "treatment": 11_000},
    )
    assert result.srm.invalid and result.srm.p_value < 0.001
    assert result.decision == Decision.INVALID and result.winner is None
    assert "sample ratio mismatch" in result.reason
    # The comparisons are still shown, only not acted on.
    assert result.comparisons[0].decision == Decision.TREATMENT_WINS


def test_fixed_horizon_refuses_to_decide_before_the_planned_sample() -> None:
    config = _config(sequential=False, planned_total=40_000)
    early = readout(config=config, primary=_rates(control=(1_000, 10_000), treatment=(1_500, 10_000)))
    assert early.analysis == "fixed horizon"
    assert early.decision == Decision.KEEP_RUNNING and "planned sample" in early.reason
    done = readout(config=config, primary=_rates(control=(2_000, 20_000), treatment=(2_300, 20_000)))
    assert done.decision == Decision.TREATMENT_WINS
    assert done.comparisons[0].p_value_holm == done.comparisons[0].fixed.p_value


def test_three_arms_are_holm_corrected_and_the_best_winner_is_named() -> None:
    data = _rates(control=(1_000, 10_000), a=(1_090, 10_000), b=(1_300, 10_000))
    config = _config(arms=("control", "a", "b"), split=(1 / 3, 1 / 3, 1 / 3), planned_total=30_000)
    result = readout(config=config, primary=data)
    fixed = [c.fixed.p_value for c in result.comparisons]
    sequential = [c.sequential.p_value for c in result.comparisons]
    assert [c.p_value_holm for c in result.comparisons] == pytest.approx(multipletests(fixed, method="holm")[1])
    assert [c.sequential_p_value_holm for c in result.comparisons] == pytest.approx(
        multipletests(sequential, method="holm")[1]
    )
    assert result.comparisons[0].fixed.confidence == pytest.approx(0.975)  # Bonferroni intervals
    assert result.decision == Decision.TREATMENT_WINS and result.winner == "b"


def test_lower_is_better_primary_metric() -> None:
    latency = MetricSpec("latency_ms", "mean", higher_is_better=False)
    rng = np.random.default_rng(3)
    primary = {"control": arm_stats(rng.normal(120, 30, 5_000)), "treatment": arm_stats(rng.normal(110, 30, 5_000))}
    result = readout(config=_config(primary=latency, mde=5.0, guardrails=()), primary=primary)
    assert result.decision == Decision.TREATMENT_WINS
    assert result.comparisons[0].bayesian.prob_treatment_better > 0.99


def test_previous_readout_continues_the_sequence() -> None:
    config = _config()
    first = readout(config=config, primary=_rates(control=(500, 5_000), treatment=(610, 5_000)))
    second = readout(
        config=config, primary=_rates(control=(1_000, 10_000), treatment=(1_090, 10_000)), previous=_json(first)
    )
    alone = readout(config=config, primary=_rates(control=(1_000, 10_000), treatment=(1_090, 10_000)))
    before, after, fresh = (r.comparisons[0].sequential for r in (first, second, alone))
    assert after.p_value == min(before.p_value, fresh.p_value)
    assert after.cs_low == max(before.cs_low, fresh.cs_low)
    assert after.cs_high == min(before.cs_high, fresh.cs_high)


def _walk(value: object) -> list[float]:
    if isinstance(value, dict):
        return [x for item in value.values() for x in _walk(item)]
    if isinstance(value, list):
        return [x for item in value for x in _walk(item)]
    return [value] if isinstance(value, float) else []


@pytest.mark.parametrize(
    "primary",
    [
        _rates(control=(0, 1_000), treatment=(0, 1_000)),
        _rates(control=(1_000, 1_000), treatment=(1_000, 1_000)),
        _rates(control=(0, 1_000), treatment=(1_000, 1_000)),
        _rates(control=(100, 1_000)),
        {},
        _rates(control=(0, 0), treatment=(0, 0)),
    ],
    ids=["zero-conversions", "all-conversions", "zero-vs-all", "one-arm-empty", "no-data", "zero-n"],
)
def test_degenerate_rates_give_a_defined_readout(primary: dict[str, ArmStats]) -> None:
    result = readout(config=_config(), primary=primary, guardrails={"error_rate": primary})
    data = _json(result)
    assert all(math.isfinite(x) for x in _walk(data))
    assert result.decision in (Decision.KEEP_RUNNING, Decision.INVALID)
    comparison = result.comparisons[0]
    if comparison.fixed.p_value is None:
        assert comparison.fixed.reason and comparison.sequential.reason


@pytest.mark.parametrize(
    "primary",
    [
        {"control": ArmStats(500, 1_000.0, 2_000.0), "treatment": ArmStats(500, 1_000.0, 2_000.0)},
        {"control": ArmStats(1, 3.0, 9.0), "treatment": ArmStats(400, 1_200.0, 4_000.0)},
        {"control": ArmStats(0, 0.0, 0.0), "treatment": ArmStats(0, 0.0, 0.0)},
        {"control": ArmStats(300, 0.0, 0.0), "treatment": ArmStats(300, 30.0, 90.0)},
    ],
    ids=["zero-variance", "one-unit", "empty", "zero-control-mean"],
)
def test_degenerate_means_give_a_defined_readout(primary: dict[str, ArmStats]) -> None:
    config = _config(primary=MetricSpec("revenue", "mean"), mde=1.0, guardrails=())
    result = readout(config=config, primary=primary)
    data = _json(result)
    assert all(math.isfinite(x) for x in _walk(data))
    comparison = result.comparisons[0]
    if comparison.bayesian.prob_treatment_better is None:
        assert comparison.bayesian.reason


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"split": (50, 40)}, "split"),
        ({"split": (0.7, 0.7)}, "split"),
        ({"split": (0.5, 0.3, 0.2)}, "split"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.0}, "alpha"),
        ({"mde": 0.0}, "mde"),
        ({"mde": -1.0}, "mde"),
        ({"planned_total": 0}, "planned_total"),
        ({"arms": ("control", "control")}, "arms"),
        ({"guardrails": (ERRORS, ERRORS)}, "guardrails"),
    ],
)
def test_bad_config_names_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        _config(**changes)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: MetricSpec("conversion", "median"), "primary.kind"),
        (lambda: GuardrailSpec("errors", "rate", margin=-0.1), "margin"),
        (lambda: GuardrailSpec("", "rate"), "guardrails.name"),
    ],
)
def test_bad_metric_specs_name_the_field(build: object, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build()


def test_statistics_for_unknown_arms_or_guardrails_are_refused() -> None:
    with pytest.raises(ValueError, match="primary: unknown arms"):
        readout(config=_config(), primary=_rates(control=(1, 10), other=(1, 10)))
    with pytest.raises(ValueError, match="assignments: unknown arms"):
        readout(config=_config(), primary={}, assignments={"control": 5, "other": 5})
    with pytest.raises(ValueError, match="guardrails: unknown metrics"):
        readout(config=_config(), primary={}, guardrails={"latency": {}})


# ------------------------------------------------------------------------------------------ Bayesian


@pytest.mark.parametrize(("control", "treatment"), [((120, 1_000), (140, 1_000)), ((30, 2_000), (28, 1_900))])
def test_beta_binomial_matches_monte_carlo(control: tuple[int, int], treatment: tuple[int, int]) -> None:
    c, t = rate_stats(conversions=control[0], n=control[1]), rate_stats(conversions=treatment[0], n=treatment[1])
    result = bayes_rates(control=c, treatment=t)
    rng = np.random.default_rng(0)
    draws_c = rng.beta(1 + c.total, 1 + c.n - c.total, 2_000_000)
    draws_t = rng.beta(1 + t.total, 1 + t.n - t.total, 2_000_000)
    assert result.prob_treatment_better == pytest.approx((draws_t > draws_c).mean(), abs=2e-3)
    assert result.expected_loss_treatment == pytest.approx(np.maximum(draws_c - draws_t, 0).mean(), rel=0.02)
    assert result.expected_loss_control == pytest.approx(np.maximum(draws_t - draws_c, 0).mean(), rel=0.02)


def test_beta_binomial_without_data_is_the_uniform_prior() -> None:
    result = bayes_rates(control=ArmStats(0, 0.0, 0.0), treatment=ArmStats(0, 0.0, 0.0))
    # Two independent uniforms: P(T > C) = 1/2, E[max(C - T, 0)] = 1/6.
    assert result.prob_treatment_better == pytest.approx(0.5, abs=1e-6)
    assert result.expected_loss_treatment == pytest.approx(1 / 6, abs=1e-4)
    assert result.expected_loss_control == pytest.approx(1 / 6, abs=1e-4)


def test_lower_is_better_flips_the_beta_binomial() -> None:
    c, t = rate_stats(conversions=120, n=1_000), rate_stats(conversions=140, n=1_000)
    higher, lower = bayes_rates(control=c, treatment=t), bayes_rates(control=c, treatment=t, higher_is_better=False)
    assert lower.prob_treatment_better == pytest.approx(1 - higher.prob_treatment_better)
    assert lower.expected_loss_treatment == pytest.approx(higher.expected_loss_control)


def test_normal_approximation_for_means_matches_monte_carlo() -> None:
    fixed = compare(
        control=ArmStats(400, 4_000.0, 50_000.0), treatment=ArmStats(400, 4_100.0, 52_000.0), kind="mean", alpha=0.05
    )
    result = bayes_means(fixed=fixed)
    draws = np.random.default_rng(1).normal(fixed.difference, fixed.std_error, 2_000_000)
    assert result.prob_treatment_better == pytest.approx((draws > 0).mean(), abs=2e-3)
    assert result.expected_loss_treatment == pytest.approx(np.maximum(-draws, 0).mean(), rel=0.01)
    assert result.expected_loss_control == pytest.approx(np.maximum(draws, 0).mean(), rel=0.01)
