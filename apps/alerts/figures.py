"""Each figure a rule can watch, computed for one deployment at one moment.

Traffic figures read telemetry's per-minute rollups (quantiles in SQL), accuracy reads labelled predictions
through `performance_by_version`, drift reads the latest drift report of the window, and replica readiness
reads what the deployment's backend last reported. A figure that cannot be computed is an `Observation` with
no value and the reason, which the state machine turns into the visible `nodata` state.

`FigureCache` keeps what one evaluation round has already read, so rules that share a deployment, a figure
and a window cost one query between them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from apps.alerts.choices import AlertFigure
from apps.deployments.choices import DeploymentStatus
from apps.deployments.models import Deployment
from apps.deployments.selectors import deployment_targets
from apps.monitoring.drift_settings import PREDICTION
from apps.monitoring.models import DriftReport
from apps.telemetry import selectors as telemetry
from apps.telemetry.models import ServerShippingReport
from worker.alerts.counters import counters_increase
from worker.alerts.evaluate import Observation

WEEK = timedelta(days=7)
# Figures whose threshold can be an offset from the live version's registered validation value (its metrics).
VALIDATION_METRIC = {AlertFigure.ACCURACY: "accuracy", AlertFigure.ESTIMATED_ACCURACY: "accuracy"}
# The drift figures look at the latest report that ended within the rule's window.
DRIFT_FIGURES = frozenset({AlertFigure.DRIFT_SHARE, AlertFigure.COLUMN_DRIFT, AlertFigure.PREDICTION_DRIFT})
TRAFFIC_FIGURES = frozenset(
    {
        AlertFigure.ERROR_RATE,
        AlertFigure.LATENCY_P50,
        AlertFigure.LATENCY_P90,
        AlertFigure.LATENCY_P99,
        AlertFigure.THROUGHPUT,
        AlertFigure.THROUGHPUT_DROP,
    }
)


@dataclass
class FigureCache:
    """What one round has read, by (what, deployment, window)."""

    now: datetime
    values: dict[tuple, Any] = field(default_factory=dict)

    def get(self, key: tuple, compute: Callable[[], Any]) -> Any:
        if key not in self.values:
            self.values[key] = compute()
        return self.values[key]

    def prefetch(self, pairs: list[tuple[Any, Deployment]]) -> None:
        """Read what (rule, deployment) pairs will ask for in one query per window and kind, not one per pair."""
        stats: dict[tuple[timedelta, timedelta], set[int]] = {}
        drift: dict[timedelta, set[int]] = {}
        last: set[int] = set()
        drops: set[int] = set()
        for rule, deployment in pairs:
            window = timedelta(seconds=rule.window_seconds)
            if rule.figure in TRAFFIC_FIGURES:
                stats.setdefault((window, timedelta(0)), set()).add(deployment.pk)
                if rule.figure == AlertFigure.THROUGHPUT_DROP:
                    stats.setdefault((window, WEEK), set()).add(deployment.pk)
            elif rule.figure in DRIFT_FIGURES:
                drift.setdefault(window, set()).add(deployment.pk)
            elif rule.figure == AlertFigure.NO_DATA_MINUTES:
                last.add(deployment.pk)
            elif rule.figure == AlertFigure.EVENT_DROPS:
                drops.add(deployment.pk)
        for (window, ago), ids in stats.items():
            missing = sorted(pk for pk in ids if ("stats", pk, window, ago) not in self.values)
            if missing:
                until = self.now - ago
                found = telemetry.deployments_window_stats(deployment_ids=missing, since=until - window, until=until)
                self.values.update({("stats", pk, window, ago): found[pk] for pk in missing})
        for window, ids in drift.items():
            missing = sorted(pk for pk in ids if ("drift", pk, window) not in self.values)
            latest: dict[int, DriftReport | None] = dict.fromkeys(missing)
            reports = (
                DriftReport.objects.filter(
                    deployment_id__in=missing, window_end__gte=self.now - window, drift_share__isnull=False
                )
                .only("id", "deployment_id", "drift_share", "result", "window_end")
                .order_by("deployment_id", "-window_end", "-id")
            )
            for report in reports:
                latest[report.deployment_id] = latest[report.deployment_id] or report
            self.values.update({("drift", pk, window): report for pk, report in latest.items()})
        missing = sorted(pk for pk in last if ("last", pk) not in self.values)
        if missing:
            found = telemetry.last_request_minutes(deployment_ids=missing)
            self.values.update({("last", pk): found[pk] for pk in missing})
        missing = sorted(pk for pk in drops if ("drops", pk) not in self.values)
        if missing:
            self.values.update({("drops", pk): totals for pk, totals in _drop_totals(missing).items()})


def _drop_totals(deployment_ids: list[int]) -> dict[int, dict[str, int]]:
    """Per deployment: each model server process's events dropped since it started (all reasons together)."""
    totals: dict[int, dict[str, int]] = {pk: {} for pk in deployment_ids}
    reports = ServerShippingReport.objects.filter(deployment_id__in=deployment_ids).values_list(
        "deployment_id", "server", "dropped"
    )
    for deployment_id, server, dropped in reports:
        totals[deployment_id][server] = sum(dropped.values())
    return totals


