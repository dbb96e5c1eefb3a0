"""The alert state machine as a pure function: a rule's condition, an alert's state, one figure value and the
time in; the next state and what (if anything) must be said out. No Django, so it is tested without a database.

States follow Prometheus' alerting rules, with its gaps made visible:

- `inactive`: the condition is false.
- `pending`: the condition is true, for less than `for_seconds` so far.
- `firing`: the condition has been true for `for_seconds` (and stays firing `keep_firing_for_seconds` after it
  turns false, so a flapping figure does not resolve and fire again).
- `resolved`: it was firing and is no longer; the next true condition starts a new pending period.
- `nodata`: the figure could not be computed (no traffic, no labels, no drift report): shown, never silently
  inactive. `error`: computing it failed.

A firing alert whose figure disappears stays firing while `keep_firing_for_seconds` lasts and then goes to
`nodata`, with a resolved notification (nobody can tell any more that it still holds).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

INACTIVE = "inactive"
PENDING = "pending"
FIRING = "firing"
RESOLVED = "resolved"
NODATA = "nodata"
ERROR = "error"

COMPARATORS = {
    "gt": (">", lambda value, threshold: value > threshold),
    "ge": (">=", lambda value, threshold: value >= threshold),
    "lt": ("<", lambda value, threshold: value < threshold),
    "le": ("<=", lambda value, threshold: value <= threshold),
}


@dataclass(frozen=True)
class Condition:
    comparator: str
    threshold: float
    for_seconds: float = 0.0
    keep_firing_for_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.comparator not in COMPARATORS:
            raise ValueError(f"unknown comparator {self.comparator!r}")
        if not math.isfinite(self.threshold):
            raise ValueError("the threshold must be a finite number")

    def holds(self, value: float) -> bool:
        return COMPARATORS[self.comparator][1](value, self.threshold)

    @property
    def symbol(self) -> str:
        return COMPARATORS[self.comparator][0]


@dataclass(frozen=True)
class AlertState:
    """What is remembered between evaluations of one alert (one rule on one deployment)."""

    state: str = INACTIVE
    active_since: datetime | None = None  # when the condition last turned true
    firing_since: datetime | None = None
    last_true_at: datetime | None = None  # the last evaluation that found the condition true


@dataclass(frozen=True)
class Observation:
    """One evaluation's figure: a value, or None with the reason (no data), or an error."""

    value: float | None
    reason: str = ""
    error: bool = False


@dataclass(frozen=True)
class Transition:
    """The next state; `changed` when the state differs, `event` is `firing` or `resolved` when it must be said."""

    before: str
    after: AlertState
    changed: bool
    event: str | None
    value: float | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _kept_firing(state: AlertState, condition: Condition, now: datetime) -> bool:
    if state.last_true_at is None or condition.keep_firing_for_seconds <= 0:
        return False
    return now - state.last_true_at < timedelta(seconds=condition.keep_firing_for_seconds)


def evaluate(state: AlertState, condition: Condition, observation: Observation, now: datetime) -> Transition:
    """One step of the state machine (see the module's docstring)."""
    before = state.state
    value = observation.value
    if value is None or observation.error or not math.isfinite(value):
        if before == FIRING and _kept_firing(state, condition, now):
            after = state
            reason = f"kept firing ({observation.reason or 'no value'})"
        else:
            after = AlertState(state=ERROR if observation.error else NODATA)
            reason = observation.reason or ("the figure is not a number" if value is not None else "no data")
        event = "resolved" if before == FIRING and after.state != FIRING else None
        return Transition(before, after, after.state != before, event, None, reason)

    if condition.holds(value):
        reason = f"{value:.6g} {condition.symbol} {condition.threshold:.6g}"
        if before == FIRING:
            after = replace(state, last_true_at=now)
        elif before == PENDING:
            if state.active_since is not None and now - state.active_since >= timedelta(seconds=condition.for_seconds):
                after = replace(state, state=FIRING, firing_since=now, last_true_at=now)
            else:
                after = replace(state, last_true_at=now)
        elif condition.for_seconds <= 0:
            after = AlertState(state=FIRING, active_since=now, firing_since=now, last_true_at=now)
        else:
            after = AlertState(state=PENDING, active_since=now, last_true_at=now)
        event = "firing" if after.state == FIRING and before != FIRING else None
        return Transition(before, after, after.state != before, event, value, reason)

    reason = f"{value:.6g} not {condition.symbol} {condition.threshold:.6g}"
    if before == FIRING:
        if _kept_firing(state, condition, now):
            return Transition(before, state, False, None, value, f"kept firing ({reason})")
        after = AlertState(state=RESOLVED)
        return Transition(before, after, True, "resolved", value, reason)
    if before == RESOLVED:
        return Transition(before, state, False, None, value, reason)
    after = AlertState(state=INACTIVE)
    return Transition(before, after, before != INACTIVE, None, value, reason)


def repeat_due(last_notified_at: datetime | None, repeat_interval_seconds: float, now: datetime) -> bool:
    """Whether a group that keeps firing is due its reminder (at most one per repeat interval)."""
    if last_notified_at is None:
        return True
    return now - last_notified_at >= timedelta(seconds=repeat_interval_seconds)
