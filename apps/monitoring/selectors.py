"""Reads of monitoring for the pages and the API: drift reports, and the dashboards built from telemetry's rollups."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import QuerySet, Sum
from django.utils import timezone

from apps.core.exceptions import ValidationError
from apps.deployments.models import Deployment
from apps.monitoring.models import DriftReport
from apps.registry.models import ModelVersion
from apps.telemetry import selectors as telemetry
from apps.telemetry.models import PredictionRollup
from apps.telemetry.selectors import SeriesPoint, VersionTotals, minute_floor

# The drift share chart shows at most this many of a deployment's latest reports.
HISTORY_LIMIT = 500


def drift_reports(*, user: object) -> QuerySet[DriftReport]:
    return DriftReport.objects.for_user(user).select_related(
        "deployment", "deployment__project", "model_version", "reference", "job"
    )


def drift_history(*, deployment: Deployment) -> list[DriftReport]:
    """The deployment's finished reports with a drift share, oldest first (the latest HISTORY_LIMIT)."""
    latest = (
        DriftReport.objects.filter(deployment=deployment, drift_share__isnull=False)
        .only("id", "window_end", "drift_share", "dataset_drift")
        .order_by("-window_end")[:HISTORY_LIMIT]
    )
    return list(reversed(latest))


# The dashboards' windows and the step of their time axis: 60 to 170 points per series whatever the window.
DASHBOARD_WINDOWS: dict[str, tuple[timedelta, timedelta]] = {
    "1h": (timedelta(hours=1), timedelta(minutes=1)),
    "24h": (timedelta(hours=24), timedelta(minutes=15)),
    "7d": (timedelta(days=7), timedelta(hours=1)),
    "30d": (timedelta(days=30), timedelta(hours=6)),
}
DEFAULT_DASHBOARD_WINDOW = "24h"


def dashboard_window(raw: str | None) -> str:
    """The dashboard window a request names (default 24h); a 400 naming `window` for any other."""
    if raw is None or raw == "":
        return DEFAULT_DASHBOARD_WINDOW
    if raw not in DASHBOARD_WINDOWS:
        raise ValidationError(f"Choose a window among {', '.join(DASHBOARD_WINDOWS)}.", field="window")
    return raw


def dashboard_version(deployment: Deployment, raw: str | None) -> ModelVersion | None:
    """The model version (by number) a dashboard is narrowed to, or None for all of the deployment's."""
    if raw is None or raw == "":
        return None
    version = (
        ModelVersion.objects.filter(model_id=deployment.registered_model_id, number=raw).first()
        if raw.isdigit()
        else None
    )
    if version is None:
        raise ValidationError(
            f"{raw!r} is not a version number of model {deployment.registered_model.name!r}.", field="version"
        )
    return version


@dataclass(frozen=True)
class VersionSeries:
    """One model version (live or shadow) on a dashboard: its window totals and its points over time."""

    model_version_id: int
    version: int | None
    shadow: bool
    label: str
    totals: VersionTotals
    points: list[SeriesPoint]
    window_seconds: float

    @property
    def throughput_rps(self) -> float:
        """Mean requests per second over the window."""
        return self.totals.requests / self.window_seconds


