"""The increase of cumulative counters over a window, from readings an alert keeps between evaluations.

Model servers report counters that only grow while their process lives (events dropped since it started),
one counter per process; the console holds only the latest report of each. An alert reads them at every
evaluation and keeps the readings that changed, spaced at least `window / SPACING_STEPS` apart (so any
window holds about a hundred, whatever the evaluation interval), and the increase over the window is the sum,
per process, of the latest reading minus the reading in force at the window's start. A process absent from
that reading started since (it counts from zero), and a counter lower than before restarted (Prometheus'
counter reset: its whole value is the increase). No Django: tested without a database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

SPACING_STEPS = 100


@dataclass(frozen=True)
class Increase:
    value: float | None  # None on the first reading: nothing to compare with yet
    readings: list[list]  # [[epoch seconds, {process: total}], ...], oldest first, to keep for the next call


def counters_increase(readings: list[list], totals: dict[str, int], now: datetime, window: timedelta) -> Increase:
    """The increase of `totals` (process -> cumulative count now) over the window ending `now`."""
    at = now.timestamp()
    step = window.total_seconds() / SPACING_STEPS
    readings = [list(reading) for reading in readings if reading[0] <= at]
    if not readings or readings[-1][1] != totals:
        if len(readings) >= 2 and readings[-1][0] - readings[-2][0] < step:
            # The newest reading is closer than a step to the one before: replace it, so readings stay a step
            # apart and the window's start is known to within a step and an evaluation interval (the increase
            # can only come out higher, never lower).
            readings[-1] = [at, totals]
        else:
            readings.append([at, totals])
    start = at - window.total_seconds()
    # Keep the last reading at or before the window's start (the counters' values then) and all later ones.
    first = max((index for index, reading in enumerate(readings) if reading[0] <= start), default=0)
    readings = readings[first:]
    if len(readings) == 1 and readings[0][0] == at:
        return Increase(None, readings)
    baseline = readings[0][1]
    value = 0
    for process, total in totals.items():
        before = baseline.get(process, 0)
        value += total - before if total >= before else total
    return Increase(float(value), readings)
