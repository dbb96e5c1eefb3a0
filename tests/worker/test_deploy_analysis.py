"""Canary analysis, shadow comparison and the local autoscaler: pure functions, no processes."""

from __future__ import annotations

import pytest

from worker.deployments.analysis import (
    CanaryAction,
    CanaryThresholds,
    WindowStats,
    canary_decide,
    percentile,
    shadow_compare,
)
from worker.deployments.autoscale import AutoscalePolicy, autoscale_decide

THRESHOLDS = CanaryThresholds(max_error_rate_delta=0.02, max_p99_ratio=1.5, min_requests=50, failures_to_rollback=2)


def window(requests: int, *, errors: int = 0, p99_ms: float = 2.9) -> WindowStats:
    """A window's figures as telemetry's rollups give them (server errors only; p99 from the histogram)."""
    return WindowStats(requests, errors, p99_ms, p50_ms=2.4)


def test_window_stats_error_rate() -> None:
    assert window(100, errors=3).error_rate == pytest.approx(0.03)
    assert WindowStats(0, 0, None).error_rate is None


def test_percentile_is_nearest_rank() -> None:
    assert percentile([5, 1, 3, 2, 4], 50) == 3
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile([], 99) is None


def test_healthy_canary_is_promoted_with_its_numbers() -> None:
    decision = canary_decide(stable=window(200), canary=window(60), thresholds=THRESHOLDS)
    assert decision.action == CanaryAction.PROMOTE
    assert decision.numbers["canary"]["requests"] == 60 and decision.numbers["stable"]["requests"] == 200
    assert decision.numbers["error_rate_delta"] == 0
    assert decision.numbers["p99_ratio"] == pytest.approx(1.0)
    assert decision.numbers["thresholds"]["min_requests"] == 50


@pytest.mark.parametrize(
    ("stable", "canary"),
    [(None, None), (WindowStats(200, 0, 2.0), None), (WindowStats(200, 0, 2.0), WindowStats(49, 0, 2.0))],
)
def test_missing_or_thin_metrics_pause_and_never_promote(stable: WindowStats, canary: WindowStats) -> None:
    decision = canary_decide(stable=stable, canary=canary, thresholds=THRESHOLDS, previous_failures=1)
    assert decision.action == CanaryAction.PAUSE
    assert "not enough data" in decision.reason
    assert decision.consecutive_failures == 1, "a pause neither counts nor forgives a failure"


def test_stable_without_traffic_pauses_too() -> None:
    decision = canary_decide(stable=WindowStats(0, 0, None), canary=WindowStats(500, 0, 1.0), thresholds=THRESHOLDS)
    assert decision.action == CanaryAction.PAUSE and "stable has 0 requests" in decision.reason


def test_errors_hold_once_then_roll_back() -> None:
    stable, canary = window(200, errors=1), window(100, errors=20)
    first = canary_decide(stable=stable, canary=canary, thresholds=THRESHOLDS)
    assert first.action == CanaryAction.HOLD and first.consecutive_failures == 1
    assert "error rate 20.00%" in first.reason
    second = canary_decide(stable=stable, canary=canary, thresholds=THRESHOLDS, previous_failures=1)
    assert second.action == CanaryAction.ROLLBACK and second.consecutive_failures == 2
    assert second.numbers["error_rate_delta"] == pytest.approx(0.2 - 0.005)


def test_a_good_window_resets_the_failure_count() -> None:
    decision = canary_decide(stable=window(100), canary=window(100), thresholds=THRESHOLDS, previous_failures=1)
    assert decision.action == CanaryAction.PROMOTE and decision.consecutive_failures == 0


def test_slow_canary_fails_on_p99_ratio_above_the_floor() -> None:
    slow = canary_decide(
        stable=WindowStats(100, 0, 10.0), canary=WindowStats(100, 0, 40.0), thresholds=THRESHOLDS, previous_failures=1
    )
    assert slow.action == CanaryAction.ROLLBACK and "p99 40.0 ms" in slow.reason
    assert slow.numbers["p99_ratio"] == pytest.approx(4.0)
    # Three times slower but by 2 ms only: below the noise floor.
    noise = canary_decide(stable=WindowStats(100, 0, 1.0), canary=WindowStats(100, 0, 3.0), thresholds=THRESHOLDS)
    assert noise.action == CanaryAction.PROMOTE


def test_error_rate_within_the_delta_passes() -> None:
    decision = canary_decide(stable=WindowStats(1000, 10, 2.0), canary=WindowStats(100, 2, 2.0), thresholds=THRESHOLDS)
    assert decision.action == CanaryAction.PROMOTE


def test_thresholds_validate_and_ignore_unknown_keys() -> None:
    with pytest.raises(ValueError):
        CanaryThresholds(max_p99_ratio=0.5)
    with pytest.raises(ValueError):
        CanaryThresholds(min_requests=0)
    assert CanaryThresholds.from_dict({"min_requests": 10, "unknown": 1}).min_requests == 10


def test_shadow_agreement_for_classification() -> None:
    pairs = [(["a"], ["a"]), (["a", "b"], ["a", "c"]), (None, ["a"]), (["a"], ["a", "b"])]
    result = shadow_compare(pairs, task="classification")
    assert result["rows_compared"] == 3 and result["agreements"] == 2
    assert result["agreement_rate"] == pytest.approx(2 / 3)
    assert result["requests_skipped"] == 2


def test_shadow_difference_distribution_for_regression() -> None:
    pairs = [([float(i)], [float(i) + i / 100]) for i in range(1, 101)]
    result = shadow_compare(pairs, task="regression")
    assert result["rows_compared"] == 100
    assert result["mean_abs_diff"] == pytest.approx(0.505)
    assert result["p50_abs_diff"] == pytest.approx(0.50)
    assert result["p95_abs_diff"] == pytest.approx(0.95)
    assert shadow_compare([], task="regression")["mean_abs_diff"] is None


# ------------------------------------------------------------------------------------------ autoscale

POLICY = AutoscalePolicy(min_replicas=1, max_replicas=4, target_rps_per_replica=10, cooldown_seconds=60)


@pytest.mark.parametrize(("rate", "replicas"), [(0, 1), (9, 1), (11, 2), (35, 4), (1000, 4)])
def test_replicas_follow_the_request_rate_within_bounds(rate: float, replicas: int) -> None:
    decision = autoscale_decide(policy=POLICY, current_replicas=1, request_rate=rate, seconds_since_last_change=None)
    assert decision.replicas == replicas
    assert decision.changed == (replicas != 1)


def test_cooldown_holds_a_change_until_it_has_passed() -> None:
    held = autoscale_decide(policy=POLICY, current_replicas=3, request_rate=5, seconds_since_last_change=10)
    assert held.replicas == 3 and not held.changed and "cooldown" in held.reason
    done = autoscale_decide(policy=POLICY, current_replicas=3, request_rate=5, seconds_since_last_change=61)
    assert done.replicas == 1 and done.changed


def test_overload_and_bounds_skip_the_cooldown() -> None:
    overloaded = autoscale_decide(policy=POLICY, current_replicas=1, request_rate=30, seconds_since_last_change=5)
    assert overloaded.replicas == 3 and overloaded.changed
    shrunk_bounds = autoscale_decide(policy=POLICY, current_replicas=8, request_rate=100, seconds_since_last_change=5)
    assert shrunk_bounds.replicas == 4


def test_policy_refuses_bad_bounds() -> None:
    with pytest.raises(ValueError):
        AutoscalePolicy(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError):
        AutoscalePolicy(min_replicas=1, max_replicas=2, target_rps_per_replica=0)