@dataclass(frozen=True)
class Dashboard:
    """What a deployment's dashboard shows over one window, from the telemetry rollups only."""

    deployment_id: int
    window: str
    since: datetime
    until: datetime
    step: timedelta
    version: int | None
    versions: list[VersionSeries] = field(default_factory=list)

    @property
    def step_text(self) -> str:
        minutes = int(self.step.total_seconds() // 60)
        return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h"

    @property
    def empty(self) -> bool:
        return not any(series.totals.requests for series in self.versions)


def _labels(deployment: Deployment, version_ids: set[int]) -> dict[int, int]:
    return dict(ModelVersion.objects.filter(pk__in=version_ids).values_list("pk", "number"))


def version_label(number: int | None, shadow: bool) -> str:
    name = f"v{number}" if number is not None else "no version"
    return f"{name} (shadow)" if shadow else name


def deployment_dashboard(
    *, deployment: Deployment, window: str, version: ModelVersion | None = None, now: datetime | None = None
) -> Dashboard:
    """Throughput, errors and latency per model version (live and shadow apart) over `window`, and over time.

    One statement over the rollups (totals with the latency histogram, and the per-step series) and one for
    the version numbers. The window ends at the end of the current minute, so a page polled within a
    minute shows the same axis (and keeps its ETag while nothing new was logged)."""
    length, step = DASHBOARD_WINDOWS[window]
    until = minute_floor(now or timezone.now()) + timedelta(minutes=1)
    since = until - length
    version_id = version.pk if version is not None else None
    totals, points = telemetry.rollup_window(
        deployment_id=deployment.pk, since=since, until=until, step=step, version_id=version_id
    )
    numbers = _labels(deployment, {row.model_version_id for row in totals})
    by_key: dict[tuple[int, bool], list[SeriesPoint]] = {}
    for point in points:
        by_key.setdefault((point.model_version_id, point.shadow), []).append(point)
    versions = [
        VersionSeries(
            model_version_id=row.model_version_id,
            version=numbers.get(row.model_version_id),
            shadow=row.shadow,
            label=version_label(numbers.get(row.model_version_id), row.shadow),
            totals=row,
            points=by_key.get((row.model_version_id, row.shadow), []),
            window_seconds=length.total_seconds(),
        )
        for row in totals
    ]
    return Dashboard(
        deployment_id=deployment.pk,
        window=window,
        since=since,
        until=until,
        step=step,
        version=version.number if version is not None else None,
        versions=versions,
    )


def last_hour_traffic(*, deployment_ids: list[int], now: datetime | None = None) -> dict[int, dict[str, Any]]:
    """Live requests and error rate of each deployment over the last hour; one grouped query over the rollups."""
    since = minute_floor(now or timezone.now()) - timedelta(hours=1)
    rows = (
        PredictionRollup.objects.filter(deployment_id__in=deployment_ids, minute__gte=since, shadow=False)
        .values("deployment_id")
        .annotate(requests=Sum("requests"), errors=Sum("errors"))
        .order_by()
    )
    return {
        row["deployment_id"]: {
            "requests": row["requests"],
            "error_rate": row["errors"] / row["requests"] if row["requests"] else None,
        }
        for row in rows
    }


# The performance page's step per window: coarser than the dashboard's, since labels are fewer than requests.
PERFORMANCE_STEPS: dict[str, timedelta] = {
    "1h": timedelta(minutes=5),
    "24h": timedelta(hours=1),
    "7d": timedelta(hours=6),
    "30d": timedelta(days=1),
}
# The drift-per-column chart reads at most this many of the deployment's latest reports (with their results).
COLUMN_HISTORY_LIMIT = 100


def drift_column_history(*, deployment: Deployment, limit: int = COLUMN_HISTORY_LIMIT) -> list[DriftReport]:
    """The deployment's finished reports with their per-column results, oldest first (the latest `limit`)."""
    latest = (
        DriftReport.objects.filter(deployment=deployment, drift_share__isnull=False)
        .only("id", "window_end", "drift_share", "dataset_drift", "result")
        .order_by("-window_end")[:limit]
    )
    return list(reversed(latest))


@dataclass(frozen=True)
class Performance:
    """What a deployment's performance page shows over one window: realised metrics and the CBPE estimate per
    model version (`versions`, labelled by `labels`), accuracy (or MAE) per step, the live predictions per step,
    and its drift reports' per-column results."""

    deployment_id: int
    window: str
    since: datetime
    until: datetime
    step: timedelta
    versions: list[telemetry.VersionPerformance]
    labels: dict[tuple[int | None, bool], str]
    trend: list[telemetry.TrendPoint]
    trend_truncated: bool
    distribution: telemetry.PredictionDistribution
    drift: list[DriftReport]


def deployment_performance(
    *, deployment: Deployment, window: str, now: datetime | None = None, metrics: bool = True
) -> Performance:
    """The performance page's figures; raw-row reads are bounded by telemetry's PERFORMANCE_ROW_LIMIT."""
    length, step = DASHBOARD_WINDOWS[window][0], PERFORMANCE_STEPS[window]
    until = minute_floor(now or timezone.now()) + timedelta(minutes=1)
    since = until - length
    rows = {"deployment_id": deployment.pk, "project_id": deployment.project_id, "since": since, "until": until}
    limit = telemetry.PERFORMANCE_ROW_LIMIT
    samples = telemetry.labelled_samples(**rows, limit=limit)
    versions = telemetry.performance_by_version(**rows, limit=limit, samples=samples) if metrics else []
    trend, truncated = telemetry.performance_trend(**rows, step=step, limit=limit, samples=samples)
    keys = {(row.model_version_id, row.shadow) for row in versions} | {(p.model_version_id, p.shadow) for p in trend}
    numbers = _labels(deployment, {version_id for version_id, _ in keys if version_id})
    return Performance(
        deployment_id=deployment.pk,
        window=window,
        since=since,
        until=until,
        step=step,
        versions=versions,
        labels={key: version_label(numbers.get(key[0]), key[1]) for key in keys},
        trend=trend,
        trend_truncated=truncated,
        distribution=telemetry.prediction_distribution(**rows, step=step),
        drift=drift_column_history(deployment=deployment),
    )
