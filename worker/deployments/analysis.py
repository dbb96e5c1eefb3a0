"""Canary analysis and shadow comparison: pure functions over window figures and pairs of answers.

A canary step compares the canary's window with stable's window of the same period:

- error rate: the share of 5xx answers (a 4xx is the client's mistake and says nothing of the model);
- p99 latency, as a ratio canary / stable, ignored below an absolute floor (both well under a few ms is
  noise, not a regression).

The decision is one of

- `promote`: both checks pass and both sides had at least `min_requests` requests;
- `hold`: a check failed, but fewer than `failures_to_rollback` windows in a row so far;
- `rollback`: a check failed `failures_to_rollback` windows in a row;
- `pause`: not enough data on either side. Missing metrics never promote: a canary nobody sends traffic
  to has proven nothing. A pause does not count as a failure either.

Every decision carries the numbers it was taken on, so the console can show and store them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


class CanaryAction:
    PROMOTE = "promote"
    HOLD = "hold"
    ROLLBACK = "rollback"
    PAUSE = "pause"


@dataclass(frozen=True)
class WindowStats:
    """What one version did in one window (the console reads it from telemetry's rollups)."""

    requests: int
    errors: int
    p99_ms: float | None
    p50_ms: float | None = None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass(frozen=True)
class CanaryThresholds:
    max_error_rate_delta: float = 0.02
    max_p99_ratio: float = 1.5
    p99_floor_ms: float = 5.0
    min_requests: int = 50
    failures_to_rollback: int = 2

    def __post_init__(self) -> None:
        if not 0 <= self.max_error_rate_delta <= 1:
            raise ValueError("max_error_rate_delta must be between 0 and 1")
        if self.max_p99_ratio < 1:
            raise ValueError("max_p99_ratio must be at least 1")
        if self.min_requests < 1 or self.failures_to_rollback < 1:
            raise ValueError("min_requests and failures_to_rollback must be at least 1")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> CanaryThresholds:
        values = {}
        for name, value in (data or {}).items():
            if name not in cls.__dataclass_fields__:
                continue
            kind = type(getattr(cls, name))
            try:
                values[name] = kind(value)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}") from None
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CanaryDecision:
    action: str
    reason: str
    consecutive_failures: int
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0–100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def canary_decide(
    *, stable: WindowStats | None, canary: WindowStats | None, thresholds: CanaryThresholds, previous_failures: int = 0
) -> CanaryDecision:
    numbers: dict[str, Any] = {
        "stable": asdict(stable) if stable else None,
        "canary": asdict(canary) if canary else None,
        "stable_error_rate": stable.error_rate if stable else None,
        "canary_error_rate": canary.error_rate if canary else None,
        "thresholds": thresholds.to_dict(),
    }
    short = [
        f"{side} has {stats.requests if stats else 0} requests (needs {thresholds.min_requests})"
        for side, stats in (("stable", stable), ("canary", canary))
        if stats is None or stats.requests < thresholds.min_requests
    ]
    if short:
        return CanaryDecision(CanaryAction.PAUSE, "not enough data: " + "; ".join(short), previous_failures, numbers)

    failures = []
    delta = canary.error_rate - stable.error_rate
    numbers["error_rate_delta"] = delta
    if delta > thresholds.max_error_rate_delta:
        failures.append(
            f"error rate {canary.error_rate:.2%} vs stable {stable.error_rate:.2%} "
            f"(+{delta:.2%} > {thresholds.max_error_rate_delta:.2%})"
        )
    ratio = None
    if canary.p99_ms is not None and stable.p99_ms is not None:
        ratio = canary.p99_ms / stable.p99_ms if stable.p99_ms > 0 else math.inf
        numbers["p99_ratio"] = ratio if math.isfinite(ratio) else None
        if ratio > thresholds.max_p99_ratio and canary.p99_ms - stable.p99_ms > thresholds.p99_floor_ms:
            failures.append(
                f"p99 {canary.p99_ms:.1f} ms vs stable {stable.p99_ms:.1f} ms "
                f"(×{ratio:.2f} > ×{thresholds.max_p99_ratio:.2f})"
            )
    elif canary.p99_ms is None or stable.p99_ms is None:
        return CanaryDecision(CanaryAction.PAUSE, "no latency measurements", previous_failures, numbers)

    if failures:
        count = previous_failures + 1
        if count >= thresholds.failures_to_rollback:
            action = CanaryAction.ROLLBACK
            reason = f"{'; '.join(failures)} — {count} windows in a row"
        else:
            action = CanaryAction.HOLD
            reason = f"{'; '.join(failures)} — {count} of {thresholds.failures_to_rollback} before a rollback"
        return CanaryDecision(action, reason, count, numbers)
    reason = f"error rate {canary.error_rate:.2%} vs {stable.error_rate:.2%}" + (
        f", p99 ×{ratio:.2f}" if ratio is not None and math.isfinite(ratio) else ""
    )
    return CanaryDecision(CanaryAction.PROMOTE, reason, 0, numbers)


# ------------------------------------------------------------------------------------------ shadow


def _rows(outputs: Any) -> list[Any]:
    return list(outputs) if isinstance(outputs, list | tuple) else [outputs]


def shadow_compare(pairs: Iterable[tuple[Any, Any]], *, task: str) -> dict[str, Any]:
    """Compare primary and shadow outputs of the same requests, row by row.

    Classification: the agreement rate. Regression: mean, p50 and p95 of |primary - shadow|. Pairs whose
    outputs are missing (an error on either side) or of different lengths are counted, not compared.
    """
    compared = skipped = agreements = 0
    differences: list[float] = []
    for primary, shadow in pairs:
        if primary is None or shadow is None or len(_rows(primary)) != len(_rows(shadow)):
            skipped += 1
            continue
        for left, right in zip(_rows(primary), _rows(shadow), strict=True):
            compared += 1
            if task == "regression":
                try:
                    differences.append(abs(float(left) - float(right)))
                except (TypeError, ValueError):
                    compared -= 1
            elif left == right:
                agreements += 1
    result: dict[str, Any] = {"task": task, "rows_compared": compared, "requests_skipped": skipped}
    if task == "regression":
        result.update(
            mean_abs_diff=sum(differences) / len(differences) if differences else None,
            p50_abs_diff=percentile(differences, 50),
            p95_abs_diff=percentile(differences, 95),
            max_abs_diff=max(differences) if differences else None,
        )
    else:
        result.update(agreements=agreements, agreement_rate=agreements / compared if compared else None)
    return result
