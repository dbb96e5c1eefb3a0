"""The alert state machine, without a database: every transition, `for`, `keep_firing_for`, no data, errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from worker.alerts.evaluate import (
    ERROR,
    FIRING,
    INACTIVE,
    NODATA,
    PENDING,
    RESOLVED,
    AlertState,
    Condition,
    Observation,
    evaluate,
    repeat_due,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ABOVE = Condition(comparator="gt", threshold=0.01, for_seconds=60, keep_firing_for_seconds=0)


def run(condition: Condition, values: list[float | None], step: int = 30) -> list:
    state, steps = AlertState(), []
    for index, value in enumerate(values):
        transition = evaluate(state, condition, Observation(value, "no traffic"), T0 + timedelta(seconds=step * index))
        steps.append(transition)
        state = transition.after
    return steps


def test_pending_for_the_for_duration_then_firing_then_resolved() -> None:
    steps = run(ABOVE, [0.0, 0.02, 0.03, 0.05, 0.02, 0.0, 0.0])
    assert [s.after.state for s in steps] == [INACTIVE, PENDING, PENDING, FIRING, FIRING, RESOLVED, RESOLVED]
    assert [s.event for s in steps] == [None, None, None, "firing", None, "resolved", None]
    assert [s.changed for s in steps] == [False, True, False, True, False, True, False]
    assert steps[3].after.firing_since == T0 + timedelta(seconds=90)
    assert steps[3].value == 0.05 and steps[3].reason == "0.05 > 0.01"


def test_a_pending_alert_that_recovers_goes_back_to_inactive_without_firing() -> None:
    steps = run(ABOVE, [0.02, 0.0, 0.02])
    assert [s.after.state for s in steps] == [PENDING, INACTIVE, PENDING]
    assert all(s.event is None for s in steps)


def test_for_zero_fires_at_once_and_resolved_starts_a_new_pending_period() -> None:
    steps = run(Condition("ge", 0.5), [0.5, 0.4, 0.6])
    assert [s.after.state for s in steps] == [FIRING, RESOLVED, FIRING]
    assert [s.event for s in steps] == ["firing", "resolved", "firing"]
    steps = run(ABOVE, [0.02, 0.02, 0.02, 0.0, 0.02])
    assert [s.after.state for s in steps] == [PENDING, PENDING, FIRING, RESOLVED, PENDING]


def test_keep_firing_for_bridges_a_flapping_figure() -> None:
    condition = Condition("gt", 1.0, for_seconds=0, keep_firing_for_seconds=90)
    steps = run(condition, [2.0, 0.5, 0.5, 0.5, 0.5])  # false from 30 s; kept for 90 s after the last true
    assert [s.after.state for s in steps] == [FIRING, FIRING, FIRING, RESOLVED, RESOLVED]
    assert steps[2].reason.startswith("kept firing") and steps[3].event == "resolved"


def test_no_data_and_errors_are_visible_states_and_end_a_firing_alert() -> None:
    steps = run(Condition("gt", 1.0), [None, 2.0, None, 0.5])
    assert [s.after.state for s in steps] == [NODATA, FIRING, NODATA, INACTIVE]
    assert [s.event for s in steps] == [None, "firing", "resolved", None]
    assert steps[0].reason == "no traffic" and steps[0].changed
    errored = evaluate(AlertState(), Condition("gt", 1.0), Observation(None, "boom", error=True), T0)
    assert errored.after.state == ERROR and errored.reason == "boom"
    nan = evaluate(AlertState(), Condition("gt", 1.0), Observation(float("nan")), T0)
    assert nan.after.state == NODATA


@pytest.mark.parametrize(
    ("comparator", "value", "holds"),
    [("gt", 1.0, False), ("ge", 1.0, True), ("lt", 0.99, True), ("le", 1.01, False)],
)
def test_comparators(comparator: str, value: float, holds: bool) -> None:
    assert Condition(comparator, 1.0).holds(value) is holds


def test_bad_conditions_are_refused() -> None:
    with pytest.raises(ValueError, match="comparator"):
        Condition("eq", 1.0)
    with pytest.raises(ValueError, match="finite"):
        Condition("gt", float("inf"))


def test_repeat_due() -> None:
    assert repeat_due(None, 3600, T0)
    assert not repeat_due(T0, 3600, T0 + timedelta(seconds=3599))
    assert repeat_due(T0, 3600, T0 + timedelta(seconds=3600))


def test_counters_increase_over_the_window_with_new_and_restarted_processes() -> None:
    from worker.alerts.counters import counters_increase

    window = timedelta(minutes=10)
    first = counters_increase([], {"host:1": 50}, T0, window)
    assert first.value is None  # nothing to compare the first reading with
    readings = first.readings
    values = []
    # (minutes after T0, readings of the servers): host:1 drops 10, host:2 starts with 7 already dropped,
    # host:1's pid is reused after a restart (its counter falls to 4).
    for minute, totals in [
        (1, {"host:1": 50}),
        (2, {"host:1": 60}),
        (4, {"host:1": 60, "host:2": 7}),
        (6, {"host:1": 4, "host:2": 7}),
        (11, {"host:1": 4, "host:2": 7}),
        (13, {"host:1": 4, "host:2": 9}),
        (25, {"host:1": 4, "host:2": 9}),
    ]:
        increase = counters_increase(readings, totals, T0 + timedelta(minutes=minute), window)
        readings = increase.readings
        values.append(increase.value)
    # minute 11: the window starts at minute 1 (50) -> host:1 restarted (4) + host:2 new (7) = 11;
    # minute 13: window from minute 3 (host:1 60, no host:2) -> 4 + 9 = 13; minute 25: nothing changed since 13.
    assert values == [0.0, 10.0, 17.0, 11.0, 11.0, 13.0, 0.0]
    assert len(readings) == 1  # only the reading in force at the window's start is kept when nothing changed


def test_counters_readings_stay_bounded_whatever_the_interval() -> None:
    from worker.alerts.counters import SPACING_STEPS, counters_increase

    window, readings = timedelta(hours=1), []
    for second in range(0, 4 * 3600, 5):  # a change every 5 s for 4 h
        increase = counters_increase(readings, {"p": second}, T0 + timedelta(seconds=second), window)
        readings = increase.readings
    assert len(readings) <= SPACING_STEPS + 2
    # The window's start is known to within a step (36 s) and an interval (5 s): the increase errs high by that.
    assert 3600 - 5 <= increase.value <= 3600 + 36 + 5