def _window_stats(deployment: Deployment, window: timedelta, cache: FigureCache, *, ago: timedelta = timedelta(0)):
    until = cache.now - ago
    return cache.get(
        ("stats", deployment.pk, window, ago),
        lambda: telemetry.deployment_window_stats(deployment_id=deployment.pk, since=until - window, until=until),
    )


def _traffic(figure: str, deployment: Deployment, window: timedelta, cache: FigureCache) -> Observation:
    stats = _window_stats(deployment, window, cache)
    if figure == AlertFigure.THROUGHPUT:
        return Observation(stats.requests / window.total_seconds())
    if figure == AlertFigure.THROUGHPUT_DROP:
        before = _window_stats(deployment, window, cache, ago=WEEK)
        if not before.requests:
            return Observation(None, "no predictions in the same window a week ago")
        return Observation(1.0 - stats.requests / before.requests)
    if not stats.requests:
        return Observation(None, f"no predictions in the last {_human(window)}")
    if figure == AlertFigure.ERROR_RATE:
        return Observation(stats.error_rate)
    latency = {
        AlertFigure.LATENCY_P50: stats.p50_ms,
        AlertFigure.LATENCY_P90: stats.p90_ms,
        AlertFigure.LATENCY_P99: stats.p99_ms,
    }[figure]
    if latency is None:
        return Observation(None, "no latency was logged in the window")
    return Observation(latency)


def _accuracy(figure: str, deployment: Deployment, window: timedelta, cache: FigureCache) -> Observation:
    performances = cache.get(
        ("performance", deployment.pk, window),
        lambda: telemetry.performance_by_version(
            deployment_id=deployment.pk, since=cache.now - window, until=cache.now
        ),
    )
    total = weight = 0.0
    reasons = []
    for performance in performances:
        if performance.shadow:
            continue
        if figure == AlertFigure.ACCURACY:
            value = getattr(performance.realised, "accuracy", None)
            n = performance.realised.n_labelled if performance.realised else 0
            reason = performance.reason
        else:
            value = getattr(performance.estimate, "accuracy", None)
            n = performance.estimate.n_rows if performance.estimate else 0
            reason = performance.estimate_reason
        if value is None or not n:
            reasons.append(reason or "no accuracy (a regression model?)")
            continue
        total += value * n
        weight += n
    if not weight:
        what = "labelled predictions" if figure == AlertFigure.ACCURACY else "predictions to estimate from"
        return Observation(None, reasons[0] if reasons else f"no {what} in the last {_human(window)}")
    return Observation(total / weight)


def _latest_report(deployment: Deployment, window: timedelta, cache: FigureCache) -> DriftReport | None:
    return cache.get(
        ("drift", deployment.pk, window),
        lambda: (
            DriftReport.objects.filter(
                deployment=deployment, window_end__gte=cache.now - window, drift_share__isnull=False
            )
            .only("id", "drift_share", "result", "window_end")
            .order_by("-window_end", "-id")
            .first()
        ),
    )


def _drift(figure: str, column: str, deployment: Deployment, window: timedelta, cache: FigureCache) -> Observation:
    report = _latest_report(deployment, window, cache)
    if report is None:
        return Observation(None, f"no drift report ended in the last {_human(window)}")
    if figure == AlertFigure.DRIFT_SHARE:
        return Observation(report.drift_share)
    if figure == AlertFigure.PREDICTION_DRIFT:
        return _prediction_drift(report)
    for entry in report.result.get("columns", []):
        if entry.get("column") == column:
            if entry.get("statistic") is None:
                return Observation(None, entry.get("reason") or f"column {column!r} was not tested")
            return Observation(float(entry["statistic"]))
    return Observation(None, f"the latest drift report has no column {column!r}")


def _prediction_drift(report: DriftReport) -> Observation:
    """1 when the report's own test (the column's test and threshold in the deployment's drift settings) found
    the prediction column drifted, 0 when it did not; the statistic is in `column_drift` on `prediction`."""
    for entry in report.result.get("columns", []):
        if entry.get("column") == PREDICTION:
            if entry.get("drifted") is None:
                return Observation(None, entry.get("reason") or "the prediction column was not tested")
            return Observation(1.0 if entry["drifted"] else 0.0)
    return Observation(
        None,
        "the latest drift report did not test the predictions (prediction drift is off, or its reference is "
        "training data)",
    )


def _no_data_minutes(deployment: Deployment, cache: FigureCache) -> Observation:
    last = cache.get(
        ("last", deployment.pk),
        lambda: telemetry.last_request_minutes(deployment_ids=[deployment.pk])[deployment.pk],
    )
    # A rollup's minute covers the whole minute; the silence starts when it ends.
    since = last + timedelta(minutes=1) if last is not None else deployment.created_at
    return Observation(max((cache.now - since).total_seconds() / 60, 0.0))


def _replicas_not_ready(deployment: Deployment) -> Observation:
    desired = 0 if deployment.status == DeploymentStatus.STOPPED else deployment.replicas
    replicas = (deployment.observed or {}).get("replicas", [])
    ready = sum(1 for replica in replicas if replica.get("health") == "ready")
    return Observation(float(max(desired - ready, 0)))


def event_drops(
    *, deployment: Deployment, window: timedelta, cache: FigureCache, state: dict[str, Any]
) -> tuple[Observation, dict[str, Any]]:
    """Events the deployment's model servers dropped in the window, from their cumulative shipping reports and
    the readings the alert kept (`state`); returns the figure and the state to keep."""
    totals = cache.get(("drops", deployment.pk), lambda: _drop_totals([deployment.pk])[deployment.pk])
    increase = counters_increase(state.get("readings", []), totals, cache.now, window)
    if increase.value is None:
        observation = Observation(None, "first reading of the model servers' drop counters; counted from the next")
    else:
        observation = Observation(increase.value)
    return observation, {"readings": increase.readings}


def observe(*, figure: str, column: str, deployment: Deployment, window: timedelta, cache: FigureCache) -> Observation:
    """The figure's value for the deployment now (cache.now), or no value with the reason."""
    if figure in TRAFFIC_FIGURES:
        return _traffic(figure, deployment, window, cache)
    if figure in (AlertFigure.ACCURACY, AlertFigure.ESTIMATED_ACCURACY):
        return _accuracy(figure, deployment, window, cache)
    if figure in DRIFT_FIGURES:
        return _drift(figure, column, deployment, window, cache)
    if figure == AlertFigure.NO_DATA_MINUTES:
        return _no_data_minutes(deployment, cache)
    if figure == AlertFigure.REPLICAS_NOT_READY:
        return _replicas_not_ready(deployment)
    if figure == AlertFigure.EVENT_DROPS:
        # Counted from readings each alert keeps (event_drops), so a moment without its alert has no value.
        return Observation(None, "event drops are counted from the alert's own readings; no past to show")
    raise ValueError(f"unknown figure {figure!r}")


def validation_value(*, figure: str, deployment: Deployment, cache: FigureCache) -> tuple[float | None, str]:
    """The registered validation value of the figure for the deployment's main live version, or the reason."""
    metric = VALIDATION_METRIC.get(figure)
    if metric is None:
        return None, "this figure has no registered validation value"

    def main_version() -> Any:
        live, _ = deployment_targets(deployment)
        return max(live, key=lambda target: target.weight).model_version if live else None

    version = cache.get(("live-version", deployment.pk), main_version)
    if version is None:
        return None, "the deployment serves no model version"
    value = (version.metrics or {}).get(metric)
    if not isinstance(value, int | float):
        return None, f"model version v{version.number} has no registered {metric}"
    return float(value), ""


def _human(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"
